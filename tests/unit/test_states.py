"""The state machines as data: consistency, and agreement with the diagrams in docs/."""
from __future__ import annotations

import re
from pathlib import Path

import pytest

from common.states import JOB_MACHINE, PILOT_MACHINE, TASK_MACHINE, JobState, StateMachine, TaskState

DOC = Path(__file__).parents[2] / "docs" / "state-machines.md"
MACHINES = [TASK_MACHINE, JOB_MACHINE, PILOT_MACHINE]


def _diagram_edges(name: str) -> set[tuple[str, str]]:
    text = DOC.read_text()
    section = text.split(f"## {name.capitalize()}\n", 1)[1].split("\n## ", 1)[0]
    block = section.split("```mermaid", 1)[1].split("```", 1)[0]
    edges = set(re.findall(r"^\s*(\w+) --> (\w+)\s*$", block, flags=re.M))
    return edges


@pytest.mark.parametrize("machine", MACHINES, ids=lambda m: m.name)
def test_diagram_matches_table(machine: StateMachine) -> None:
    table = {(src, dst) for src, dsts in machine.transitions.items() for dst in dsts}
    assert _diagram_edges(machine.name) == table


@pytest.mark.parametrize("machine", MACHINES, ids=lambda m: m.name)
def test_every_state_reachable_from_the_first(machine: StateMachine) -> None:
    first = next(iter(machine.transitions))
    seen, frontier = {first}, [first]
    while frontier:
        for nxt in machine.transitions[frontier.pop()]:
            if nxt not in seen:
                seen.add(nxt)
                frontier.append(nxt)
    assert seen == set(machine.states)


@pytest.mark.parametrize("machine", MACHINES, ids=lambda m: m.name)
def test_every_active_state_can_end(machine: StateMachine) -> None:
    for state in machine.active:
        seen, frontier = {state}, [state]
        while frontier:
            for nxt in machine.transitions[frontier.pop()]:
                if nxt not in seen:
                    seen.add(nxt)
                    frontier.append(nxt)
        assert seen & machine.terminal, f"{machine.name}: {state} can never end"


def test_sources_of_is_the_inverse_of_the_table() -> None:
    assert TASK_MACHINE.sources_of(TaskState.CANCELLED) == {TaskState.REGISTERED, TaskState.RUNNING, TaskState.PAUSED}
    assert TASK_MACHINE.sources_of(TaskState.DONE) == {TaskState.RUNNING}
    assert JOB_MACHINE.sources_of(JobState.DISPATCHED) == {JobState.READY}
    assert JOB_MACHINE.sources_of(JobState.READY) == {JobState.DEFINED, JobState.HELD, JobState.DISPATCHED, JobState.RUNNING}
    with pytest.raises(ValueError):
        TASK_MACHINE.sources_of("exploded")


def test_terminal_states_are_final() -> None:
    assert TASK_MACHINE.terminal == {TaskState.DONE, TaskState.FINISHED, TaskState.FAILED, TaskState.CANCELLED}
    assert JOB_MACHINE.terminal == {JobState.FINISHED, JobState.FAILED, JobState.CANCELLED}
    assert not TASK_MACHINE.allowed(TaskState.DONE, TaskState.CANCELLED)


def test_table_naming_unknown_state_is_rejected() -> None:
    with pytest.raises(ValueError, match="unknown states"):
        StateMachine("broken", {"a": frozenset({"b"})})

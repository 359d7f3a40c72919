"""The state machines as data: consistency, and agreement with the diagrams in docs/."""
from __future__ import annotations

import re
from pathlib import Path

import pytest

from common.states import (
    JOB_MACHINE,
    PILOT_MACHINE,
    SUBMISSION_MACHINE,
    TASK_MACHINE,
    JobState,
    StateMachine,
    TaskState,
)

DOC = Path(__file__).parents[2] / "docs" / "state-machines.md"
MACHINES = [TASK_MACHINE, JOB_MACHINE, PILOT_MACHINE, SUBMISSION_MACHINE]


def _diagram_edges(name: str) -> set[tuple[str, str]]:
    text = DOC.read_text()
    section = text.split(f"## {name.capitalize()}\n", 1)[1].split("\n## ", 1)[0]
    block = section.split("```mermaid", 1)[1].split("```", 1)[0]
    return set(re.findall(r"^\s*(\w+|\[\*\]) --> (\w+|\[\*\])\s*$", block, flags=re.M))


@pytest.mark.parametrize("machine", MACHINES, ids=lambda m: m.name)
def test_diagram_matches_table(machine: StateMachine) -> None:
    table = {(src, dst) for src, dsts in machine.transitions.items() for dst in dsts}
    table |= {("[*]", s) for s in machine.initial} | {(s, "[*]") for s in machine.terminal}
    assert _diagram_edges(machine.name) == table


@pytest.mark.parametrize("machine", MACHINES, ids=lambda m: m.name)
def test_every_state_reachable_from_an_initial_one(machine: StateMachine) -> None:
    seen, frontier = set(machine.initial), list(machine.initial)
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
    assert JOB_MACHINE.sources_of(JobState.READY) == {JobState.HELD, JobState.DISPATCHED, JobState.RUNNING}
    with pytest.raises(ValueError):
        TASK_MACHINE.sources_of("exploded")


def test_terminal_states_are_final() -> None:
    assert TASK_MACHINE.terminal == {TaskState.DONE, TaskState.FINISHED, TaskState.FAILED, TaskState.CANCELLED}
    assert JOB_MACHINE.terminal == {JobState.FINISHED, JobState.FAILED, JobState.CANCELLED}
    assert not TASK_MACHINE.allowed(TaskState.DONE, TaskState.CANCELLED)


def test_table_naming_unknown_state_is_rejected() -> None:
    with pytest.raises(ValueError, match="unknown states"):
        StateMachine("broken", {"a": frozenset({"b"})}, initial=("a",))
    with pytest.raises(ValueError, match="initial"):
        StateMachine("broken", {"a": frozenset()}, initial=("z",))


def test_rows_are_created_only_in_initial_states() -> None:
    assert JOB_MACHINE.check_initial(JobState.READY) == JobState.READY
    with pytest.raises(ValueError):
        JOB_MACHINE.check_initial(JobState.RUNNING)
    with pytest.raises(ValueError):
        TASK_MACHINE.check_initial(TaskState.DONE)

"""Task and job state machines as data, and the one guarded UPDATE that enforces them where the write happens.

A transition is written as ``UPDATE ... SET status = :to WHERE id = ... AND status IN (<states allowed to reach
:to>)``; two concurrent writers can therefore never produce a transition that is not in the table.
"""
from __future__ import annotations

import enum
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncConnection


class TaskState(enum.StrEnum):
    REGISTERED = "registered"  # accepted from the WFMS, no job generated yet
    RUNNING = "running"  # jobs are being generated and processed
    PAUSED = "paused"  # no new job is generated or dispatched; running jobs go on
    DONE = "done"  # every input file processed
    FINISHED = "finished"  # ended with some input files failed (partial result)
    FAILED = "failed"  # ended without a usable result (e.g. the input dataset does not exist)
    CANCELLED = "cancelled"


class JobState(enum.StrEnum):
    DEFINED = "defined"  # registered with its input files by the job-manager
    READY = "ready"  # handed to the job-executor, waiting for a pilot
    HELD = "held"  # ready, but its task is paused
    DISPATCHED = "dispatched"  # claimed by a pilot
    RUNNING = "running"  # the pilot reported its payload started
    FINISHED = "finished"
    FAILED = "failed"  # attempts exhausted, or an error that must not be retried
    CANCELLED = "cancelled"


class PilotState(enum.StrEnum):
    IDLE = "idle"  # registered and alive, no job
    BUSY = "busy"  # running a job
    DEAD = "dead"  # heartbeats stopped for longer than the timeout; its late reports are refused
    EXITED = "exited"  # ended cleanly (lifetime or idle limit, SIGTERM)


class FileState(enum.StrEnum):
    PENDING = "pending"  # input file in a job that has not finished yet
    DONE = "done"  # input file processed
    FAILED = "failed"  # input file whose job exhausted its attempts
    CANCELLED = "cancelled"  # input file of a cancelled task
    STAGED = "staged"  # output or log file in FILE_DAT and on storage, not yet registered in the DSM
    REGISTERED = "registered"  # output or log file registered in FILE_DAT and the DSM
    REJECTED = "rejected"  # output or log file the DSM refused for good (the reason is in FILE_DAT.error)


@dataclass(frozen=True)
class StateMachine:
    name: str
    transitions: Mapping[str, frozenset[str]]
    # States a row may be created in (the first one is the column's default).
    initial: tuple[str, ...]

    def __post_init__(self) -> None:
        states = set(self.transitions)
        if not set(self.initial) <= states or not self.initial:
            raise ValueError(f"{self.name}: initial states {self.initial} must be known states")
        for src, dsts in self.transitions.items():
            unknown = dsts - states
            if unknown:
                raise ValueError(f"{self.name}: {src} -> unknown states {sorted(unknown)}")

    @property
    def states(self) -> frozenset[str]:
        return frozenset(self.transitions)

    @property
    def terminal(self) -> frozenset[str]:
        return frozenset(s for s, dsts in self.transitions.items() if not dsts)

    @property
    def active(self) -> frozenset[str]:
        return self.states - self.terminal

    def check_initial(self, state: str) -> str:
        """``state`` if a row may be created in it; ValueError otherwise."""
        if state not in self.initial:
            raise ValueError(f"{self.name}: a row cannot be created in state {state!r}")
        return state

    def allowed(self, src: str, dst: str) -> bool:
        return dst in self.transitions.get(src, frozenset())

    def sources_of(self, dst: str) -> frozenset[str]:
        """States from which ``dst`` may be reached: the WHERE clause of a guarded UPDATE."""
        if dst not in self.transitions:
            raise ValueError(f"{self.name}: unknown state {dst!r}")
        return frozenset(src for src, dsts in self.transitions.items() if dst in dsts)


T, J = TaskState, JobState

TASK_MACHINE = StateMachine(
    "task",
    {
        T.REGISTERED: frozenset({T.RUNNING, T.PAUSED, T.FAILED, T.CANCELLED}),
        T.RUNNING: frozenset({T.PAUSED, T.DONE, T.FINISHED, T.FAILED, T.CANCELLED}),
        T.PAUSED: frozenset({T.RUNNING, T.CANCELLED}),
        T.DONE: frozenset(),
        T.FINISHED: frozenset(),
        T.FAILED: frozenset(),
        T.CANCELLED: frozenset(),
    },
    initial=(T.REGISTERED,),
)

JOB_MACHINE = StateMachine(
    "job",
    {
        J.DEFINED: frozenset({J.READY, J.HELD, J.CANCELLED}),
        J.READY: frozenset({J.DISPATCHED, J.HELD, J.CANCELLED}),
        J.HELD: frozenset({J.READY, J.CANCELLED}),
        # A fast payload may end before its 'running' report arrives; a lost or failed attempt goes back to
        # READY while attempts remain.
        J.DISPATCHED: frozenset({J.RUNNING, J.FINISHED, J.FAILED, J.READY, J.CANCELLED}),
        J.RUNNING: frozenset({J.FINISHED, J.FAILED, J.READY, J.CANCELLED}),
        J.FINISHED: frozenset(),
        J.FAILED: frozenset(),
        J.CANCELLED: frozenset(),
    },
    # The job-manager creates a chunk's jobs directly in the state their task calls for (ready, held while it
    # is paused, cancelled once it ended): nobody can see them before that transaction commits.
    initial=(J.DEFINED, J.READY, J.HELD, J.CANCELLED),
)


P = PilotState

PILOT_MACHINE = StateMachine(
    "pilot",
    {
        P.IDLE: frozenset({P.BUSY, P.DEAD, P.EXITED}),
        P.BUSY: frozenset({P.IDLE, P.DEAD, P.EXITED}),
        P.DEAD: frozenset(),
        P.EXITED: frozenset(),
    },
    initial=(P.IDLE,),
)


class IllegalTransition(Exception):
    """The row exists but its current state does not allow the requested one."""

    def __init__(self, machine: StateMachine, row_id: int, current: str, target: str) -> None:
        super().__init__(f"{machine.name} {row_id} is {current}: cannot become {target}")
        self.machine, self.row_id, self.current, self.target = machine, row_id, current, target


class RowNotFound(Exception):
    def __init__(self, what: str, row_id: int) -> None:
        super().__init__(f"{what} {row_id} not found")
        self.what, self.row_id = what, row_id


def guarded_update(
    table: sa.Table,
    machine: StateMachine,
    rows: Iterable[int] | sa.ColumnElement[bool],
    target: str,
    values: Mapping[str, Any] | None = None,
    only_from: Iterable[str] | None = None,
) -> sa.Update | None:
    """The UPDATE moving ``rows`` (ids, or a condition such as ``jobs.c.task_id == 7`` for a whole set in one
    statement) to ``target`` where their current state allows it; None when nothing can move (no ids, or no
    allowed source state). ``only_from`` narrows the allowed source states further (e.g. 'resume' reaches
    running from paused only, although the task-executor may start a registered task)."""
    if isinstance(rows, sa.ColumnElement):
        selected = rows
    else:
        id_list = list(rows)
        if not id_list:
            return None
        selected = table.c.id.in_(id_list)
    sources = machine.sources_of(target)
    if only_from is not None:
        sources &= frozenset(only_from)
    if not sources:
        return None
    return sa.update(table).where(selected, table.c.status.in_(sorted(sources))).values(status=target, **(values or {}))


async def guarded_transition(
    conn: AsyncConnection,
    table: sa.Table,
    machine: StateMachine,
    rows: Iterable[int] | sa.ColumnElement[bool],
    target: str,
    values: Mapping[str, Any] | None = None,
    returning: Iterable[sa.ColumnElement[Any]] = (),
    only_from: Iterable[str] | None = None,
) -> list[sa.Row]:
    """Apply :func:`guarded_update` and return the rows that moved (their ``returning`` columns, by default the
    id).

    Rows whose state forbids the move are left untouched and simply not returned: callers decide whether that
    is an error (see :func:`transition_one`) or a normal race (a batch sweep).
    """
    stmt = guarded_update(table, machine, rows, target, values, only_from)
    if stmt is None:
        return []
    return list((await conn.execute(stmt.returning(*(tuple(returning) or (table.c.id,))))).all())


async def transition_one(
    conn: AsyncConnection,
    table: sa.Table,
    machine: StateMachine,
    row_id: int,
    target: str,
    values: Mapping[str, Any] | None = None,
    returning: Iterable[sa.ColumnElement[Any]] = (),
    only_from: Iterable[str] | None = None,
) -> sa.Row:
    """Guarded transition of one row; raises RowNotFound or IllegalTransition (naming the current state)."""
    rows = await guarded_transition(conn, table, machine, [row_id], target, values, returning, only_from)
    if rows:
        return rows[0]
    current = (await conn.execute(sa.select(table.c.status).where(table.c.id == row_id))).scalar_one_or_none()
    if current is None:
        raise RowNotFound(machine.name, row_id)
    raise IllegalTransition(machine, row_id, current, target)

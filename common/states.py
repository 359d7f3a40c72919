"""Task, job and pilot state machines as data (pure: no I/O, importable by the pilot).

The guarded UPDATE that enforces them where the write happens is in :mod:`common.db.transitions`.
"""
from __future__ import annotations

import enum
from collections.abc import Mapping
from dataclasses import dataclass


class TaskState(enum.StrEnum):
    REGISTERED = "registered"  # accepted from the WFMS, no job generated yet
    RUNNING = "running"  # jobs are being generated and processed
    PAUSED = "paused"  # no new job is generated or dispatched; running jobs go on
    DONE = "done"  # every input file processed
    FINISHED = "finished"  # ended with some input files failed (partial result)
    FAILED = "failed"  # ended without a usable result (e.g. the input dataset does not exist)
    CANCELLED = "cancelled"


class JobState(enum.StrEnum):
    READY = "ready"  # registered with its input files, waiting for a pilot
    HELD = "held"  # ready, but its task is paused
    DISPATCHED = "dispatched"  # claimed by a pilot
    RUNNING = "running"  # the pilot reported its payload started
    FINISHED = "finished"
    FAILED = "failed"  # attempts exhausted, or an error that must not be retried
    CANCELLED = "cancelled"


# Jobs a pilot holds: what heartbeats keep alive, what counts against a pilot's slots, what a dead pilot loses.
JOBS_IN_FLIGHT = (JobState.DISPATCHED, JobState.RUNNING)


class AttemptOutcome(enum.StrEnum):
    RUNNING = "running"
    FINISHED = "finished"
    FAILED = "failed"
    LOST = "lost"  # the pilot died or stopped heartbeating
    CANCELLED = "cancelled"


class FileRole(enum.StrEnum):
    INPUT = "input"
    OUTPUT = "output"
    LOG = "log"


class PilotState(enum.StrEnum):
    IDLE = "idle"  # registered and alive, no job
    BUSY = "busy"  # running a job
    DEAD = "dead"  # heartbeats stopped for longer than the timeout; its late reports are refused
    EXITED = "exited"  # ended cleanly (lifetime or idle limit, SIGTERM)


class SubmissionState(enum.StrEnum):
    """A pilot the factory submits to a batch system (PILOT_SUBMISSION)."""

    INTENDED = "intended"  # recorded before the submission (so a restart finds it in the batch system or not)
    QUEUED = "queued"  # in the batch system, waiting for a node
    RUNNING = "running"  # the batch job runs (its pilot registers in PILOT_DAT with the batch job id)
    ENDED = "ended"  # the batch job ended (its exit state is recorded)
    WITHDRAWN = "withdrawn"  # cancelled by the factory while queued: the backlog it was for is gone
    VANISHED = "vanished"  # the batch system no longer knows it and never told how it ended
    UNSUBMITTED = "unsubmitted"  # the submission failed, or a restart found no trace of it


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
    initial=(J.READY, J.HELD, J.CANCELLED),
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


S = SubmissionState
SUBMISSION_MACHINE = StateMachine(
    "pilot submission",
    {
        S.INTENDED: frozenset({S.QUEUED, S.RUNNING, S.ENDED, S.UNSUBMITTED}),
        S.QUEUED: frozenset({S.RUNNING, S.ENDED, S.WITHDRAWN, S.VANISHED}),
        S.RUNNING: frozenset({S.ENDED, S.VANISHED}),
        S.ENDED: frozenset(),
        S.WITHDRAWN: frozenset(),
        S.VANISHED: frozenset(),
        S.UNSUBMITTED: frozenset(),
    },
    initial=(S.INTENDED,),
)


class IllegalTransition(Exception):
    """The row exists but its current state does not allow the requested one."""

    def __init__(self, machine: StateMachine, row_id: int, current: str, target: str) -> None:
        super().__init__(f"{machine.name} {row_id} is {current}: cannot become {target}")
        self.machine, self.row_id, self.current, self.target = machine, row_id, current, target


class RowNotFound(Exception):
    def __init__(self, what: str, row_id: int | str) -> None:
        super().__init__(f"{what} {row_id} not found")
        self.what, self.row_id = what, row_id

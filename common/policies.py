"""The WMS's rules as pure functions, in one place (no I/O: property-tested, and imported by the pilot too).

- which resource types a pilot serves (GPU pilots fall back to CPU work), and which pilots serve a job;
- which task states let their jobs proceed, and the state a task's jobs must be in;
- retries by error category: payload failures bounded by the task's max_attempts, losses to infrastructure by
  their own budget, errors that a retry cannot mend not retried; a backoff that doubles per retry, capped;
- fair share at dispatch: each job's place in the claim order (weighted fair queueing).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from common.states import JobState, TaskState

ResourceType = Literal["cpu", "gpu"]
RESOURCE_TYPES: tuple[ResourceType, ...] = ("cpu", "gpu")
MAX_ID = 2**63 - 1  # the largest id a BIGINT column holds: the bound of every id in an API path or query


def resource_types_served(pilot_type: ResourceType) -> tuple[ResourceType, ...]:
    """What a pilot of ``pilot_type`` takes, in the order it claims: a GPU pilot takes GPU work first, then CPU
    work; a CPU pilot never takes GPU work."""
    return ("gpu", "cpu") if pilot_type == "gpu" else ("cpu",)


def pilot_types_serving(job_type: ResourceType) -> tuple[ResourceType, ...]:
    """The pilot resource types that can run a job of ``job_type`` (the inverse of resource_types_served)."""
    return tuple(p for p in RESOURCE_TYPES if job_type in resource_types_served(p))


# A task in one of these states has its jobs generated and dispatched; paused holds them; the rest ended.
TASK_STATES_WHOSE_JOBS_PROCEED: frozenset[TaskState] = frozenset({TaskState.REGISTERED, TaskState.RUNNING})


def job_state_for_task(task_state: str) -> JobState:
    """Where a task's not-yet-dispatched jobs belong: ready while it proceeds, held while it is paused,
    cancelled once it ended (a chunk registered late, or a reconciliation after a cancel)."""
    if task_state in TASK_STATES_WHOSE_JOBS_PROCEED:
        return JobState.READY
    if task_state == TaskState.PAUSED:
        return JobState.HELD
    return JobState.CANCELLED


# Error categories (common.pilot_protocol.ErrorCategory) by how a retry treats them.
LOSS_CATEGORIES = frozenset({"lost", "pilot"})  # the infrastructure failed, not the payload: the loss budget
# the same input fails the same way: never retried (an output or log flood included)
FINAL_CATEGORIES = frozenset({"manifest", "cancelled", "output_too_large"})
MEMORY_CATEGORY = "memory"  # retried once, with more memory (memory_for_attempt); a second time it is final


@dataclass(frozen=True)
class RetryDecision:
    retry: bool
    lost_attempts: int  # the job's count of attempts lost to infrastructure, this one included if lost
    backoff_s: float  # how long the job waits before it may be claimed again (when retried)


@dataclass(frozen=True)
class RetryPolicy:
    """Payload failures count against the task's ``max_attempts`` (attempts not lost); attempts lost to
    infrastructure (dead pilot, silent heartbeat) count apart, at most ``max_lost``, as PanDA and DIRAC do. The
    wait before a retry is ``backoff_s`` x 2^(n-1), capped at ``backoff_max_s``, n being the count that
    applies."""

    backoff_s: float
    backoff_max_s: float
    max_lost: int

    def decide(self, attempt: int, lost_attempts: int, max_attempts: int, category: str,
               previous_category: str | None = None) -> RetryDecision:
        """``attempt``: the attempt that just ended (1-based), with error ``category``; ``lost_attempts``: losses
        before it; ``previous_category``: how the attempt before it failed, if it did."""
        if category in LOSS_CATEGORIES:
            count = lost_attempts + 1
            return RetryDecision(count < self.max_lost, count, self.backoff(count))
        count = attempt - lost_attempts
        retry = count < max_attempts and category not in FINAL_CATEGORIES and not (
            category == MEMORY_CATEGORY and previous_category == MEMORY_CATEGORY)
        return RetryDecision(retry, lost_attempts, self.backoff(count))

    def backoff(self, count: int) -> float:
        return min(self.backoff_s * 2.0 ** max(count - 1, 0), self.backoff_max_s)


def memory_for_attempt(task_memory_mb: int, last_error: str | None, retry_factor: float) -> int:
    """The memory an attempt may use: the task's, or more once an attempt of the job went over it."""
    return int(task_memory_mb * retry_factor) if last_error == MEMORY_CATEGORY else task_memory_mb


def fair_start(task_virtual_time: float, current_virtual_time: float | None) -> float:
    """Where a task's next jobs start in dispatch order: where it left off, but never behind the jobs now ready
    (a task that sat out comes back at the current virtual time, without a hoard of credit)."""
    return task_virtual_time if current_virtual_time is None else max(task_virtual_time, current_virtual_time)


def fair_keys(start: float, priority: int, n: int) -> list[float]:
    """Dispatch keys (virtual finish times) of a task's next ``n`` jobs from ``start``: claims take ready jobs in
    key order, so while tasks have ready jobs each is served in proportion to its priority (3:1 gets three jobs for
    one; at 1000:1 the low task's first job comes after about a thousand of the high one's, not after all of them).
    The same stride idea as the task-executor's generation (services/task_executor/fairshare.py)."""
    if priority < 1:
        raise ValueError("priority must be positive")
    return [start + (i + 1) / priority for i in range(n)]

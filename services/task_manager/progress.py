"""Progress of a task from its per-state job counts: files done/failed/in progress, percent, rate, ETA (pure)."""
from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

from common.states import JobState

IN_PROGRESS = (JobState.DISPATCHED, JobState.RUNNING)
PENDING = (JobState.READY, JobState.HELD)


@dataclass(frozen=True)
class ProgressFigures:
    files_total: int | None
    files_assigned: int
    files_done: int
    files_failed: int
    files_cancelled: int
    files_in_progress: int
    files_pending: int
    jobs: dict[JobState, int]
    percent: float | None
    rate_files_per_s: float | None
    eta_s: float | None


def compute_progress(
    files_total: int | None,
    files_assigned: int,
    by_state: Mapping[str, tuple[int, int]],
    recent_files_done: int,
    recent_span_s: float | None,
) -> ProgressFigures:
    """``by_state``: job state -> (jobs, input files). ``recent_*``: files finished in the rate window and the
    seconds that window covers so far (None when no job has finished in it)."""

    def files_in(*states: JobState) -> int:
        return sum(by_state.get(s, (0, 0))[1] for s in states)

    done = files_in(JobState.FINISHED)
    failed = files_in(JobState.FAILED)
    cancelled = files_in(JobState.CANCELLED)
    ended = done + failed + cancelled
    # While an open dataset is still being split, the files known so far are the best denominator.
    denominator = files_total if files_total is not None else max(files_assigned, sum(f for _, f in by_state.values()))
    percent = round(100.0 * ended / denominator, 2) if denominator else None
    rate = None
    if recent_files_done and recent_span_s:
        rate = recent_files_done / max(recent_span_s, 1.0)
    eta = None
    if rate and denominator:
        eta = max(denominator - ended, 0) / rate
    return ProgressFigures(
        files_total=files_total,
        files_assigned=files_assigned,
        files_done=done,
        files_failed=failed,
        files_cancelled=cancelled,
        files_in_progress=files_in(*IN_PROGRESS),
        files_pending=files_in(*PENDING),
        jobs={s: by_state.get(s, (0, 0))[0] for s in JobState},
        percent=percent,
        rate_files_per_s=rate,
        eta_s=eta,
    )

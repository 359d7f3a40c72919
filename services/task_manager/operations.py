"""What operators look at: the queue summary, jobs and pilots, why a job is not running, throughput over time.

Every view is one or two grouped queries, never one query per task or job.
"""
from __future__ import annotations

import asyncio
import datetime as dt

from sqlalchemy.ext.asyncio import AsyncEngine

from common import capacity
from common.broker import Broker
from common.db import retention
from common.db.session import Transaction
from common.job_listing import JobView
from common.policies import pilot_types_serving
from common.states import TASK_MACHINE, JobState, RowNotFound, TaskState
from common.storage import UnsafeStoragePath, read_beneath
from services.task_manager import queries
from services.task_manager.schemas import (
    AttemptView,
    CommandLine,
    Explanation,
    PilotView,
    QueueLine,
    ResourceUse,
    ThroughputPoint,
    UseSummary,
)

LOG_TAIL_BYTES = 4000
DRY_RUN_MAX_TASKS = 100_000
# Job states as a condor_q-like summary groups them.
QUEUED = (JobState.READY, JobState.HELD)
RUNNING = (JobState.DISPATCHED, JobState.RUNNING)


async def queue_summary(conn: Transaction, include_ended: bool, limit: int = 1000) -> list[QueueLine]:
    """One line per task (active ones, or the newest ``limit`` of all): queued / running / done / failed job
    counts and files done. Jobs are counted for the selected tasks only (ix_job_dat_task_status)."""
    rows = await queries.tasks_for_summary(conn, include_ended, limit)
    groups = (("queued", QUEUED), ("running", RUNNING), ("done", (JobState.FINISHED,)),
              ("failed", (JobState.FAILED,)), ("cancelled", (JobState.CANCELLED,)))
    counts = await queries.job_counts_of_tasks(conn, [r.id for r in rows], groups)
    lines = []
    for r in reversed(rows):
        c = counts.get(r.id)
        lines.append(QueueLine(
            task_id=r.id, name=r.name, status=r.status, priority=r.priority, resource_type=r.resource_type,
            **{name: getattr(c, name) if c else 0 for name, _ in groups},
            files_done=int(c.files_done) if c else 0, files_total=r.files_total, files_assigned=r.files_assigned))
    return lines


async def use_summary(conn: Transaction, broker: Broker) -> UseSummary:
    use = await capacity.use_by_resource_type(conn)
    try:
        depths = await broker.queue_depths()
        dead_letters: int | None = sum(n for queue, n in depths.items() if queue.endswith(".dlq"))
    except Exception:  # the broker is down: the rest still answers
        dead_letters = None
    return UseSummary(
        resources=[ResourceUse(resource_type=rt, slots=u.slots, busy=u.busy, ready=u.ready,
                               oldest_ready_s=round(u.oldest_ready_s, 1)) for rt, u in use.items()],
        jobs_failed_last_10_min=await queries.jobs_failed_since(conn, 600), dead_letters=dead_letters)


async def purge_ended(engine: AsyncEngine, older_than_s: float, pilots_too: bool, dry_run: bool
                      ) -> retention.Purged:
    """Every batch of ended work past the age, one short transaction each (a dry run counts in one read-only
    transaction, up to DRY_RUN_MAX_TASKS tasks)."""
    total = retention.Purged()
    pilot_age: float | None = older_than_s if pilots_too else None
    while True:
        async with engine.begin() as conn:
            total.add(await retention.purge_ended(conn, older_than_s, pilot_age, dry_run,
                                                  DRY_RUN_MAX_TASKS if dry_run else None))
        pilot_age = None  # pilots go in the first transaction
        if dry_run or not total.more:
            return total


async def list_pilots(conn: Transaction, live_only: bool, limit: int) -> list[PilotView]:
    return [PilotView.model_validate(r, from_attributes=True)
            for r in await queries.list_pilots(conn, live_only, limit)]


async def throughput(conn: Transaction, minutes: int, task_id: int | None) -> list[ThroughputPoint]:
    """Jobs and input files finished per minute over the last ``minutes`` minutes (empty minutes included)."""
    return [ThroughputPoint(minute=m, jobs=int(j), files=int(f))
            for m, j, f in await queries.finished_per_minute(conn, minutes, task_id)]


def read_log_tail(url: str | None, storage_root: str) -> str | None:
    """The end of a job's log (at most LOG_TAIL_BYTES). Blocking: call it in a worker thread."""
    data = read_storage_file(url, storage_root, LOG_TAIL_BYTES, from_end=True)
    return None if data is None else data.decode(errors="replace")


def read_storage_file(url: str | None, storage_root: str, max_bytes: int, from_end: bool = False) -> bytes | None:
    """At most ``max_bytes`` of a file a pilot staged: only a regular single-link file under the storage root,
    reached without following a link anywhere in its path (common.storage: a URL comes from a pilot, which may
    swap a directory for a link to /proc/self while we read); the first bytes, or with ``from_end`` the last ones.
    None if it is not such a file or cannot be read: a file error, never a database one. Blocking."""
    if not url:
        return None
    try:
        return read_beneath(url, storage_root, max_bytes, from_end)
    except (UnsafeStoragePath, OSError):
        return None


EXPLAIN_REJECTED_MAX = 5


async def explain_job(conn: Transaction, job_id: int, storage_root: str,
                      now: dt.datetime | None = None) -> Explanation:
    """Why a job is not running, or why it failed: its task's state, its queue position, attempts, log."""
    job = await queries.select_job(conn, job_id)
    if job is None:
        raise RowNotFound("job", job_id)
    task = await queries.select_task(conn, job.task_id)
    assert task is not None  # a job's task is deleted with it
    attempts = await queries.attempts_with_pilots(conn, job_id)
    log = await queries.latest_log_url(conn, job_id)
    now = now or await queries.database_now(conn)
    reasons: list[str] = []
    status = JobState(job.status)

    if status in QUEUED:
        if task.status == TaskState.PAUSED:
            reasons.append(f"task {task.id} is paused: its jobs are held until it is resumed")
        if job.not_before is not None and job.not_before > now:
            wait = (job.not_before - now).total_seconds()
            reasons.append(f"retry backoff after attempt {job.attempt}: claimable in {wait:.0f} s")
        if status == JobState.READY:
            ahead = await queries.ready_jobs_ahead(conn, job.id, job.resource_type, job.dispatch_key)
            # GPU pilots also take CPU work; CPU pilots never take GPU work
            fitting = await queries.live_pilots_fitting(conn, pilot_types_serving(job.resource_type), task.cores,
                                                        task.memory_mb)
            reasons.append(f"{ahead} ready {job.resource_type} jobs are ahead of it (fair share by priority)")
            if fitting == 0:
                reasons.append(f"no live pilot offers {job.resource_type} with >= {task.cores} cores and "
                               f">= {task.memory_mb} MB: it cannot run until such a pilot registers")
    elif status in RUNNING:
        reasons.append(f"{status} on pilot {job.pilot_id} since "
                       f"{(job.started_at or job.queued_at or now).isoformat()}; last heartbeat "
                       f"{job.heartbeat_at.isoformat() if job.heartbeat_at else 'none yet'}")
    elif status == JobState.FAILED:
        lost = f" (and {job.lost_attempts} lost to infrastructure)" if job.lost_attempts else ""
        reasons.append(f"failed after {job.attempt - job.lost_attempts} of {task.max_attempts} attempts{lost}: "
                       f"{job.error_category or 'error'}: {job.error_message or 'no message'}")
    elif status == JobState.CANCELLED:
        reasons.append(f"cancelled with its task ({task.status})")
    else:
        reasons.append("finished")
    if task.error and task.status in TASK_MACHINE.terminal:
        reasons.append(f"its task {task.id} {task.status}: {task.error}")  # e.g. another job's output refused
    for f in await queries.rejected_outputs(conn, job_id, EXPLAIN_REJECTED_MAX):
        reasons.append(f"the DSM refused its output {f.lfn}: {f.error}")
    unregistered = await queries.output_waiting_for_dsm(conn, job_id)
    if unregistered is not None:
        reasons.append(f"outputs waiting for the DSM (retried at {unregistered.register_after.isoformat()}): "
                       f"{unregistered.error}")
    return Explanation(
        job=JobView.model_validate(job),
        task_status=task.status,
        max_attempts=task.max_attempts,
        reasons=reasons,
        attempts=[AttemptView.model_validate(a, from_attributes=True) for a in attempts],
        log_url=log,
        log_tail=await asyncio.to_thread(read_log_tail, log, storage_root),
        task_commands=[CommandLine.model_validate(c, from_attributes=True)
                       for c in await queries.commands_of(conn, task.id)],
    )


"""What operators look at: the queue summary, jobs and pilots, why a job is not running, throughput over time.

Every view is one or two grouped queries, never one query per task or job.
"""
from __future__ import annotations

import datetime as dt
from pathlib import Path

import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncConnection

from common.db.models import files, job_attempts, jobs, pilots, tasks
from common.job_listing import JobView
from common.policies import pilot_types_serving
from common.states import PILOT_MACHINE, TASK_MACHINE, FileState, JobState, RowNotFound, TaskState
from services.task_manager.schemas import (
    AttemptView,
    Explanation,
    PilotView,
    QueueLine,
    ThroughputPoint,
)

LOG_TAIL_BYTES = 4000
# Job states as a condor_q-like summary groups them.
QUEUED = (JobState.READY, JobState.HELD)
RUNNING = (JobState.DISPATCHED, JobState.RUNNING)


async def queue_summary(conn: AsyncConnection, include_ended: bool, limit: int = 1000) -> list[QueueLine]:
    """One line per task (active ones, or the newest ``limit`` of all): queued / running / done / failed job
    counts and files done. Jobs are counted for the selected tasks only (ix_job_dat_task_status)."""
    selected = sa.select(tasks.c.id, tasks.c.name, tasks.c.status, tasks.c.priority, tasks.c.resource_type,
                         tasks.c.files_total, tasks.c.files_assigned).order_by(tasks.c.id.desc()).limit(limit)
    if not include_ended:
        selected = selected.where(tasks.c.status.in_(sorted(TASK_MACHINE.active)))
    rows = (await conn.execute(selected)).all()
    groups = (("queued", QUEUED), ("running", RUNNING), ("done", (JobState.FINISHED,)),
              ("failed", (JobState.FAILED,)), ("cancelled", (JobState.CANCELLED,)))
    counts = {r.task_id: r for r in (await conn.execute(
        sa.select(jobs.c.task_id,
                  *(sa.func.count().filter(jobs.c.status.in_(states)).label(name) for name, states in groups),
                  sa.func.coalesce(sa.func.sum(jobs.c.n_files).filter(jobs.c.status == JobState.FINISHED), 0)
                  .label("files_done"))
        .where(jobs.c.task_id.in_([r.id for r in rows]))
        .group_by(jobs.c.task_id))).all()} if rows else {}
    lines = []
    for r in reversed(rows):
        c = counts.get(r.id)
        lines.append(QueueLine(
            task_id=r.id, name=r.name, status=r.status, priority=r.priority, resource_type=r.resource_type,
            **{name: getattr(c, name) if c else 0 for name, _ in groups},
            files_done=int(c.files_done) if c else 0, files_total=r.files_total, files_assigned=r.files_assigned))
    return lines


async def list_pilots(conn: AsyncConnection, live_only: bool, limit: int) -> list[PilotView]:
    stmt = sa.select(pilots).order_by(pilots.c.id.desc()).limit(limit)
    if live_only:
        stmt = stmt.where(pilots.c.status.in_(sorted(PILOT_MACHINE.active)))
    return [PilotView.model_validate(r, from_attributes=True) for r in (await conn.execute(stmt)).all()]


async def throughput(conn: AsyncConnection, minutes: int, task_id: int | None) -> list[ThroughputPoint]:
    """Jobs and input files finished per minute over the last ``minutes`` minutes (empty minutes included)."""
    finished = (
        sa.select(sa.func.date_trunc("minute", jobs.c.finished_at).label("minute"),
                  sa.func.count().label("jobs"), sa.func.sum(jobs.c.n_files).label("files"))
        .where(jobs.c.status == JobState.FINISHED,
               jobs.c.finished_at >= sa.func.now() - sa.func.make_interval(0, 0, 0, 0, 0, minutes))
        .group_by(sa.text("1"))
    )
    if task_id is not None:
        finished = finished.where(jobs.c.task_id == task_id)
    per_minute = finished.subquery()
    series = sa.func.generate_series(
        sa.func.date_trunc("minute", sa.func.now() - sa.func.make_interval(0, 0, 0, 0, 0, minutes - 1)),
        sa.func.date_trunc("minute", sa.func.now()),
        sa.text("interval '1 minute'"),
    ).table_valued("minute").render_derived()
    stmt = (
        sa.select(series.c.minute, sa.func.coalesce(per_minute.c.jobs, 0), sa.func.coalesce(per_minute.c.files, 0))
        .outerjoin(per_minute, per_minute.c.minute == series.c.minute)
        .order_by(series.c.minute)
    )
    return [ThroughputPoint(minute=m, jobs=int(j), files=int(f)) for m, j, f in (await conn.execute(stmt)).all()]


def _log_tail(url: str | None) -> str | None:
    """The end of a job's log, when it is on storage this process can read (file://)."""
    if not url or not url.startswith("file://"):
        return None
    path = Path(url.removeprefix("file://"))
    try:
        with path.open("rb") as log:
            log.seek(max(0, path.stat().st_size - LOG_TAIL_BYTES))
            return log.read().decode(errors="replace")
    except OSError:
        return None


EXPLAIN_REJECTED_MAX = 5


async def explain_job(conn: AsyncConnection, job_id: int, now: dt.datetime | None = None) -> Explanation:
    """Why a job is not running, or why it failed: its task's state, its queue position, attempts, log."""
    job = (await conn.execute(sa.select(jobs).where(jobs.c.id == job_id))).first()
    if job is None:
        raise RowNotFound("job", job_id)
    task = (await conn.execute(sa.select(tasks).where(tasks.c.id == job.task_id))).one()
    attempts = (await conn.execute(
        sa.select(job_attempts, pilots.c.host, pilots.c.status.label("pilot_status"))
        .outerjoin(pilots, pilots.c.id == job_attempts.c.pilot_id)
        .where(job_attempts.c.job_id == job_id).order_by(job_attempts.c.attempt))).all()
    log = (await conn.execute(
        sa.select(files.c.url).where(files.c.job_id == job_id, files.c.role == "log")
        .order_by(files.c.id.desc()).limit(1))).scalar()
    now = now or (await conn.execute(sa.select(sa.func.now()))).scalar_one()
    reasons: list[str] = []
    status = JobState(job.status)

    if status in QUEUED:
        if task.status == TaskState.PAUSED:
            reasons.append(f"task {task.id} is paused: its jobs are held until it is resumed")
        if job.not_before is not None and job.not_before > now:
            wait = (job.not_before - now).total_seconds()
            reasons.append(f"retry backoff after attempt {job.attempt}: claimable in {wait:.0f} s")
        if status == JobState.READY:
            ahead = (await conn.execute(
                sa.select(sa.func.count()).where(
                    jobs.c.status == JobState.READY, jobs.c.resource_type == job.resource_type,
                    sa.or_(jobs.c.priority > job.priority,
                           sa.and_(jobs.c.priority == job.priority, jobs.c.id < job.id))))).scalar_one()
            fitting = (await conn.execute(
                sa.select(sa.func.count()).where(
                    pilots.c.status.in_(sorted(PILOT_MACHINE.active)),
                    pilots.c.cores >= task.cores, pilots.c.memory_mb >= task.memory_mb,
                    # GPU pilots also take CPU work; CPU pilots never take GPU work
                    pilots.c.resource_type.in_(pilot_types_serving(job.resource_type))))
            ).scalar_one()
            reasons.append(f"{ahead} ready {job.resource_type} jobs are ahead of it (priority, then age)")
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
    refused = (await conn.execute(
        sa.select(files.c.lfn, files.c.error).where(files.c.job_id == job_id, files.c.status == FileState.REJECTED)
        .order_by(files.c.id).limit(EXPLAIN_REJECTED_MAX))).all()
    for f in refused:
        reasons.append(f"the DSM refused its output {f.lfn}: {f.error}")
    unregistered = (await conn.execute(
        sa.select(files.c.error, files.c.register_after).where(
            files.c.job_id == job_id, files.c.status == FileState.STAGED, files.c.error.is_not(None))
        .limit(1))).first()
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
        log_tail=_log_tail(log),
    )


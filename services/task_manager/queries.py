"""The task-manager's SQL, nothing else."""
from __future__ import annotations

import datetime as dt
from collections.abc import Sequence
from typing import Any

import sqlalchemy as sa
from sqlalchemy.dialects.postgresql import aggregate_order_by, insert
from sqlalchemy.ext.asyncio import AsyncConnection

from common.auth import Identity
from common.db.models import Record, files, job_attempts, jobs, pilot_credentials, pilots, task_commands, tasks
from common.db.transitions import transition_one
from common.states import PILOT_MACHINE, TASK_MACHINE, AttemptOutcome, FileRole, FileState, JobState, TaskState

RATE_WINDOW_S = 600
OUTPUT_LOCK_SPACE = 0x5BD1  # advisory lock key space of "registering a task that writes this output dataset"


async def insert_task(conn: AsyncConnection, values: dict[str, Any]) -> Record | None:
    """Insert a task; None when a task with the same WFMS request id exists already."""
    stmt = insert(tasks).values(**values).on_conflict_do_nothing(index_elements=[tasks.c.wfms_request_id])
    return (await conn.execute(stmt.returning(*tasks.c))).first()


async def record_command(conn: AsyncConnection, task_id: int, caller: Identity, command: str,
                         detail: str | None) -> None:
    """One line of the task's audit trail, in the command's own transaction."""
    await conn.execute(sa.insert(task_commands).values(task_id=task_id, actor=caller.name, role=caller.role,
                                                       command=command, detail=detail))


async def commands_of(conn: AsyncConnection, task_id: int, limit: int = 100) -> list[Record]:
    """The task's audit trail, oldest first (at most ``limit`` lines: the newest ones)."""
    newest = (sa.select(task_commands).where(task_commands.c.task_id == task_id)
              .order_by(task_commands.c.id.desc()).limit(limit).subquery())
    return list((await conn.execute(sa.select(newest).order_by(newest.c.id))).all())


async def lock_output_dataset(conn: AsyncConnection, dataset: str) -> None:
    """Serialize registrations naming the same output dataset (transaction-level advisory lock)."""
    await conn.execute(sa.select(sa.func.pg_advisory_xact_lock(OUTPUT_LOCK_SPACE, sa.func.hashtext(dataset))))


async def active_task_writing(conn: AsyncConnection, dataset: str) -> int | None:
    stmt = sa.select(tasks.c.id).where(tasks.c.output_dataset == dataset,
                                       tasks.c.status.in_(sorted(TASK_MACHINE.active))).limit(1)
    return (await conn.execute(stmt)).scalar_one_or_none()


async def select_task(conn: AsyncConnection, task_id: int) -> Record | None:
    return (await conn.execute(sa.select(tasks).where(tasks.c.id == task_id))).first()


async def select_task_by_request_id(conn: AsyncConnection, request_id: str) -> Record | None:
    return (await conn.execute(sa.select(tasks).where(tasks.c.wfms_request_id == request_id))).first()


async def select_task_for_update(conn: AsyncConnection, task_id: int) -> Record | None:
    return (await conn.execute(sa.select(tasks).where(tasks.c.id == task_id).with_for_update())).first()


async def update_priority(conn: AsyncConnection, task_id: int, priority: int) -> Record | None:
    """Change the priority of an active task (never of an ended one)."""
    stmt = (
        sa.update(tasks)
        .where(tasks.c.id == task_id, tasks.c.status.in_(sorted(TASK_MACHINE.active)))
        .values(priority=priority, updated_at=sa.func.now())
        .returning(*tasks.c)
    )
    return (await conn.execute(stmt)).first()


async def list_tasks(conn: AsyncConnection, status: str | None, after: int | None, limit: int) -> list[Record]:
    stmt = sa.select(tasks).order_by(tasks.c.id).limit(limit)
    if status is not None:
        stmt = stmt.where(tasks.c.status == status)
    if after is not None:
        stmt = stmt.where(tasks.c.id > after)
    return list((await conn.execute(stmt)).all())


async def job_counts_by_state(conn: AsyncConnection, task_id: int) -> dict[str, tuple[int, int]]:
    """state -> (jobs, input files) for one task."""
    stmt = (
        sa.select(jobs.c.status, sa.func.count(), sa.func.coalesce(sa.func.sum(jobs.c.n_files), 0))
        .where(jobs.c.task_id == task_id)
        .group_by(jobs.c.status)
    )
    return {status: (int(n), int(f)) for status, n, f in (await conn.execute(stmt)).all()}


async def recent_throughput(conn: AsyncConnection, task_id: int, started_at: dt.datetime | None,
                            ended_at: dt.datetime | None) -> tuple[int, float | None]:
    """(input files of jobs finished within the rate window, seconds covered by that window so far); for a task
    that has ended, (all its files finished, its active span: from its start, or its first job's, to its end),
    which no longer moves with the clock."""
    if ended_at is not None:
        ended = sa.select(
            sa.func.coalesce(sa.func.sum(jobs.c.n_files).filter(jobs.c.status == JobState.FINISHED), 0),
            sa.func.min(jobs.c.started_at),
        ).where(jobs.c.task_id == task_id)
        files_done, first_start = (await conn.execute(ended)).one()
        start = started_at or first_start
        return int(files_done), ((ended_at - start).total_seconds() if start is not None else None)
    stmt = sa.select(
        sa.func.coalesce(sa.func.sum(jobs.c.n_files), 0),
        sa.func.extract("epoch", sa.func.now() - sa.func.min(jobs.c.finished_at)),
    ).where(
        jobs.c.task_id == task_id,
        jobs.c.status == JobState.FINISHED,
        jobs.c.finished_at > sa.func.now() - sa.text(f"interval '{RATE_WINDOW_S} seconds'"),
    )
    files_done, span = (await conn.execute(stmt)).one()
    return int(files_done), (float(span) if span is not None else None)


async def job_statistics(conn: AsyncConnection, task_id: int) -> Record:
    run_time = sa.func.extract("epoch", jobs.c.finished_at - jobs.c.started_at)
    finished = jobs.c.status == JobState.FINISHED
    stmt = sa.select(
        sa.func.coalesce(sa.func.sum(jobs.c.attempt), 0).label("attempts_total"),
        sa.func.count().filter(jobs.c.attempt > 1).label("jobs_retried"),
        sa.func.avg(run_time).filter(finished).label("mean_s"),
        sa.func.min(run_time).filter(finished).label("min_s"),
        sa.func.max(run_time).filter(finished).label("max_s"),
    ).where(jobs.c.task_id == task_id)
    return (await conn.execute(stmt)).one()


async def usage_totals(conn: AsyncConnection, task_id: int) -> Record:
    """What the task's measured attempts used together (JOB_ATTEMPT's figures, through the job index)."""
    a = job_attempts.c
    stmt = (sa.select(sa.func.count().label("attempts"), sa.func.coalesce(sa.func.sum(a.cpu_s), 0).label("cpu_s"),
                      sa.func.coalesce(sa.func.sum(a.wall_s), 0).label("wall_s"),
                      sa.func.max(a.max_rss_mb).label("max_rss_mb"), sa.func.max(a.max_pss_mb).label("max_pss_mb"),
                      sa.func.coalesce(sa.func.sum(a.read_mb), 0).label("read_mb"),
                      sa.func.coalesce(sa.func.sum(a.written_mb), 0).label("written_mb"))
            .select_from(jobs.join(job_attempts, a.job_id == jobs.c.id))
            .where(jobs.c.task_id == task_id, a.wall_s.is_not(None)))
    return (await conn.execute(stmt)).one()


GROUP_JOBS_SHOWN = 20  # job ids listed per failure group


async def failure_groups(conn: AsyncConnection, task_id: int, limit: int = 50) -> list[Record]:
    """Failed and lost attempts of the task's jobs grouped by error category and message (the report and the
    monitor's task page both show these): attempts, the jobs they hit, those of these jobs that failed for good
    and their input files, and the first job ids."""
    a = job_attempts.c
    per_job = (sa.select(a.error_category, a.error_message, jobs.c.id.label("job_id"), jobs.c.n_files,
                         (jobs.c.status == JobState.FAILED).label("failed"), sa.func.count().label("attempts"))
               .select_from(jobs.join(job_attempts, a.job_id == jobs.c.id))
               .where(jobs.c.task_id == task_id, a.outcome.in_([AttemptOutcome.FAILED, AttemptOutcome.LOST]))
               .group_by(a.error_category, a.error_message, jobs.c.id).subquery())
    p = per_job.c
    stmt = (sa.select(p.error_category, p.error_message, sa.func.sum(p.attempts).label("attempts"),
                      sa.func.count().label("jobs"), sa.func.count().filter(p.failed).label("jobs_failed"),
                      sa.func.coalesce(sa.func.sum(p.n_files).filter(p.failed), 0).label("files"),
                      sa.func.array_agg(aggregate_order_by(p.job_id, p.job_id))[1:GROUP_JOBS_SHOWN].label("job_ids"))
            .group_by(p.error_category, p.error_message)
            .order_by(sa.desc("attempts"), p.error_category, p.error_message).limit(limit))
    return list((await conn.execute(stmt)).all())


async def output_totals(conn: AsyncConnection, task_id: int) -> Record:
    stmt = sa.select(
        sa.func.count().label("files"),
        sa.func.coalesce(sa.func.sum(files.c.size), 0).label("bytes"),
        sa.func.coalesce(sa.func.sum(files.c.events), 0).label("events"),
        sa.func.count().filter(files.c.status == "rejected").label("rejected"),
    ).where(files.c.task_id == task_id, files.c.role == "output")
    return (await conn.execute(stmt)).one()


async def list_files(conn: AsyncConnection, task_id: int, role: str, after: int | None, limit: int) -> list[Record]:
    stmt = (
        sa.select(files)
        .where(files.c.task_id == task_id, files.c.role == role)
        .order_by(files.c.id)
        .limit(limit)
    )
    if after is not None:
        stmt = stmt.where(files.c.id > after)
    return list((await conn.execute(stmt)).all())


async def move_task(conn: AsyncConnection, task_id: int, target: TaskState,
                    only_from: frozenset[str] | None) -> Record:
    """A WFMS or operator command (guarded): the moved row; RowNotFound or IllegalTransition otherwise."""
    values: dict[str, Any] = {"updated_at": sa.func.now()}
    if target in TASK_MACHINE.terminal:
        values["finished_at"] = sa.func.now()
    return await transition_one(conn, tasks, TASK_MACHINE, task_id, target, values, tasks.c, only_from)


# What operators look at (services/task_manager/operations.py shapes it): grouped reads, never one per row.

async def tasks_for_summary(conn: AsyncConnection, include_ended: bool, limit: int) -> list[Record]:
    stmt = sa.select(tasks.c.id, tasks.c.name, tasks.c.status, tasks.c.priority, tasks.c.resource_type,
                     tasks.c.files_total, tasks.c.files_assigned).order_by(tasks.c.id.desc()).limit(limit)
    if not include_ended:
        stmt = stmt.where(tasks.c.status.in_(sorted(TASK_MACHINE.active)))
    return list((await conn.execute(stmt)).all())


async def job_counts_of_tasks(conn: AsyncConnection, task_ids: list[int],
                              groups: Sequence[tuple[str, Sequence[str]]]) -> dict[int, Record]:
    """Per task: one count per (name, job states) group, and the input files of its finished jobs."""
    if not task_ids:
        return {}
    stmt = (
        sa.select(jobs.c.task_id,
                  *(sa.func.count().filter(jobs.c.status.in_(states)).label(name) for name, states in groups),
                  sa.func.coalesce(sa.func.sum(jobs.c.n_files).filter(jobs.c.status == JobState.FINISHED), 0)
                  .label("files_done"))
        .where(jobs.c.task_id.in_(task_ids))
        .group_by(jobs.c.task_id)
    )
    return {r.task_id: r for r in (await conn.execute(stmt)).all()}


async def list_pilots(conn: AsyncConnection, live_only: bool, limit: int) -> list[Record]:
    stmt = sa.select(pilots).order_by(pilots.c.id.desc()).limit(limit)
    if live_only:
        stmt = stmt.where(pilots.c.status.in_(sorted(PILOT_MACHINE.active)))
    return list((await conn.execute(stmt)).all())


async def finished_per_minute(conn: AsyncConnection, minutes: int, task_id: int | None) -> list[Record]:
    """(minute, jobs, input files) finished in each of the last ``minutes`` minutes, empty minutes included
    (ix_job_dat_finished_at: no scan of JOB_DAT)."""
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
    return list((await conn.execute(stmt)).all())


async def select_job(conn: AsyncConnection, job_id: int) -> Record | None:
    return (await conn.execute(sa.select(jobs).where(jobs.c.id == job_id))).first()


async def attempts_with_pilots(conn: AsyncConnection, job_id: int) -> list[Record]:
    stmt = (sa.select(job_attempts, pilots.c.host, pilots.c.status.label("pilot_status"))
            .outerjoin(pilots, pilots.c.id == job_attempts.c.pilot_id)
            .where(job_attempts.c.job_id == job_id).order_by(job_attempts.c.attempt))
    return list((await conn.execute(stmt)).all())


async def latest_log_url(conn: AsyncConnection, job_id: int) -> str | None:
    stmt = (sa.select(files.c.url).where(files.c.job_id == job_id, files.c.role == FileRole.LOG)
            .order_by(files.c.id.desc()).limit(1))
    url = (await conn.execute(stmt)).scalar()
    return None if url is None else str(url)


async def database_now(conn: AsyncConnection) -> dt.datetime:
    now: dt.datetime = (await conn.execute(sa.select(sa.func.now()))).scalar_one()
    return now


async def ready_jobs_ahead(conn: AsyncConnection, job_id: int, resource_type: str, dispatch_key: float) -> int:
    """Ready jobs of the type that are claimed before this one (fair-share order: dispatch key, then id)."""
    stmt = sa.select(sa.func.count()).where(
        jobs.c.status == JobState.READY, jobs.c.resource_type == resource_type,
        sa.or_(jobs.c.dispatch_key < dispatch_key, sa.and_(jobs.c.dispatch_key == dispatch_key, jobs.c.id < job_id)))
    return int((await conn.execute(stmt)).scalar_one())


async def live_pilots_fitting(conn: AsyncConnection, pilot_types: Sequence[str], cores: int, memory_mb: int) -> int:
    stmt = sa.select(sa.func.count()).where(
        pilots.c.status.in_(sorted(PILOT_MACHINE.active)), pilots.c.cores >= cores,
        pilots.c.memory_mb >= memory_mb, pilots.c.resource_type.in_(pilot_types))
    return int((await conn.execute(stmt)).scalar_one())


async def rejected_outputs(conn: AsyncConnection, job_id: int, limit: int) -> list[Record]:
    stmt = (sa.select(files.c.lfn, files.c.error)
            .where(files.c.job_id == job_id, files.c.status == FileState.REJECTED).order_by(files.c.id).limit(limit))
    return list((await conn.execute(stmt)).all())


async def output_waiting_for_dsm(conn: AsyncConnection, job_id: int) -> Record | None:
    """One of the job's outputs whose registration met a DSM outage (its error and next try), if any."""
    stmt = sa.select(files.c.error, files.c.register_after).where(
        files.c.job_id == job_id, files.c.status == FileState.STAGED, files.c.error.is_not(None)).limit(1)
    return (await conn.execute(stmt)).first()


async def insert_pilot_credential(conn: AsyncConnection, values: dict[str, Any]) -> Record:
    stmt = sa.insert(pilot_credentials).values(**values).returning(*pilot_credentials.c)
    return (await conn.execute(stmt)).one()


async def select_pilot_credentials(conn: AsyncConnection, include_revoked: bool) -> Sequence[Record]:
    stmt = sa.select(pilot_credentials).order_by(pilot_credentials.c.id)
    if not include_revoked:
        stmt = stmt.where(pilot_credentials.c.revoked_at.is_(None))
    return (await conn.execute(stmt)).all()


async def revoke_pilot_credential(conn: AsyncConnection, credential_id: int) -> Record | None:
    """Revoke (once: a repeated revocation keeps the first time); None if there is no such credential."""
    stmt = (sa.update(pilot_credentials).where(pilot_credentials.c.id == credential_id)
            .values(revoked_at=sa.func.coalesce(pilot_credentials.c.revoked_at, sa.func.now()))
            .returning(*pilot_credentials.c))
    return (await conn.execute(stmt)).first()


async def jobs_failed_since(conn: AsyncConnection, seconds: float) -> int:
    """Jobs that failed for good in the last ``seconds`` (the index of jobs by finish time)."""
    stmt = sa.select(sa.func.count()).where(
        jobs.c.finished_at > sa.func.now() - sa.func.make_interval(0, 0, 0, 0, 0, 0, seconds),
        jobs.c.status == JobState.FAILED)
    return int((await conn.execute(stmt)).scalar_one())

"""The task-manager's SQL, nothing else."""
from __future__ import annotations

from typing import Any

import sqlalchemy as sa
from sqlalchemy.dialects.postgresql import insert
from sqlalchemy.ext.asyncio import AsyncConnection

from common.db.models import Record, files, jobs, tasks
from common.states import TASK_MACHINE, JobState

RATE_WINDOW_S = 600
OUTPUT_LOCK_SPACE = 0x5BD1  # advisory lock key space of "registering a task that writes this output dataset"


async def insert_task(conn: AsyncConnection, values: dict[str, Any]) -> Record | None:
    """Insert a task; None when a task with the same WFMS request id exists already."""
    stmt = insert(tasks).values(**values).on_conflict_do_nothing(index_elements=[tasks.c.wfms_request_id])
    return (await conn.execute(stmt.returning(*tasks.c))).first()


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


async def recent_throughput(conn: AsyncConnection, task_id: int) -> tuple[int, float | None]:
    """(input files of jobs finished within the rate window, seconds covered by that window so far)."""
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


async def failure_groups(conn: AsyncConnection, task_id: int, limit: int = 50) -> list[Record]:
    stmt = (
        sa.select(
            jobs.c.error_category,
            jobs.c.error_message,
            sa.func.count().label("jobs"),
            sa.func.sum(jobs.c.n_files).label("files"),
        )
        .where(jobs.c.task_id == task_id, jobs.c.status == JobState.FAILED)
        .group_by(jobs.c.error_category, jobs.c.error_message)
        .order_by(sa.desc("jobs"))
        .limit(limit)
    )
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

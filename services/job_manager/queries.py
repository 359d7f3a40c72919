"""The job-manager's SQL: bulk registration (COPY) and the metadata reads of its internal API."""
from __future__ import annotations

import uuid
from typing import Any

import asyncpg
import sqlalchemy as sa
from sqlalchemy.dialects.postgresql import insert
from sqlalchemy.ext.asyncio import AsyncConnection

from common.db.models import Record, consumed_messages, files, jobs, tasks
from common.states import JobState

JOB_COLUMNS = ("id", "task_id", "status", "resource_type", "priority", "n_files", "n_bytes", "n_events", "queued_at",
               "dispatch_key")
FILE_COLUMNS = ("lfn", "dataset", "task_id", "job_id", "role", "url", "size", "adler32", "events", "status")


async def claim_message(conn: AsyncConnection, consumer: str, message_id: uuid.UUID) -> bool:
    """Record that ``consumer`` applies this message; False if it was applied already (a redelivery)."""
    stmt = insert(consumed_messages).values(consumer=consumer, message_id=message_id).on_conflict_do_nothing()
    return (await conn.execute(stmt)).rowcount == 1


async def count_registered(conn: AsyncConnection, task_id: int, n_jobs: int, resource_type: str) -> Record | None:
    """Add the chunk's jobs to the task's registered count and return the task's state, priority and where its
    jobs start in the fair dispatch order (``start``: common.policies.fair_start of the task's virtual time and
    the first ready job's key), advancing its virtual time past them, in one statement.

    The row lock this takes is held until commit: a pause or cancel cannot slip between reading the state and
    registering the jobs (it waits, then sees them), and registrations of one task never deadlock each other.
    """
    current = (sa.select(sa.func.min(jobs.c.dispatch_key))
               .where(jobs.c.status == JobState.READY, jobs.c.resource_type == resource_type).scalar_subquery())
    start = sa.func.greatest(tasks.c.dispatch_vt, sa.func.coalesce(current, tasks.c.dispatch_vt))
    stmt = (
        sa.update(tasks)
        .where(tasks.c.id == task_id)
        .values(jobs_registered=tasks.c.jobs_registered + n_jobs,
                dispatch_vt=start + sa.cast(n_jobs, sa.Float) / tasks.c.priority)
        .returning(tasks.c.id, tasks.c.status, tasks.c.priority,
                   (tasks.c.dispatch_vt - sa.cast(n_jobs, sa.Float) / tasks.c.priority).label("start"))
    )
    return (await conn.execute(stmt)).first()


async def allocate_job_ids(conn: AsyncConnection, n: int) -> list[int]:
    stmt = sa.text("SELECT nextval(pg_get_serial_sequence('job_dat', 'id')) FROM generate_series(1, :n)")
    return [r[0] for r in (await conn.execute(stmt, {"n": n})).all()]


class DuplicateInputFile(Exception):
    """A file COPYed in is already in a job of its task (the unique index refused it)."""


async def copy_rows(conn: AsyncConnection, table: str, columns: tuple[str, ...],
                    records: list[tuple[Any, ...]]) -> None:
    """COPY into ``table`` on the transaction's own connection (the fastest bulk path of asyncpg)."""
    raw = await conn.get_raw_connection()
    assert raw.driver_connection is not None, "a connection in a transaction has its driver connection"
    try:
        await raw.driver_connection.copy_records_to_table(table, records=records, columns=list(columns))
    except asyncpg.UniqueViolationError as exc:
        raise DuplicateInputFile(str(exc)) from exc


async def select_job(conn: AsyncConnection, job_id: int) -> Record | None:
    return (await conn.execute(sa.select(jobs).where(jobs.c.id == job_id))).first()


async def files_of_job(conn: AsyncConnection, job_id: int) -> list[Record]:
    return list((await conn.execute(sa.select(files).where(files.c.job_id == job_id).order_by(files.c.id))).all())


async def files_by_lfn(conn: AsyncConnection, lfn: str, dataset: str | None) -> list[Record]:
    stmt = sa.select(files).where(files.c.lfn == lfn).order_by(files.c.id).limit(100)
    if dataset is not None:
        stmt = stmt.where(files.c.dataset == dataset)
    return list((await conn.execute(stmt)).all())

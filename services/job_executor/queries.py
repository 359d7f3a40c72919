"""The job-executor's SQL: every state change here is one guarded statement."""
from __future__ import annotations

from typing import Any

import sqlalchemy as sa
from sqlalchemy.dialects.postgresql import insert
from sqlalchemy.ext.asyncio import AsyncConnection

from common.db.models import files, job_attempts, jobs, pilots, tasks
from common.states import JOB_MACHINE, PILOT_MACHINE, FileState, JobState, PilotState, TaskState

IN_FLIGHT = (JobState.DISPATCHED, JobState.RUNNING)
LIVE = (PilotState.IDLE, PilotState.BUSY)
DISPATCHABLE_TASK_STATES = (TaskState.REGISTERED, TaskState.RUNNING)


async def insert_pilot(conn: AsyncConnection, values: dict[str, Any]) -> int:
    return (await conn.execute(sa.insert(pilots).values(**values).returning(pilots.c.id))).scalar_one()


async def select_pilot(conn: AsyncConnection, pilot_id: int) -> sa.Row | None:
    return (await conn.execute(sa.select(pilots).where(pilots.c.id == pilot_id))).first()


async def beat_pilot(conn: AsyncConnection, pilot_id: int) -> bool:
    stmt = (
        sa.update(pilots)
        .where(pilots.c.id == pilot_id, pilots.c.status.in_(LIVE))
        .values(heartbeat_at=sa.func.now())
        .returning(pilots.c.id)
    )
    return (await conn.execute(stmt)).first() is not None


async def set_pilot_busy(conn: AsyncConnection, pilot_id: int, job_id: int | None) -> None:
    status = PilotState.BUSY if job_id is not None else PilotState.IDLE
    await conn.execute(
        sa.update(pilots)
        .where(pilots.c.id == pilot_id, pilots.c.status.in_(LIVE))
        .values(status=status, current_job_id=job_id, heartbeat_at=sa.func.now())
    )


async def end_pilot(conn: AsyncConnection, pilot_id: int) -> None:
    await conn.execute(
        sa.update(pilots)
        .where(pilots.c.id == pilot_id, pilots.c.status.in_(sorted(PILOT_MACHINE.sources_of(PilotState.EXITED))))
        .values(status=PilotState.EXITED, ended_at=sa.func.now(), current_job_id=None)
    )


async def claim_job(conn: AsyncConnection, pilot_id: int, resource_type: str) -> sa.Row | None:
    """Claim the highest-priority ready job of ``resource_type`` whose backoff is over and whose task may run.

    One statement; SKIP LOCKED so concurrent claims never wait for each other or take the same job.
    """
    candidate = (
        sa.select(jobs.c.id)
        .where(
            jobs.c.status == JobState.READY,
            jobs.c.resource_type == resource_type,
            sa.or_(jobs.c.not_before.is_(None), jobs.c.not_before <= sa.func.now()),
            sa.exists().where(tasks.c.id == jobs.c.task_id, tasks.c.status.in_(DISPATCHABLE_TASK_STATES)),
        )
        .order_by(jobs.c.priority.desc(), jobs.c.id)
        .limit(1)
        .with_for_update(skip_locked=True)
        .scalar_subquery()
    )
    stmt = (
        sa.update(jobs)
        .where(jobs.c.id == candidate, jobs.c.status.in_(sorted(JOB_MACHINE.sources_of(JobState.DISPATCHED))))
        .values(
            status=JobState.DISPATCHED,
            pilot_id=pilot_id,
            attempt=jobs.c.attempt + 1,
            started_at=sa.func.now(),
            heartbeat_at=sa.func.now(),
            finished_at=None,
            not_before=None,
        )
        .returning(jobs.c.id, jobs.c.attempt, jobs.c.task_id)
    )
    return (await conn.execute(stmt)).first()


async def job_context(conn: AsyncConnection, job_id: int) -> tuple[sa.Row, list[sa.Row]]:
    task = (
        await conn.execute(
            sa.select(tasks.c.id, tasks.c.payload, tasks.c.output_dataset)
            .join(jobs, jobs.c.task_id == tasks.c.id)
            .where(jobs.c.id == job_id)
        )
    ).one()
    inputs = (
        await conn.execute(
            sa.select(files.c.lfn, files.c.url, files.c.size, files.c.adler32)
            .where(files.c.job_id == job_id, files.c.role == "input")
            .order_by(files.c.id)
        )
    ).all()
    return task, list(inputs)


async def start_attempt(conn: AsyncConnection, job_id: int, attempt: int, pilot_id: int) -> None:
    await conn.execute(sa.insert(job_attempts).values(job_id=job_id, attempt=attempt, pilot_id=pilot_id))


async def end_attempts(conn: AsyncConnection, keys: list[tuple[int, int]], outcome: str, exit_code: int | None,
                       category: str | None, message: str | None) -> None:
    if not keys:
        return
    await conn.execute(
        sa.update(job_attempts)
        .where(sa.tuple_(job_attempts.c.job_id, job_attempts.c.attempt).in_(keys), job_attempts.c.outcome == "running")
        .values(outcome=outcome, finished_at=sa.func.now(), exit_code=exit_code, error_category=category,
                error_message=message)
    )


def fenced(job_id: int, attempt: int, pilot_id: int) -> list[sa.ColumnElement[bool]]:
    """Only the pilot holding the current attempt may change the job."""
    return [jobs.c.id == job_id, jobs.c.attempt == attempt, jobs.c.pilot_id == pilot_id]


async def move_job(conn: AsyncConnection, where: list[sa.ColumnElement[bool]], target: JobState,
                   values: dict[str, Any]) -> list[sa.Row]:
    stmt = (
        sa.update(jobs)
        .where(*where, jobs.c.status.in_(sorted(JOB_MACHINE.sources_of(target))))
        .values(status=target, **values)
        .returning(jobs.c.id, jobs.c.attempt, jobs.c.task_id)
    )
    return list((await conn.execute(stmt)).all())


async def retry_or_fail(conn: AsyncConnection, where: list[sa.ColumnElement[bool]], backoff_s: float,
                        backoff_max_s: float, category: str, message: str | None,
                        exit_code: int | None) -> tuple[list[sa.Row], list[sa.Row]]:
    """Jobs matching ``where`` (in flight) go back to ready after a backoff while attempts remain, else fail."""
    attempts_left = sa.select(tasks.c.max_attempts).where(tasks.c.id == jobs.c.task_id).scalar_subquery()
    backoff = sa.func.least(backoff_s * sa.func.power(2, jobs.c.attempt - 1), backoff_max_s)
    error = {"error_category": category, "error_message": message, "exit_code": exit_code}
    retried = await move_job(
        conn, [*where, jobs.c.attempt < attempts_left], JobState.READY,
        {"pilot_id": None, "not_before": sa.func.now() + sa.func.make_interval(0, 0, 0, 0, 0, 0, backoff), **error},
    )
    failed = await move_job(conn, [*where, jobs.c.attempt >= attempts_left], JobState.FAILED,
                            {"finished_at": sa.func.now(), **error})
    if failed:
        await set_input_files(conn, [r.id for r in failed], FileState.FAILED)
    return retried, failed


async def cancel_task_leftovers(conn: AsyncConnection, task_id: int) -> None:
    """After a task's jobs were cancelled: its pending input files are cancelled and its running attempts end
    (two statements by task, whatever the number of jobs)."""
    await conn.execute(
        sa.update(files)
        .where(files.c.task_id == task_id, files.c.role == "input", files.c.status == FileState.PENDING)
        .values(status=FileState.CANCELLED, updated_at=sa.func.now())
    )
    await conn.execute(
        sa.update(job_attempts)
        .where(job_attempts.c.outcome == "running",
               job_attempts.c.job_id.in_(sa.select(jobs.c.id).where(jobs.c.task_id == task_id)))
        .values(outcome="cancelled", finished_at=sa.func.now(), error_category="cancelled",
                error_message="task cancelled")
    )


async def set_input_files(conn: AsyncConnection, job_ids: list[int], state: FileState) -> None:
    await conn.execute(
        sa.update(files)
        .where(files.c.job_id.in_(job_ids), files.c.role == "input")
        .values(status=state, updated_at=sa.func.now())
    )


async def beat_job(conn: AsyncConnection, job_id: int, attempt: int, pilot_id: int) -> bool:
    stmt = (
        sa.update(jobs)
        .where(*fenced(job_id, attempt, pilot_id), jobs.c.status.in_(IN_FLIGHT))
        .values(heartbeat_at=sa.func.now())
        .returning(jobs.c.id)
    )
    return (await conn.execute(stmt)).first() is not None


async def select_job(conn: AsyncConnection, job_id: int) -> sa.Row | None:
    return (await conn.execute(sa.select(jobs).where(jobs.c.id == job_id))).first()


async def insert_staged_files(conn: AsyncConnection, rows: list[dict[str, Any]]) -> None:
    """Outputs and logs; an lfn already registered in the dataset (a repeated final report) is skipped."""
    if rows:
        await conn.execute(insert(files).on_conflict_do_nothing(), rows)


async def declare_dead_pilots(conn: AsyncConnection, timeout_s: float) -> list[int]:
    stmt = (
        sa.update(pilots)
        .where(
            pilots.c.status.in_(sorted(PILOT_MACHINE.sources_of(PilotState.DEAD))),
            pilots.c.heartbeat_at < sa.func.now() - sa.func.make_interval(0, 0, 0, 0, 0, 0, timeout_s),
        )
        .values(status=PilotState.DEAD, ended_at=sa.func.now())
        .returning(pilots.c.id)
    )
    return [r.id for r in (await conn.execute(stmt)).all()]


def lost_jobs_condition(dead_pilots: list[int], timeout_s: float) -> sa.ColumnElement[bool]:
    """In-flight jobs whose pilot is dead, or whose own heartbeat stopped."""
    stale = jobs.c.heartbeat_at < sa.func.now() - sa.func.make_interval(0, 0, 0, 0, 0, 0, timeout_s)
    return sa.and_(jobs.c.status.in_(IN_FLIGHT), sa.or_(jobs.c.pilot_id.in_(dead_pilots), stale))


async def in_flight_keys(conn: AsyncConnection, condition: sa.ColumnElement[bool]) -> list[tuple[int, int]]:
    return [(r.id, r.attempt) for r in (await conn.execute(sa.select(jobs.c.id, jobs.c.attempt).where(condition)))]

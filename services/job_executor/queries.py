"""The job-executor's SQL: every state change here is one guarded statement."""
from __future__ import annotations

import uuid
from dataclasses import dataclass
from typing import Any

import sqlalchemy as sa
from sqlalchemy.dialects.postgresql import insert
from sqlalchemy.ext.asyncio import AsyncConnection

from common.db.models import consumed_messages, files, job_attempts, jobs, pilots, tasks
from common.settings import Settings
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


async def job_claimed_by_request(conn: AsyncConnection, pilot_id: int, request_id: uuid.UUID) -> sa.Row | None:
    """The attempt that this pilot's claim ``request_id`` produced, if the pilot still holds it."""
    stmt = sa.select(jobs.c.id, jobs.c.attempt, jobs.c.task_id).where(
        jobs.c.pilot_id == pilot_id, jobs.c.claim_request_id == request_id, jobs.c.status.in_(IN_FLIGHT))
    return (await conn.execute(stmt)).first()


async def claim_job(conn: AsyncConnection, pilot_id: int, resource_type: str,
                    request_id: uuid.UUID | None = None) -> sa.Row | None:
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
            claim_request_id=request_id,
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


@dataclass(frozen=True)
class RetryPolicy:
    """Retries of failed and lost attempts. Payload failures are bounded by the task's max_attempts (counting
    only attempts not lost to infrastructure); losses (dead pilot, silent heartbeat) by ``max_lost``, apart, as
    PanDA and DIRAC do. The wait before a retry doubles with the count that applies, capped."""

    backoff_s: float
    backoff_max_s: float
    max_lost: int

    @classmethod
    def of(cls, settings: Settings) -> RetryPolicy:
        return cls(settings.retry_backoff_s, settings.retry_backoff_max_s, settings.max_lost_attempts)


async def retry_or_fail(conn: AsyncConnection, where: list[sa.ColumnElement[bool]], policy: RetryPolicy,
                        category: str, message: str | None, exit_code: int | None,
                        lost: bool) -> tuple[list[sa.Row], list[sa.Row]]:
    """Jobs matching ``where`` (in flight) go back to ready after a backoff while their budget lasts, else fail."""
    error = {"error_category": category, "error_message": message, "exit_code": exit_code}
    if lost:
        count = jobs.c.lost_attempts + 1
        can_retry = count < policy.max_lost
        error["lost_attempts"] = count
    else:
        max_attempts = sa.select(tasks.c.max_attempts).where(tasks.c.id == jobs.c.task_id).scalar_subquery()
        count = jobs.c.attempt - jobs.c.lost_attempts
        can_retry = count < max_attempts
    backoff = sa.func.least(policy.backoff_s * sa.func.power(2, count - 1), policy.backoff_max_s)
    retried = await move_job(
        conn, [*where, can_retry], JobState.READY,
        {"pilot_id": None, "not_before": sa.func.now() + sa.func.make_interval(0, 0, 0, 0, 0, 0, backoff), **error},
    )
    failed = await move_job(conn, [*where, ~can_retry], JobState.FAILED, {"finished_at": sa.func.now(), **error})
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


async def lock_task(conn: AsyncConnection, task_id: int) -> sa.Row | None:
    """The task's row, locked until commit: task commands reconcile one at a time, each against the latest
    state (a command committed meanwhile waits, and its own reconciliation runs after)."""
    stmt = sa.select(tasks.c.id, tasks.c.status, tasks.c.priority).where(tasks.c.id == task_id).with_for_update()
    return (await conn.execute(stmt)).first()


async def staged_files_due(conn: AsyncConnection, limit: int) -> list[sa.Row]:
    """Staged outputs and logs whose DSM registration is due (not waiting for a backoff), locked (SKIP LOCKED:
    another replica takes other rows)."""
    stmt = (
        sa.select(files.c.id, files.c.task_id, files.c.dataset, files.c.lfn, files.c.url, files.c.size,
                  files.c.adler32, files.c.events, files.c.register_attempts)
        .where(files.c.status == FileState.STAGED,
               sa.or_(files.c.register_after.is_(None), files.c.register_after <= sa.func.now()))
        .order_by(files.c.id)
        .limit(limit)
        .with_for_update(skip_locked=True)
    )
    return list((await conn.execute(stmt)).all())


async def mark_files_registered(conn: AsyncConnection, file_ids: list[int]) -> None:
    if file_ids:
        await conn.execute(sa.update(files).where(files.c.id.in_(file_ids), files.c.status == FileState.STAGED)
                           .values(status=FileState.REGISTERED, updated_at=sa.func.now(), error=None))


async def defer_registration(conn: AsyncConnection, file_ids: list[int], error: str, max_s: float) -> None:
    """The DSM was unavailable for these files: try them again after 2^attempts s (capped)."""
    if file_ids:
        backoff = sa.func.least(sa.func.power(2, files.c.register_attempts), max_s)
        await conn.execute(
            sa.update(files).where(files.c.id.in_(file_ids))
            .values(register_attempts=files.c.register_attempts + 1, error=error,
                    register_after=sa.func.now() + sa.func.make_interval(0, 0, 0, 0, 0, 0, backoff))
        )


async def reject_files(conn: AsyncConnection, rejected: list[tuple[int, int, str]]) -> None:
    """(file id, task id, reason): the DSM refused these for good. The files keep the reason; their task keeps
    the first one (it ends failed with it)."""
    if not rejected:
        return
    await conn.execute(
        sa.update(files).where(files.c.id == sa.bindparam("file_id"))
        .values(status=FileState.REJECTED, error=sa.bindparam("reason"), updated_at=sa.func.now()),
        [{"file_id": f, "reason": reason} for f, _, reason in rejected],
    )
    first_by_task: dict[int, str] = {}
    for _, task_id, reason in rejected:
        first_by_task.setdefault(task_id, reason)
    await conn.execute(
        sa.update(tasks).where(tasks.c.id == sa.bindparam("task_id"), tasks.c.error.is_(None))
        .values(error=sa.bindparam("reason"), updated_at=sa.func.now()),
        [{"task_id": t, "reason": f"the DSM refused an output: {r}"} for t, r in first_by_task.items()],
    )


async def mark_output_closed(conn: AsyncConnection, task_id: int) -> None:
    await conn.execute(sa.update(tasks).where(tasks.c.id == task_id).values(output_closed_at=sa.func.now()))


async def purge_consumed_messages(conn: AsyncConnection, older_than_s: float) -> int:
    stmt = sa.delete(consumed_messages).where(
        consumed_messages.c.consumed_at < sa.func.now() - sa.func.make_interval(0, 0, 0, 0, 0, 0, older_than_s))
    return (await conn.execute(stmt)).rowcount


async def purge_ended_pilots(conn: AsyncConnection, older_than_s: float) -> int:
    """Pilots that exited or died longer ago than the retention (their jobs keep their history; the pilot
    reference becomes NULL)."""
    stmt = sa.delete(pilots).where(
        pilots.c.status.in_(sorted(PILOT_MACHINE.terminal)),
        pilots.c.ended_at < sa.func.now() - sa.func.make_interval(0, 0, 0, 0, 0, 0, older_than_s))
    return (await conn.execute(stmt)).rowcount

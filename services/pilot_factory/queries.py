"""The factory's SQL: its submissions (every state change one guarded statement), the backlog it serves, and the
pilots whose batch jobs ended."""
from __future__ import annotations

from typing import Any

import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncConnection

from common.db.models import Record, jobs, pilot_submissions, pilots, tasks
from common.db.transitions import may_move
from common.states import PILOT_MACHINE, SUBMISSION_MACHINE, JobState, PilotState, SubmissionState

S = SubmissionState
LIVE = sorted(SUBMISSION_MACHINE.active)


async def ready_backlog(conn: AsyncConnection, resource_type: str, cores: int, memory_mb: int) -> int:
    """Ready jobs of ``resource_type`` that a pilot of ``cores`` and ``memory_mb`` could run (the partial index
    of ready jobs): a queue whose pilots fit none of the backlog gets no pilot for it."""
    stmt = (sa.select(sa.func.count()).select_from(jobs.join(tasks, tasks.c.id == jobs.c.task_id))
            .where(jobs.c.status == JobState.READY, jobs.c.resource_type == resource_type,
                   tasks.c.cores <= cores, tasks.c.memory_mb <= memory_mb))
    return int((await conn.execute(stmt)).scalar_one())


async def live_submissions(conn: AsyncConnection, prefix: str) -> list[Record]:
    stmt = sa.select(pilot_submissions).where(pilot_submissions.c.status.in_(LIVE),
                                              pilot_submissions.c.batch_name.startswith(prefix, autoescape=True))
    return list((await conn.execute(stmt)).all())


async def intend(conn: AsyncConnection, rows: list[dict[str, Any]]) -> dict[str, int]:
    """Record intended submissions; their ids by batch name."""
    inserted = await conn.execute(sa.insert(pilot_submissions).returning(pilot_submissions.c.batch_name,
                                                                         pilot_submissions.c.id), rows)
    return {name: submission_id for name, submission_id in inserted.all()}


async def move(conn: AsyncConnection, submission_id: int, target: SubmissionState, **values: Any) -> bool:
    """One guarded transition; False if the submission is no longer in a state that allows it."""
    stamps: dict[str, Any] = {}
    if target == S.QUEUED:
        stamps["submitted_at"] = sa.func.coalesce(pilot_submissions.c.submitted_at, sa.func.now())
    elif target == S.RUNNING:
        stamps["started_at"] = sa.func.coalesce(pilot_submissions.c.started_at, sa.func.now())
        stamps["submitted_at"] = sa.func.coalesce(pilot_submissions.c.submitted_at, sa.func.now())
    elif target in SUBMISSION_MACHINE.terminal:
        stamps["ended_at"] = sa.func.now()
    stmt = (sa.update(pilot_submissions)
            .where(pilot_submissions.c.id == submission_id,
                   may_move(pilot_submissions.c.status, SUBMISSION_MACHINE, target))
            .values(status=target, **stamps, **values))
    return bool((await conn.execute(stmt)).rowcount)


async def end_pilots_of_batch_job(conn: AsyncConnection, batch_system: str, batch_job_id: str,
                                  batch_state: str) -> list[int]:
    """The pilot(s) that ran in this batch job: its end recorded; one still live (killed without a word: scancel,
    node failure) is dead, so the job-executor's next sweep retries its jobs at once instead of waiting for its
    heartbeat timeout. The live pilots declared dead."""
    where = [pilots.c.batch_system == batch_system, pilots.c.batch_job_id == batch_job_id]
    await conn.execute(sa.update(pilots).where(*where).values(batch_state=batch_state))
    dead = await conn.execute(
        sa.update(pilots).where(*where, may_move(pilots.c.status, PILOT_MACHINE, PilotState.DEAD))
        .values(status=PilotState.DEAD, ended_at=sa.func.now(), current_job_id=None).returning(pilots.c.id))
    return [r.id for r in dead.all()]


async def submissions_by_status(conn: AsyncConnection) -> dict[tuple[str, str], int]:
    rows = await conn.execute(sa.select(pilot_submissions.c.queue, pilot_submissions.c.status, sa.func.count())
                              .where(pilot_submissions.c.status.in_(LIVE))
                              .group_by(pilot_submissions.c.queue, pilot_submissions.c.status))
    return {(q, s): int(n) for q, s, n in rows.all()}

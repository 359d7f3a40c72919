"""The task-executor's SQL."""
from __future__ import annotations

import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncConnection

from common.db.models import Record, jobs, pilots, tasks
from common.db.transitions import guarded_transition
from common.policies import TASK_STATES_WHOSE_JOBS_PROCEED
from common.states import TASK_MACHINE, JobState, PilotState, TaskState

# States in which a task's dataset is still turned into jobs. A chunk is only ever written for a task in one of
# them (the guard of advance_cursor), so a committed cancel or pause stops generation at the next chunk.
GENERATING = sorted(TASK_STATES_WHOSE_JOBS_PROCEED)  # generation goes on in these task states
assert TASK_MACHINE.allowed(TaskState.REGISTERED, TaskState.RUNNING)


async def tasks_to_generate(conn: AsyncConnection) -> list[Record]:
    stmt = (
        sa.select(
            tasks.c.id, tasks.c.status, tasks.c.priority, tasks.c.resource_type, tasks.c.input_dataset,
            tasks.c.split_by, tasks.c.split_size, tasks.c.dsm_cursor, tasks.c.files_assigned,
            tasks.c.output_dataset,
            sa.func.extract("epoch", sa.func.now() - tasks.c.created_at).label("age_s"),
        )
        .where(tasks.c.status.in_(GENERATING), tasks.c.files_total.is_(None))
        .order_by(tasks.c.id)
    )
    return list((await conn.execute(stmt)).all())


async def backlog_by_resource(conn: AsyncConnection, caps: dict[str, int]) -> dict[str, int]:
    """Jobs generated but not dispatched, per resource type, counted up to ``caps`` (the bounds: past them the
    exact figure does not matter, and counting stays O(bound)). That is the jobs registered and waiting
    (ready; held jobs of paused tasks compete for nothing) plus chunks still on their way to the
    job-manager."""
    backlog: dict[str, int] = {}
    for rt, cap in caps.items():
        waiting = (
            sa.select(jobs.c.id)
            .where(jobs.c.resource_type == rt, jobs.c.status == JobState.READY)
            .limit(cap)
            .subquery()
        )
        backlog[rt] = (await conn.execute(sa.select(sa.func.count()).select_from(waiting))).scalar_one()
    in_flight = (
        sa.select(tasks.c.resource_type, sa.func.sum(tasks.c.jobs_total - tasks.c.jobs_registered))
        .where(tasks.c.status.in_(sorted(TASK_MACHINE.active)))
        .group_by(tasks.c.resource_type)
    )
    for rt, n in (await conn.execute(in_flight)).all():
        backlog[rt] = backlog.get(rt, 0) + int(n or 0)
    return backlog


async def live_slots_by_resource(conn: AsyncConnection, heartbeat_timeout_s: float) -> dict[str, int]:
    """Job slots of the live pilots, by the pilots' resource type."""
    stmt = (
        sa.select(pilots.c.resource_type, sa.func.sum(pilots.c.slots))
        .where(
            pilots.c.status.in_([PilotState.IDLE, PilotState.BUSY]),
            pilots.c.heartbeat_at > sa.func.now() - sa.func.make_interval(0, 0, 0, 0, 0, 0, heartbeat_timeout_s),
        )
        .group_by(pilots.c.resource_type)
    )
    return {rt: int(n) for rt, n in (await conn.execute(stmt)).all()}


async def advance_cursor(
    conn: AsyncConnection,
    task_id: int,
    expected_cursor: int,
    new_cursor: int,
    n_files: int,
    n_jobs: int,
    complete: bool,
) -> Record | None:
    """Record a generated chunk: compare-and-set of the task's dataset cursor, only while the task generates.

    None when the task left GENERATING or another writer moved the cursor: the chunk must then be dropped.
    The first chunk also moves the task registered -> running.
    """
    values: dict[str, object] = {
        "dsm_cursor": new_cursor,
        "files_assigned": tasks.c.files_assigned + n_files,
        "jobs_total": tasks.c.jobs_total + n_jobs,
        "status": TaskState.RUNNING,
        "started_at": sa.func.coalesce(tasks.c.started_at, sa.func.now()),
        "updated_at": sa.func.now(),
    }
    if complete:
        values["files_total"] = tasks.c.files_assigned + n_files
    stmt = (
        sa.update(tasks)
        .where(tasks.c.id == task_id, tasks.c.dsm_cursor == expected_cursor, tasks.c.status.in_(GENERATING))
        .values(**values)
        .returning(tasks.c.id, tasks.c.status, tasks.c.priority, tasks.c.resource_type)
    )
    return (await conn.execute(stmt)).first()


async def fail_task(conn: AsyncConnection, task_id: int, error: str) -> list[Record]:
    """The task fails with ``error`` (its input cannot be split); its row (for the event), or none if it had
    already ended."""
    return await guarded_transition(
        conn, tasks, TASK_MACHINE, [task_id], TaskState.FAILED,
        {"error": error, "updated_at": sa.func.now(), "finished_at": sa.func.now()},
        returning=(tasks.c.id, tasks.c.status, tasks.c.priority, tasks.c.resource_type),
    )

"""What the farm offers and how it is used (the USE method's utilization and saturation), read the same way by
the job-executor's telemetry (Prometheus) and the task-manager's operations view (`wms q`): the live pilots' job
slots and the jobs in flight on them, and how long the oldest claimable job has waited. Live rows only (partial
indexes of live pilots, jobs in flight, ready jobs): the cost follows the farm, not the history."""
from __future__ import annotations

import dataclasses

import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncConnection

from common.db.models import jobs, pilots
from common.states import JOBS_IN_FLIGHT, PILOT_MACHINE, JobState


@dataclasses.dataclass(frozen=True)
class Use:
    slots: int  # of the live pilots of this resource type
    busy: int  # jobs in flight on them
    ready: int  # claimable jobs of this resource type
    oldest_ready_s: float  # how long the longest-waiting one has been ready


async def use_by_resource_type(conn: AsyncConnection) -> dict[str, Use]:
    in_flight = (sa.select(jobs.c.pilot_id, sa.func.count().label("n")).where(jobs.c.status.in_(JOBS_IN_FLIGHT))
                 .group_by(jobs.c.pilot_id).subquery())
    slot_rows = await conn.execute(
        sa.select(pilots.c.resource_type, sa.func.sum(pilots.c.slots), sa.func.coalesce(sa.func.sum(in_flight.c.n), 0))
        .select_from(pilots.outerjoin(in_flight, in_flight.c.pilot_id == pilots.c.id))
        .where(pilots.c.status.in_(sorted(PILOT_MACHINE.active))).group_by(pilots.c.resource_type))
    since = sa.func.greatest(jobs.c.queued_at, jobs.c.not_before)
    ready_rows = await conn.execute(
        sa.select(jobs.c.resource_type, sa.func.count(),
                  sa.func.extract("epoch", sa.func.now() - sa.func.min(since)))
        .where(jobs.c.status == JobState.READY,
               sa.or_(jobs.c.not_before.is_(None), jobs.c.not_before <= sa.func.now()))
        .group_by(jobs.c.resource_type))
    slots = {rt: (int(total), int(busy)) for rt, total, busy in slot_rows.all()}
    ready = {rt: (int(n), max(0.0, float(age or 0))) for rt, n, age in ready_rows.all()}
    return {rt: Use(*slots.get(rt, (0, 0)), *ready.get(rt, (0, 0.0))) for rt in sorted(set(slots) | set(ready))}

"""Jobs as the APIs show them (the job-manager's internal API and the task-manager's operator views): one
view model and one keyset-paged query."""
from __future__ import annotations

import datetime as dt

import sqlalchemy as sa
from pydantic import BaseModel, ConfigDict
from sqlalchemy.ext.asyncio import AsyncConnection

from common.db.models import jobs
from common.states import JobState


class JobView(BaseModel):
    model_config = ConfigDict(from_attributes=True)

    id: int
    task_id: int
    status: JobState
    attempt: int
    resource_type: str
    priority: int
    pilot_id: int | None
    n_files: int
    n_bytes: int
    n_events: int | None
    created_at: dt.datetime
    queued_at: dt.datetime | None
    started_at: dt.datetime | None
    heartbeat_at: dt.datetime | None
    finished_at: dt.datetime | None
    exit_code: int | None
    error_category: str | None
    error_message: str | None
    not_before: dt.datetime | None = None


class JobPage(BaseModel):
    items: list[JobView]
    next_after: int | None


async def job_page(conn: AsyncConnection, task_id: int | None, status: str | None, after: int | None,
                   limit: int) -> JobPage:
    """Jobs by task and state in id order, ``limit`` after the cursor ``after``."""
    stmt = sa.select(jobs).order_by(jobs.c.id).limit(limit)
    if task_id is not None:
        stmt = stmt.where(jobs.c.task_id == task_id)
    if status is not None:
        stmt = stmt.where(jobs.c.status == status)
    if after is not None:
        stmt = stmt.where(jobs.c.id > after)
    items = [JobView.model_validate(r) for r in (await conn.execute(stmt)).all()]
    return JobPage(items=items, next_after=items[-1].id if len(items) == limit else None)

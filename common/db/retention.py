"""Retention: ended work older than an age leaves the database (the operator's `wms purge` through the
task-manager, and the job-executor's housekeeping when WMS_TASK_RETENTION_S is set).

What goes: settled tasks (ended, their outputs closed in the DSM) that ended before the cut-off, with their jobs,
attempts and file rows (ON DELETE CASCADE); pilots that exited or died before it; pilot submissions that ended
before it. What stays: every active task and its rows, live pilots, and the DSM (its datasets and files are the
experiment's record; the WMS's FILE_DAT rows were only its bookkeeping of them). Deleting is how rows are hidden
from every list: nothing reads an archive.

Tasks go in batches (a task's cascade can be 100,000 rows): each call removes at most ``max_tasks`` and says
whether more are due, so transactions stay short and a caller loops.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncConnection

from common.db.models import files, jobs, pilot_submissions, pilots, tasks
from common.states import PILOT_MACHINE, SUBMISSION_MACHINE, TASK_MACHINE

MAX_TASKS_PER_CALL = 200


@dataclass
class Purged:
    tasks: int = 0
    jobs: int = 0
    files: int = 0
    pilots: int = 0
    pilot_submissions: int = 0
    more: bool = False  # tasks past the cut-off remain (the batch was full)

    COUNTED = ("tasks", "jobs", "files", "pilots", "pilot_submissions")

    def counts(self) -> dict[str, int]:
        return {name: getattr(self, name) for name in self.COUNTED}

    def add(self, other: Purged) -> None:
        for name in self.COUNTED:
            setattr(self, name, getattr(self, name) + getattr(other, name))
        self.more = other.more


def _cut_off(older_than_s: float) -> sa.ColumnElement[Any]:
    return sa.func.now() - sa.func.make_interval(0, 0, 0, 0, 0, 0, older_than_s)


def _settled_tasks_before(older_than_s: float, max_tasks: int) -> sa.Select[Any]:
    ended_at = sa.func.coalesce(tasks.c.finished_at, tasks.c.updated_at)
    return (sa.select(tasks.c.id)
            .where(tasks.c.status.in_(sorted(TASK_MACHINE.terminal)), tasks.c.output_closed_at.is_not(None),
                   ended_at < _cut_off(older_than_s))
            .order_by(tasks.c.id).limit(max_tasks + 1))


async def purge_ended(conn: AsyncConnection, task_age_s: float | None, pilot_age_s: float | None,
                      dry_run: bool = False, max_tasks: int | None = None) -> Purged:
    """Remove (or with ``dry_run`` only count) settled tasks that ended more than ``task_age_s`` seconds ago and
    pilots and pilot submissions that ended more than ``pilot_age_s`` ago (None: keep them all)."""
    max_tasks = max_tasks or MAX_TASKS_PER_CALL
    task_ids: list[int] = []
    if task_age_s is not None:
        task_ids = list((await conn.execute(_settled_tasks_before(task_age_s, max_tasks))).scalars())
    more = len(task_ids) > max_tasks
    task_ids = task_ids[:max_tasks]
    purged = Purged(tasks=len(task_ids), more=more)
    if task_ids:
        purged.jobs = (await conn.execute(sa.select(sa.func.count()).select_from(jobs)
                                          .where(jobs.c.task_id.in_(task_ids)))).scalar_one()
        purged.files = (await conn.execute(sa.select(sa.func.count()).select_from(files)
                                           .where(files.c.task_id.in_(task_ids)))).scalar_one()
        if not dry_run:
            await conn.execute(sa.delete(tasks).where(tasks.c.id.in_(task_ids)))
    if pilot_age_s is None:
        return purged
    ended_pilots = sa.and_(pilots.c.status.in_(sorted(PILOT_MACHINE.terminal)),
                           pilots.c.ended_at < _cut_off(pilot_age_s))
    ended_submissions = sa.and_(pilot_submissions.c.status.in_(sorted(SUBMISSION_MACHINE.terminal)),
                                pilot_submissions.c.ended_at < _cut_off(pilot_age_s))
    if dry_run:
        purged.pilots = (await conn.execute(sa.select(sa.func.count()).select_from(pilots)
                                            .where(ended_pilots))).scalar_one()
        purged.pilot_submissions = (await conn.execute(sa.select(sa.func.count()).select_from(pilot_submissions)
                                                       .where(ended_submissions))).scalar_one()
    else:
        purged.pilots = (await conn.execute(sa.delete(pilots).where(ended_pilots))).rowcount
        purged.pilot_submissions = (await conn.execute(sa.delete(pilot_submissions)
                                                       .where(ended_submissions))).rowcount
    return purged

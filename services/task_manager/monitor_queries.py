"""The web monitor's SQL: filtered task pages, a task's drill-down, pilots summarized by the database, load over
time. Each view is a few grouped reads, never one per row."""
from __future__ import annotations

import datetime as dt
from collections.abc import Sequence
from typing import Any

import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncConnection

from common.db.models import Record, files, job_attempts, jobs, load_samples, pilots, tasks
from common.states import JOBS_IN_FLIGHT, PILOT_MACHINE, FileRole, FileState, JobState


def _task_filter(stmt: sa.Select[Any], states: Sequence[str], search: str | None, since: dt.datetime | None,
                 until: dt.datetime | None) -> sa.Select[Any]:
    if states:
        stmt = stmt.where(tasks.c.status.in_(states))
    if search:
        matches = [tasks.c.name.icontains(search, autoescape=True),
                   tasks.c.input_dataset.icontains(search, autoescape=True),
                   tasks.c.output_dataset.icontains(search, autoescape=True)]
        if search.isdigit() and len(search) < 18:
            matches.append(tasks.c.id == int(search))
        stmt = stmt.where(sa.or_(*matches))
    if since is not None:
        stmt = stmt.where(tasks.c.created_at >= since)
    if until is not None:
        stmt = stmt.where(tasks.c.created_at < until)
    return stmt


async def task_page(conn: AsyncConnection, states: Sequence[str], search: str | None, since: dt.datetime | None,
                    until: dt.datetime | None, before: int | None, limit: int) -> tuple[list[Record], int]:
    """The newest ``limit`` tasks matching the filters with ids below ``before``, and how many match in all."""
    columns = (tasks.c.id, tasks.c.name, tasks.c.status, tasks.c.priority, tasks.c.resource_type,
               tasks.c.files_total, tasks.c.files_assigned, tasks.c.created_at, tasks.c.finished_at,
               tasks.c.input_dataset, tasks.c.output_dataset)
    stmt = _task_filter(sa.select(*columns), states, search, since, until)
    if before is not None:
        stmt = stmt.where(tasks.c.id < before)
    rows = list((await conn.execute(stmt.order_by(tasks.c.id.desc()).limit(limit))).all())
    total = (await conn.execute(_task_filter(sa.select(sa.func.count()).select_from(tasks), states, search, since,
                                             until))).scalar_one()
    return rows, int(total)


async def file_counts_of_tasks(conn: AsyncConnection, task_ids: list[int]) -> dict[int, Record]:
    """Per task: input files of finished, failed and cancelled jobs (the progress bar's segments)."""
    if not task_ids:
        return {}
    of = {name: sa.func.coalesce(sa.func.sum(jobs.c.n_files).filter(jobs.c.status == state), 0).label(name)
          for name, state in (("done", JobState.FINISHED), ("failed", JobState.FAILED),
                              ("cancelled", JobState.CANCELLED))}
    stmt = sa.select(jobs.c.task_id, *of.values()).where(jobs.c.task_id.in_(task_ids)).group_by(jobs.c.task_id)
    return {r.task_id: r for r in (await conn.execute(stmt)).all()}


async def files_ended_over_time(conn: AsyncConnection, task_id: int, bucket_s: int) -> list[Record]:
    """(bucket start, input files done, input files failed or cancelled) in buckets of ``bucket_s`` seconds over
    the task's life (ix_job_dat_task_status)."""
    epoch = sa.func.extract("epoch", jobs.c.finished_at)
    bucket = sa.func.to_timestamp(sa.func.floor(epoch / bucket_s) * bucket_s).label("bucket")
    stmt = (sa.select(bucket,
                      sa.func.coalesce(sa.func.sum(jobs.c.n_files).filter(jobs.c.status == JobState.FINISHED), 0)
                      .label("done"),
                      sa.func.coalesce(sa.func.sum(jobs.c.n_files).filter(jobs.c.status != JobState.FINISHED), 0)
                      .label("ended_otherwise"))
            .where(jobs.c.task_id == task_id,
                   jobs.c.status.in_([JobState.FINISHED, JobState.FAILED, JobState.CANCELLED]),
                   jobs.c.finished_at.is_not(None))
            .group_by(bucket).order_by(bucket))
    return list((await conn.execute(stmt)).all())


async def recent_attempts(conn: AsyncConnection, task_id: int, limit: int) -> list[Record]:
    """The task's latest attempts (newest first) with their pilots' hosts and states."""
    stmt = (sa.select(job_attempts, pilots.c.host, pilots.c.status.label("pilot_status"))
            .select_from(jobs.join(job_attempts, job_attempts.c.job_id == jobs.c.id)
                         .outerjoin(pilots, pilots.c.id == job_attempts.c.pilot_id))
            .where(jobs.c.task_id == task_id)
            .order_by(job_attempts.c.started_at.desc(), job_attempts.c.job_id.desc()).limit(limit))
    return list((await conn.execute(stmt)).all())


async def latest_task_log(conn: AsyncConnection, task_id: int) -> Record | None:
    """The log to show for a task: the newest log of a failed job if any failed, else the newest log."""
    stmt = (sa.select(files.c.url, files.c.job_id, jobs.c.status.label("job_status"))
            .select_from(files.join(jobs, jobs.c.id == files.c.job_id))
            .where(files.c.task_id == task_id, files.c.role == FileRole.LOG)
            .order_by((jobs.c.status == JobState.FAILED).desc(), files.c.id.desc()).limit(1))
    return (await conn.execute(stmt)).first()


async def output_files(conn: AsyncConnection, task_id: int, limit: int) -> list[Record]:
    stmt = (sa.select(files.c.id, files.c.lfn, files.c.size, files.c.events, files.c.status, files.c.job_id,
                      files.c.url)
            .where(files.c.task_id == task_id, files.c.role == FileRole.OUTPUT)
            .order_by(files.c.id.desc()).limit(limit))
    return list((await conn.execute(stmt)).all())


async def pilot_counts(conn: AsyncConnection) -> list[Record]:
    """(resource type, channel, state, pilots): every pilot in the table, counted by the database."""
    stmt = (sa.select(pilots.c.resource_type, pilots.c.channel, pilots.c.status, sa.func.count().label("n"))
            .group_by(pilots.c.resource_type, pilots.c.channel, pilots.c.status))
    return list((await conn.execute(stmt)).all())


async def live_pilot_page(conn: AsyncConnection, after: int | None, limit: int) -> list[Record]:
    """Live pilots, oldest registration first, with their jobs in flight."""
    in_flight = (sa.select(jobs.c.pilot_id, sa.func.count().label("jobs"))
                 .where(jobs.c.status.in_(JOBS_IN_FLIGHT))
                 .group_by(jobs.c.pilot_id).subquery())
    stmt = (sa.select(pilots, sa.func.coalesce(in_flight.c.jobs, 0).label("jobs_in_flight"))
            .select_from(pilots.outerjoin(in_flight, in_flight.c.pilot_id == pilots.c.id))
            .where(pilots.c.status.in_(sorted(PILOT_MACHINE.active))).order_by(pilots.c.id).limit(limit))
    if after is not None:
        stmt = stmt.where(pilots.c.id > after)
    return list((await conn.execute(stmt)).all())


async def load_over_time(conn: AsyncConnection, minutes: int) -> list[Record]:
    """The telemetry's load samples of the last ``minutes`` minutes, oldest first."""
    stmt = (sa.select(load_samples)
            .where(load_samples.c.sampled_at >= sa.func.now() - sa.func.make_interval(0, 0, 0, 0, 0, minutes))
            .order_by(load_samples.c.sampled_at, load_samples.c.resource_type))
    return list((await conn.execute(stmt)).all())


def _quality_run() -> Any:
    """A quality task's run: its metadata "run", else its id."""
    return sa.func.coalesce(tasks.c.metadata["run"].astext, sa.cast(tasks.c.id, sa.Text))


def _quality_outputs(task_type: str) -> Any:
    return (files.join(tasks, tasks.c.id == files.c.task_id), [
        tasks.c.task_type == task_type, files.c.role == FileRole.OUTPUT,
        files.c.status.in_([FileState.STAGED, FileState.REGISTERED])])


async def quality_runs(conn: AsyncConnection, task_type: str, runs: int) -> list[Record]:
    """The ``runs`` most recent runs with quality outputs: run, its quality tasks, how many outputs, the newest."""
    run = _quality_run().label("run")
    joined, where = _quality_outputs(task_type)
    stmt = (sa.select(run, sa.func.array_agg(sa.distinct(tasks.c.id)).label("task_ids"),
                      sa.func.count().label("outputs"), sa.func.max(files.c.created_at).label("newest_at"))
            .select_from(joined).where(*where).group_by(run)
            .order_by(sa.desc("newest_at")).limit(runs))
    return list((await conn.execute(stmt)).all())


async def quality_outputs_after(conn: AsyncConnection, task_type: str, run: str, after_id: int,
                                limit: int) -> list[Record]:
    """A run's quality outputs with a file id above ``after_id``, oldest first (the next ones to aggregate)."""
    joined, where = _quality_outputs(task_type)
    stmt = (sa.select(files.c.id, files.c.lfn, files.c.url, files.c.created_at, tasks.c.id.label("task_id"))
            .select_from(joined).where(*where, _quality_run() == run, files.c.id > after_id)
            .order_by(files.c.id).limit(limit))
    return list((await conn.execute(stmt)).all())

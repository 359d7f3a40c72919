"""Oversight: dead pilots and lost jobs, task commands, task completion, output registration in the DSM.

Sweeps run in every job-executor replica; the lost-job sweep takes a transaction-level advisory lock so one
replica does it at a time, and the DSM registrar takes its rows with SKIP LOCKED.
"""
from __future__ import annotations

import logging
from collections.abc import Callable

import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncEngine

from common.background import Loop
from common.broker import Topology
from common.db.models import files, jobs, tasks
from common.dsm import DsmClient, DsmError, DsmFile
from common.messages import TaskEvent, TaskEventType, wrap
from common.outbox import add_event
from common.settings import Settings
from common.states import JOB_MACHINE, TASK_MACHINE, FileState, JobState, TaskState, guarded_transition, guarded_update
from services.job_executor import queries
from services.job_executor.dispatch import log_dataset

log = logging.getLogger("wms.job_executor")
LOST_SWEEP_LOCK = 0x5BD_0001
REGISTER_BATCH = 5000
MIN_ROUND_S = 0.1


class Oversight:
    def __init__(self, engine: AsyncEngine, settings: Settings, dsm: DsmClient, topology: Topology,
                 on_committed: Callable[[], None]) -> None:
        self.engine, self.settings, self.dsm = engine, settings, dsm
        self.tasks_exchange = topology.exchange("tasks")
        self.on_committed = on_committed
        # Woken by every job that ends, but at most one round per MIN_ROUND_S: at hundreds of jobs per second a
        # round per job would cost more than the jobs.
        self.loop = Loop("oversight", self.run_once, settings.oversight_interval_s, min_pause_s=MIN_ROUND_S)

    def wake(self, _task_id: int | None = None) -> None:
        self.loop.wake()

    async def sweep_lost_jobs(self) -> int:
        """Declare silent pilots dead; their jobs, and jobs whose heartbeat stopped, are lost: retried or failed."""
        timeout = self.settings.pilot_timeout_s
        async with self.engine.begin() as conn:
            if not (await conn.execute(sa.select(sa.func.pg_try_advisory_xact_lock(LOST_SWEEP_LOCK)))).scalar():
                return 0
            dead = await queries.declare_dead_pilots(conn, timeout)
            condition = queries.lost_jobs_condition(dead, timeout)
            keys = await queries.in_flight_keys(conn, condition)
            if not keys:
                return 0
            message = "pilot stopped heartbeating"
            retried, failed = await queries.retry_or_fail(
                conn, [condition], self.settings.retry_backoff_s, self.settings.retry_backoff_max_s, "lost",
                message, None,
            )
            await queries.end_attempts(conn, keys, "lost", None, "lost", message)
        log.warning("jobs lost", extra={"dead_pilots": dead, "retried": len(retried), "failed": len(failed)})
        if failed:
            self.wake()
        return len(keys)

    async def apply_task_event(self, event_type: str, event: TaskEvent) -> None:
        """Carry a task command to its jobs: cancel, pause (ready -> held), resume, priority."""
        async with self.engine.begin() as conn:
            of_task = jobs.c.task_id == event.task_id  # one statement per command, however many jobs
            if event_type == TaskEventType.CANCELLED:
                # no RETURNING: a task of a million jobs is cancelled without shipping its ids around
                await conn.execute(guarded_update(jobs, JOB_MACHINE, of_task, JobState.CANCELLED,
                                                  {"finished_at": sa.func.now(), "error_category": "cancelled"}))
                await queries.cancel_task_leftovers(conn, event.task_id)
            elif event_type == TaskEventType.PAUSED:
                await guarded_transition(conn, jobs, JOB_MACHINE, of_task, JobState.HELD, only_from=[JobState.READY])
            elif event_type == TaskEventType.RESUMED:
                await guarded_transition(conn, jobs, JOB_MACHINE, of_task, JobState.READY, only_from=[JobState.HELD])
            if event_type in (TaskEventType.REPRIORITISED, TaskEventType.RESUMED):
                await conn.execute(
                    sa.update(jobs)
                    .where(jobs.c.task_id == event.task_id,
                           jobs.c.status.in_([JobState.DEFINED, JobState.READY, JobState.HELD]))
                    .values(priority=sa.select(tasks.c.priority).where(tasks.c.id == event.task_id).scalar_subquery())
                )
        self.wake()

    async def finalize_tasks(self) -> list[int]:
        """A running task whose dataset is fully in jobs and whose jobs all ended is done (no failed file) or
        finished (some failed)."""
        unfinished = sa.exists().where(
            jobs.c.task_id == tasks.c.id, jobs.c.status.in_(sorted(JOB_MACHINE.active))
        )
        any_failed = sa.exists().where(jobs.c.task_id == tasks.c.id, jobs.c.status == JobState.FAILED)
        candidates = sa.select(tasks.c.id, any_failed.label("any_failed")).where(
            tasks.c.status == TaskState.RUNNING,
            tasks.c.files_total.is_not(None),
            tasks.c.jobs_registered == tasks.c.jobs_total,
            ~unfinished,
        )
        ended: list[int] = []
        async with self.engine.begin() as conn:
            by_target: dict[TaskState, list[int]] = {TaskState.DONE: [], TaskState.FINISHED: []}
            for task_id, failed in (await conn.execute(candidates)).all():
                by_target[TaskState.FINISHED if failed else TaskState.DONE].append(task_id)
            for target, task_ids in by_target.items():
                if not task_ids:
                    continue
                rows = await guarded_transition(
                    conn, tasks, TASK_MACHINE, task_ids, target,
                    {"finished_at": sa.func.now(), "updated_at": sa.func.now()},
                    returning=(tasks.c.id, tasks.c.status, tasks.c.priority, tasks.c.resource_type),
                )
                event_type = TaskEventType.DONE if target == TaskState.DONE else TaskEventType.FINISHED
                for row in rows:
                    event = TaskEvent(task_id=row.id, status=row.status, priority=row.priority,
                                      resource_type=row.resource_type)
                    await add_event(conn, self.tasks_exchange, event_type, wrap(event_type, event))
                    ended.append(row.id)
        if ended:
            self.on_committed()
            log.info("tasks ended", extra={"task_ids": ended})
        return ended

    async def register_staged_files(self) -> int:
        """Register staged outputs and logs in the DSM (idempotent there), then mark them registered."""
        async with self.engine.begin() as conn:
            rows = (await conn.execute(
                sa.select(files.c.id, files.c.dataset, files.c.lfn, files.c.url, files.c.size, files.c.adler32,
                          files.c.events)
                .where(files.c.status == FileState.STAGED)
                .order_by(files.c.id)
                .limit(REGISTER_BATCH)
                .with_for_update(skip_locked=True)
            )).all()
            by_dataset: dict[str, list[sa.Row]] = {}
            for r in rows:
                by_dataset.setdefault(r.dataset, []).append(r)
            for dataset, group in by_dataset.items():
                entries = [DsmFile(lfn=r.lfn, url=r.url, size=r.size, adler32=r.adler32, events=r.events)
                           for r in group]
                try:
                    await self.dsm.register_files(dataset, entries)
                except DsmError as exc:
                    if exc.status != 404:
                        raise
                    await self.dsm.create_dataset(dataset)
                    await self.dsm.register_files(dataset, entries)
            if rows:
                await conn.execute(sa.update(files).where(files.c.id.in_([r.id for r in rows]))
                                   .values(status=FileState.REGISTERED, updated_at=sa.func.now()))
        return len(rows)

    async def close_output_datasets(self) -> list[int]:
        """Close the output (and log) dataset of each ended task once all its files are in the DSM."""
        staged = sa.exists().where(files.c.task_id == tasks.c.id, files.c.status == FileState.STAGED)
        async with self.engine.connect() as conn:
            ended = (await conn.execute(
                sa.select(tasks.c.id, tasks.c.output_dataset).where(
                    tasks.c.status.in_(sorted(TASK_MACHINE.terminal)), tasks.c.output_closed_at.is_(None), ~staged)
            )).all()
        closed = []
        for task_id, dataset in ended:
            for name in (dataset, log_dataset(dataset)):
                await self.dsm.create_dataset(name)  # idempotent: a task that never produced still closes one
                await self.dsm.close_dataset(name)
            async with self.engine.begin() as conn:
                await conn.execute(sa.update(tasks).where(tasks.c.id == task_id).values(output_closed_at=sa.func.now()))
            closed.append(task_id)
        return closed

    async def run_once(self) -> bool:
        await self.sweep_lost_jobs()
        await self.register_staged_files()
        await self.finalize_tasks()
        await self.close_output_datasets()
        return False

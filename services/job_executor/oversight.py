"""Oversight: dead pilots and lost jobs, task commands, task completion, output registration in the DSM.

Sweeps run in every job-executor replica; the lost-job sweep takes a transaction-level advisory lock so one
replica does it at a time, and the DSM registrar takes its rows with SKIP LOCKED.

Outages: heartbeats cannot arrive while this service, its database or its broker is down, so silence is
counted only from the end of the last outage this process saw (and from its start): a restart of the database,
the broker or the job-executor never declares live pilots dead. DSM errors stay with the files and tasks they
concern: an unavailable DSM defers those files (backoff), a refusal rejects them and fails their task with the
reason; neither stops any other task's registration, completion or dataset closure.
"""
from __future__ import annotations

import asyncio
import logging
import os
import time
from collections.abc import Callable

from common.background import Loop
from common.broker import Topology
from common.checksums import adler32_of_file
from common.db import ready_jobs, retention
from common.db.models import Record
from common.db.session import Database
from common.dsm import DsmClient, DsmError, DsmFile, DsmUnavailable
from common.messages import TaskEvent, TaskEventType, wrap
from common.outbox import add_event
from common.policies import job_state_for_task
from common.settings import Settings
from common.states import AttemptOutcome, JobState, TaskState
from common.storage import UnsafeStoragePath, open_beneath
from services.job_executor import errors, queries
from services.job_executor.attempts import log_dataset
from services.job_executor.retries import lose_jobs, retry_or_fail, retry_policy

log = logging.getLogger("wms.job_executor")
LOST_SWEEP_LOCK = 0x5BD_0001
HOUSEKEEPING_LOCK = 0x5BD_0002
WALL_TIME_SWEEP_LOCK = 0x5BD_0003
ERROR_TEXT_MAX = 2000
REGISTER_BATCH = 5000
MIN_ROUND_S = 0.1


# The move that brings a task's queued jobs to the state its task calls for (common.policies): (only from).
QUEUED_JOB_MOVES: dict[JobState, list[JobState]] = {JobState.HELD: [JobState.READY], JobState.READY: [JobState.HELD]}
CLOSE_RETRY_S = 5.0


def verify_on_storage(rows: list[Record], storage_root: str) -> dict[int, str]:
    """File id -> why it is refused, for staged files under a local storage root: never skipped, each opened
    beneath the root without following a link anywhere in its path (common.storage), and refused unless it is a
    regular single-link file whose size and adler32 are what the pilot reported. Files of another storage (not
    file://) are left to the DSM, as is everything when this process does not see the storage root. Blocking:
    run it in a worker thread."""
    if not os.path.isdir(storage_root):
        return {}
    refused: dict[int, str] = {}
    for r in rows:
        if not r.url.startswith("file://"):
            continue
        try:
            with open_beneath(r.url, storage_root) as (fd, info):
                if info.st_size != r.size:
                    refused[r.id] = f"{r.url} has {info.st_size} bytes on storage, the pilot reported {r.size}"
                elif (checksum := adler32_of_file(fd)) != r.adler32:
                    refused[r.id] = f"{r.url} has adler32 {checksum} on storage, the pilot reported {r.adler32}"
        except UnsafeStoragePath as exc:
            refused[r.id] = f"{r.url} cannot be read on storage: {exc}"
        except OSError as exc:
            refused[r.id] = f"{r.url} cannot be read on storage: {exc.strerror}"
    return refused


class Oversight:
    def __init__(self, engine: Database, settings: Settings, dsm: DsmClient, topology: Topology,
                 on_committed: Callable[[], None], broker_ready: Callable[[], bool] = lambda: True) -> None:
        self.engine, self.settings, self.dsm = engine, settings, dsm
        self.more_tasks_due = False  # the last housekeeping round left settled tasks past retention
        self.tasks_exchange = topology.exchange("tasks")
        self.on_committed = on_committed
        self.broker_ready = broker_ready
        self.retry_policy = retry_policy(settings)
        # Heartbeats are judged only after a full pilot timeout without outage (see the module's docstring).
        self.heard_since = time.monotonic()
        self._close_not_before: dict[int, float] = {}
        # Woken by every job that ends, but at most one round per MIN_ROUND_S: at hundreds of jobs per second a
        # round per job would cost more than the jobs.
        self.loop = Loop("oversight", self.run_once, settings.oversight_interval_s, min_pause_s=MIN_ROUND_S)

    def wake(self, _task_id: int | None = None) -> None:
        self.loop.wake()

    def outage(self) -> None:
        """Something that carries heartbeats was down just now: silence before this is nobody's fault."""
        self.heard_since = time.monotonic()

    async def sweep_lost_jobs(self) -> int:
        """Declare silent pilots dead; their jobs, and jobs whose heartbeat stopped, are lost: retried (within
        the infrastructure-loss budget) or failed."""
        timeout = self.settings.pilot_timeout_s
        if not self.broker_ready():
            self.outage()
        if time.monotonic() - self.heard_since < timeout:
            return 0
        async with self.engine.begin() as conn:
            if not await queries.try_lead(conn, LOST_SWEEP_LOCK):
                return 0
            dead = await queries.declare_dead_pilots(conn, timeout)
            in_flight = await queries.lost_in_flight(conn, timeout)
            if not in_flight:
                return 0
            lost = await lose_jobs(conn, self.settings, in_flight, self.retry_policy, "pilot stopped heartbeating")
        log.warning("jobs lost", extra={"dead_pilots": dead, "retried": len(lost.retried),
                                        "failed": len(lost.failed)})
        await lost.remove_staged(self.settings)
        if lost.failed:
            self.wake()
        return len(in_flight)

    async def sweep_overrun_jobs(self) -> int:
        """Jobs in flight past their wall time plus grace: a pilot that does not enforce it (broken, hostile, or
        frozen with a live payload) is overruled; the job is retried or failed as a timeout."""
        async with self.engine.begin() as conn:
            if not await queries.try_lead(conn, WALL_TIME_SWEEP_LOCK):
                return 0
            overrun = await queries.overrun_in_flight(conn, self.settings.job_wall_time_s,
                                                      self.settings.wall_time_grace_s, self.settings.pilot_prefetch)
            if not overrun:
                return 0
            message = "wall time exceeded (enforced by the job-executor)"
            await retry_or_fail(conn, overrun, self.retry_policy, "timeout", message, None)
            errors.attempts_failed("timeout", len(overrun))
            await queries.end_attempts(conn, [(j.id, j.attempt) for j in overrun], AttemptOutcome.FAILED, None,
                                       "timeout", message)
        log.warning("jobs past their wall time", extra={"job_ids": [j.id for j in overrun]})
        self.wake()
        return len(overrun)

    async def apply_task_event(self, event_type: str, event: TaskEvent) -> None:
        """Carry a task command to its jobs by reconciling them with the task's current state, whatever the
        event says: cancelled -> jobs cancelled; paused -> ready jobs held; running -> held jobs ready; and the
        jobs' priority follows the task's. The task row is locked meanwhile, so commands applied concurrently
        (a quick pause and resume, delivered in any order) end with the jobs matching the task's final state."""
        async with self.engine.begin() as conn:
            task = await queries.lock_task(conn, event.task_id)
            if task is None:
                return
            target = job_state_for_task(task.status)
            if target == JobState.CANCELLED:
                await queries.cancel_task_jobs(conn, event.task_id)
            else:
                await queries.move_queued_jobs(conn, event.task_id, target, QUEUED_JOB_MOVES[target])
                await queries.set_queued_jobs_priority(conn, event.task_id, task.priority)
                if target == JobState.READY:
                    await ready_jobs.announce(conn)
        self.wake()

    async def finalize_tasks(self) -> list[int]:
        """A running task whose dataset is fully in jobs and whose jobs all ended is done (no failed file) or
        finished (some failed), when at least one of its jobs finished; a task that processed nothing (no input
        files, or no job finished) fails and says why, as does one whose outputs the DSM refused: a WFMS reading
        only the status never takes nothing for success."""
        ended: list[int] = []
        async with self.engine.begin() as conn:
            by_target: dict[TaskState, list[int]] = {TaskState.DONE: [], TaskState.FINISHED: [],
                                                     TaskState.FAILED: []}
            errors: dict[int, str] = {}
            for task in await queries.tasks_ready_to_end(conn):
                target, error = task_verdict(task.files_total, task.any_finished, task.any_failed, task.any_rejected,
                                             task.input_dataset)
                by_target[target].append(task.id)
                if error is not None:
                    errors[task.id] = error
            await queries.set_task_errors(conn, errors)
            for target, task_ids in by_target.items():
                if not task_ids:
                    continue
                rows = await queries.end_tasks(conn, task_ids, target)
                event_type = {TaskState.DONE: TaskEventType.DONE, TaskState.FINISHED: TaskEventType.FINISHED,
                              TaskState.FAILED: TaskEventType.FAILED}[target]
                for row in rows:
                    event = TaskEvent.of(row)
                    await add_event(conn, self.tasks_exchange, event_type, wrap(event_type, event))
                    ended.append(row.id)
        if ended:
            self.on_committed()
            log.info("tasks ended", extra={"task_ids": ended})
        return ended

    async def register_staged_files(self) -> int:
        """Register due staged outputs and logs in the DSM (idempotent there), one dataset at a time; what the
        DSM could not take now waits its backoff, what it refused is rejected (and fails its task)."""
        async with self.engine.begin() as conn:
            rows = await queries.staged_files_due(conn, REGISTER_BATCH)
            # what a pilot said is checked against the storage before the DSM is told
            mismatches = await asyncio.to_thread(verify_on_storage, rows, self.settings.storage_root)
            rejected: list[tuple[int, int, str]] = [(r.id, r.task_id, mismatches[r.id]) for r in rows
                                                    if r.id in mismatches]
            by_dataset: dict[str, list[Record]] = {}
            for r in rows:
                if r.id not in mismatches:
                    by_dataset.setdefault(r.dataset, []).append(r)
            registered: list[int] = []
            deferred: dict[str, list[int]] = {}
            for dataset, group in by_dataset.items():
                try:
                    await self._register(dataset, group)
                    registered += [r.id for r in group]
                except DsmUnavailable as exc:
                    deferred.setdefault(str(exc), []).extend(r.id for r in group)
                except DsmError:
                    # refused: find out file by file which ones (the others still go in)
                    for r in group:
                        try:
                            await self._register(dataset, [r])
                            registered.append(r.id)
                        except DsmUnavailable as exc:
                            deferred.setdefault(str(exc), []).append(r.id)
                        except DsmError as exc:
                            rejected.append((r.id, r.task_id, f"{dataset}/{r.lfn}: {exc.detail}"))
            await queries.mark_files_registered(conn, registered)
            for error, ids in deferred.items():
                await queries.defer_registration(conn, ids, error[:ERROR_TEXT_MAX], self.settings.dsm_retry_max_s)
            await queries.reject_files(conn, rejected)
        if deferred:
            log.warning("DSM unavailable: registrations deferred",
                        extra={"files": sum(map(len, deferred.values())), "error": next(iter(deferred))})
        if rejected:
            log.error("outputs refused (by the DSM, or not as reported on storage)", extra={"files": len(rejected),
                                                    "task_ids": sorted({t for _, t, _ in rejected}),
                                                    "first": rejected[0][2]})
        return len(rows)

    async def _register(self, dataset: str, group: list[Record]) -> None:
        entries = [DsmFile(lfn=r.lfn, url=r.url, size=r.size, adler32=r.adler32, events=r.events) for r in group]
        try:
            await self.dsm.register_files(dataset, entries)
        except DsmError as exc:
            if exc.status != 404:
                raise
            await self.dsm.create_dataset(dataset)
            await self.dsm.register_files(dataset, entries)

    async def close_output_datasets(self) -> list[int]:
        """Close the output (and log) dataset of each ended task once all its files are in the DSM. One task's
        DSM trouble is retried later and never keeps another task's datasets open."""
        async with self.engine.connect() as conn:
            ended = await queries.ended_tasks_with_open_outputs(conn)
        closed, now = [], time.monotonic()
        for task_id, dataset, started in ended:
            if self._close_not_before.get(task_id, 0.0) > now:
                continue
            try:
                for name in (dataset, log_dataset(dataset)):
                    if started:
                        # idempotent: a task that ran and produced nothing still closes one (a later stage
                        # reading it ends instead of waiting)
                        await self.dsm.create_dataset(name)
                    elif (found := await self.dsm.dataset(name)) is None or found.status == "closed":
                        # a task that never started (its input never came, it was cancelled first) leaves no
                        # dataset behind: a corrected resubmission may write this name
                        continue
                    await self.dsm.close_dataset(name)
            except DsmError as exc:
                self._close_not_before[task_id] = now + CLOSE_RETRY_S
                log.warning("closing a task's output dataset failed; retried later",
                            extra={"task_id": task_id, "dataset": dataset, "error": str(exc)})
                continue
            self._close_not_before.pop(task_id, None)
            async with self.engine.begin() as conn:
                await queries.mark_output_closed(conn, task_id)
            closed.append(task_id)
        return closed

    async def purge_old_rows(self) -> dict[str, int]:
        """Housekeeping: consumed message ids, load samples, ended pilots and (with WMS_TASK_RETENTION_S) settled
        tasks past their retention; ``more_tasks_due`` says whether a batch of tasks was left for the next round."""
        async with self.engine.begin() as conn:
            if not await queries.try_lead(conn, HOUSEKEEPING_LOCK):
                return {}
            ended = await retention.purge_ended(conn, self.settings.task_retention_s or None,
                                                self.settings.pilot_retention_s)
            purged = {
                "consumed_messages": await queries.purge_consumed_messages(
                    conn, self.settings.consumed_message_retention_s),
                "load_samples": await queries.purge_load_samples(conn, self.settings.load_sample_retention_s),
                **ended.counts(),
            }
        self.more_tasks_due = ended.more
        if any(purged.values()):
            log.info("old rows purged", extra=purged)
        return purged

    async def housekeep(self) -> bool:
        """A housekeeping round for the loop: busy (another round at once) while tasks past retention remain."""
        await self.purge_old_rows()
        return self.more_tasks_due

    async def run_once(self) -> bool:
        try:
            await self.sweep_lost_jobs()
            await self.sweep_overrun_jobs()
            await self.register_staged_files()
            await self.finalize_tasks()
        except Exception:
            self.outage()  # the database (most likely) failed us: judge no heartbeat from before its return
            raise
        await self.close_output_datasets()
        return False


def task_verdict(files_total: int, any_finished: bool, any_failed: bool, any_rejected: bool,
                 input_dataset: str) -> tuple[TaskState, str | None]:
    """The final state of a task whose jobs all ended, and the reason when it is a failure of its own."""
    if any_rejected:
        return TaskState.FAILED, None  # the refusal was recorded as the task's error when it happened
    if files_total == 0:
        return TaskState.FAILED, f"no input files: input dataset {input_dataset} was closed empty; nothing processed"
    if not any_finished:
        return TaskState.FAILED, ("no job finished: every job failed or was cancelled, nothing was produced (the "
                                  "report's failures say why)")
    return (TaskState.FINISHED if any_failed else TaskState.DONE), None

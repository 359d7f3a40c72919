"""Job generation: one chunk of one task at a time, tasks chosen by stride scheduling, within the backlog bound.

A chunk is read from the DSM after the task's cursor, split by the task's rule, and recorded in one transaction:
the cursor's compare-and-set on the task row and the chunk message in the outbox. A crash before the commit
loses nothing (the files are read again); after it, the outbox delivers the chunk (at least once; the
job-manager dedupes by message id). Hence every file ends in exactly one job.
"""
from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass

from common.background import Loop
from common.broker import Topology
from common.db.models import Record
from common.db.session import Database
from common.dsm import DsmClient, DsmError, DsmFileEntry, DsmUnavailable, FilePage
from common.failures import backoff_s
from common.messages import JOB_CHUNK, JobChunk, TaskEvent, TaskEventType, wrap
from common.outbox import add_event
from common.settings import Settings
from common.states import TaskState
from services.task_executor import queries
from services.task_executor.fairshare import StrideScheduler
from services.task_executor.loading import backlog_bounds, headroom
from services.task_executor.splitter import InputFile, SplitError, split

log = logging.getLogger("wms.task_executor")

BACKLOG_RECOUNT_S = 1.0
ERROR_TEXT_MAX = 2000  # a task's error message is kept to this many characters
BACKLOG_RECOUNT_WHEN_FULL_S = 0.2  # a full resource type is re-counted sooner, to notice dispatches


@dataclass(frozen=True)
class ChunkResult:
    jobs: int
    files: int
    waiting_for_files: bool  # the dataset is open and has no new complete job yet


class ChunkGenerator:
    def __init__(self, engine: Database, dsm: DsmClient, topology: Topology, settings: Settings,
                 on_committed: Callable[[], None]) -> None:
        self.engine, self.dsm, self.settings = engine, dsm, settings
        self.tasks_exchange = topology.exchange("tasks")
        self.jobs_exchange = topology.exchange("jobs")
        self.on_committed = on_committed
        # The next page of the task just served, read while the loop decides what to do next: the DSM's time
        # overlaps ours. One slot; a page fetched for another task or cursor is simply dropped.
        self._prefetched: tuple[tuple[int, int, int], asyncio.Task[FilePage]] | None = None

    def _prefetch(self, task_id: int, dataset: str, after: int, limit: int) -> None:
        self._drop_prefetch()
        fetch = asyncio.create_task(self.dsm.list_files(dataset, after=after, limit=limit))
        self._prefetched = ((task_id, after, limit), fetch)

    def _drop_prefetch(self) -> None:
        if self._prefetched is not None:
            self._prefetched[1].cancel()
            self._prefetched[1].add_done_callback(_consume_result)
            self._prefetched = None

    async def _page(self, task_id: int, dataset: str, after: int, limit: int) -> FilePage:
        if self._prefetched is not None and self._prefetched[0] == (task_id, after, limit):
            fetch, self._prefetched = self._prefetched[1], None
            return await fetch
        self._drop_prefetch()
        return await self.dsm.list_files(dataset, after=after, limit=limit)

    def close(self) -> None:
        self._drop_prefetch()

    async def generate(self, task: Record, max_jobs: int) -> ChunkResult:
        """Generate at most ``max_jobs`` jobs of ``task`` from its next stretch of dataset."""
        limit = self.settings.chunk_files
        if task.split_by == "files":
            limit = min(limit, max_jobs * task.split_size)
        try:
            page = await self._page(task.id, task.input_dataset, task.dsm_cursor, limit)
        except DsmError as exc:
            if exc.status != 404:
                raise
            if task.age_s < self.settings.dataset_wait_s:
                return ChunkResult(0, 0, True)  # not there yet: wait for it
            await self.fail(task.id, f"input dataset {task.input_dataset} not found in the DSM after "
                                     f"{self.settings.dataset_wait_s:.0f} s")
            return ChunkResult(0, 0, False)
        if task.status == TaskState.REGISTERED:
            # The task starts: its output dataset exists (open) from now on, so a task reading it can follow it.
            await self.dsm.create_dataset(task.output_dataset)
        entries = page.items
        last_seq = entries[-1].seq if entries else task.dsm_cursor
        final = page.status == "closed" and last_seq >= page.n_files
        try:
            groups, consumed = split([_input(e) for e in entries], task.split_by, task.split_size, final)
        except SplitError as exc:
            await self.fail(task.id, str(exc))
            return ChunkResult(0, 0, False)
        if consumed == 0 and len(entries) == limit and limit == self.settings.chunk_files:
            # one job would need more files than a chunk reads: a job never holds more than chunk_files files
            groups, consumed = [[_input(e) for e in entries]], len(entries)
        if len(groups) > max_jobs:
            groups = groups[:max_jobs]
            consumed = sum(len(g) for g in groups)
            final = False
        complete = final and consumed == len(entries)
        if consumed == 0 and not complete:
            return ChunkResult(0, 0, True)

        new_cursor = entries[consumed - 1].seq if consumed else task.dsm_cursor
        async with self.engine.begin() as conn:
            row = await queries.advance_cursor(
                conn, task.id, task.dsm_cursor, new_cursor, consumed, len(groups), complete
            )
            if row is None:
                return ChunkResult(0, 0, False)  # cancelled, paused or moved meanwhile: drop this chunk
            if groups:
                taken = entries[:consumed]
                chunk = JobChunk(
                    task_id=task.id,
                    dataset=task.input_dataset,
                    resource_type=task.resource_type,
                    priority=row.priority,
                    cursor_after=new_cursor,
                    files_per_job=[len(g) for g in groups],
                    lfns=[e.lfn for e in taken],
                    urls=[e.url for e in taken],
                    sizes=[e.size for e in taken],
                    adler32s=[e.adler32 for e in taken],
                    events=[e.events for e in taken],
                )
                await add_event(conn, self.jobs_exchange, JOB_CHUNK, wrap(JOB_CHUNK, chunk))
        self.on_committed()
        if not complete:
            self._prefetch(task.id, task.input_dataset, new_cursor, limit)
        log.info("chunk generated", extra={"task_id": task.id, "jobs": len(groups), "files": consumed,
                                           "cursor": new_cursor, "generation_complete": complete})
        return ChunkResult(len(groups), consumed, False)

    async def fail(self, task_id: int, error: str) -> None:
        async with self.engine.begin() as conn:
            for row in await queries.fail_task(conn, task_id, error[:ERROR_TEXT_MAX]):
                event = TaskEvent.of(row)
                await add_event(conn, self.tasks_exchange, TaskEventType.FAILED, wrap(TaskEventType.FAILED, event))
        self.on_committed()
        log.warning("task failed", extra={"task_id": task_id, "error": error})


def _consume_result(task: asyncio.Task[FilePage]) -> None:
    if not task.cancelled():
        task.exception()  # a failed prefetch nobody awaits is not an error worth a warning


def _input(e: DsmFileEntry) -> InputFile:
    return InputFile(lfn=e.lfn, size=e.size, events=e.events)


class GenerationLoop:
    """Serves the generating tasks one chunk at a time, in proportion to their priorities."""

    def __init__(self, engine: Database, generator: ChunkGenerator, settings: Settings) -> None:
        self.engine, self.generator, self.settings = engine, generator, settings
        self.scheduler = StrideScheduler()
        self._idle_until: dict[int, float] = {}  # tasks waiting for new files in an open dataset, or for the DSM
        self._dsm_failures: dict[int, int] = {}
        self.loop = Loop("generation", self.run_once, min(settings.dsm_poll_interval_s, 1.0))
        # Backlog as last counted, plus the jobs generated since: an upper bound of the true backlog (dispatch
        # only lowers it), so the bound holds while the count is refreshed about once a second, not per chunk.
        self._counted: dict[str, int] = {}
        self._counted_at = -1e9
        self._generated_since: dict[str, int] = {}
        self._was_full = False

    def wake(self) -> None:
        """A task changed (registered, resumed, reprioritised...): look again now."""
        self._idle_until.clear()
        self.loop.wake()

    async def run_once(self) -> bool:
        """Generate one chunk if any task may have one; False when there was nothing to do."""
        now = time.monotonic()
        async with self.engine.connect() as conn:
            candidates = await queries.tasks_to_generate(conn)
            slots = await queries.live_slots_by_resource(conn, self.settings.pilot_timeout_s)
            bounds = backlog_bounds(slots, self.settings.backlog_floor, self.settings.backlog_per_slot)
            age = now - self._counted_at
            if age > BACKLOG_RECOUNT_S or (self._was_full and age > BACKLOG_RECOUNT_WHEN_FULL_S):
                self._counted = await queries.backlog_by_resource(conn, bounds)
                self._counted_at, self._generated_since = now, {}
        backlog = {rt: self._counted.get(rt, 0) + self._generated_since.get(rt, 0) for rt in bounds}
        room = headroom(bounds, backlog)
        self._was_full = any(room[t.resource_type] == 0 for t in candidates)
        self.scheduler.sync({t.id: t.priority for t in candidates})
        eligible = [t.id for t in candidates if room[t.resource_type] > 0 and self._idle_until.get(t.id, 0) <= now]
        chosen = self.scheduler.pick(eligible)
        if chosen is None:
            return False
        task = next(t for t in candidates if t.id == chosen)
        try:
            result = await self.generator.generate(task, room[task.resource_type])
        except DsmUnavailable as exc:
            # this task's dataset cannot be read now: it waits (growing), the other tasks go on
            failures = self._dsm_failures[task.id] = self._dsm_failures.get(task.id, 0) + 1
            delay = backoff_s(failures, self.settings.dsm_poll_interval_s, self.settings.dsm_retry_max_s)
            self._idle_until[task.id] = now + delay
            log.warning("DSM unavailable for a task; it waits", extra={
                "task_id": task.id, "error": str(exc), "retry_in_s": delay})
            return True
        self._dsm_failures.pop(task.id, None)
        if result.waiting_for_files:
            self._idle_until[task.id] = now + self.settings.dsm_poll_interval_s
        self.scheduler.charge(task.id, result.jobs)
        rt = task.resource_type
        self._generated_since[rt] = self._generated_since.get(rt, 0) + result.jobs
        return True

"""Registration of a job chunk: one transaction, idempotent under redelivery.

The chunk's jobs and input files are COPYed in, created directly in the initial state their task calls for:
'ready' (the job-executor claims ready jobs from PostgreSQL), 'held' (task paused) or 'cancelled' (task
cancelled or ended). No file is ever lost and none is registered twice.
"""
from __future__ import annotations

import datetime as dt
from itertools import repeat

from common.db import ready_jobs
from common.db.session import Database, retry_transient
from common.messages import BadMessage, Envelope, JobChunk
from common.policies import fair_keys, job_state_for_task
from common.states import JOB_MACHINE, FileState, JobState
from services.job_manager import queries

CONSUMER = "job-manager.register-chunk"



class ChunkRegistrar:
    def __init__(self, engine: Database) -> None:
        self.engine = engine

    async def register(self, envelope: Envelope, chunk: JobChunk) -> list[int]:
        """Register the chunk; returns its job ids, or [] if this message was registered before.

        A chunk repeating a file already in a job of its task can never be registered (the unique index
        refuses it, and the whole transaction with it): it is a BadMessage, dead-lettered for a human to see.
        """
        try:
            return await retry_transient(lambda: self._register(envelope, chunk))
        except queries.DuplicateInputFile as exc:
            raise BadMessage(f"chunk for task {chunk.task_id} repeats files already in its jobs: {exc}") from exc

    async def _register(self, envelope: Envelope, chunk: JobChunk) -> list[int]:
        async with self.engine.begin() as conn:
            if not await queries.claim_message(conn, CONSUMER, envelope.message_id):
                return []
            n_jobs = len(chunk.files_per_job)
            task = await queries.count_registered(conn, chunk.task_id, n_jobs, chunk.resource_type)
            if task is None:
                raise BadMessage(f"chunk for unknown task {chunk.task_id}")
            # where a chunk's jobs go, by the state of their task at registration
            target = JOB_MACHINE.check_initial(job_state_for_task(task.status))
            queued_at = dt.datetime.now(dt.UTC) if target == JobState.READY else None
            file_state = FileState.CANCELLED if target == JobState.CANCELLED else FileState.PENDING
            job_ids = await queries.allocate_job_ids(conn, n_jobs)
            if target == JobState.READY:
                # delivered at commit: as many waiting claims as these jobs need wake now
                await ready_jobs.announce(conn, ready_jobs.Ready(chunk.resource_type, n_jobs))
            job_of_file = [job_id for job_id, n in zip(job_ids, chunk.files_per_job, strict=True) for _ in range(n)]
            await queries.copy_rows(
                conn,
                "job_dat",
                queries.JOB_COLUMNS,
                [
                    (job_id, chunk.task_id, str(target), chunk.resource_type, task.priority, files.stop - files.start,
                     sum(chunk.sizes[files]), _total_events(chunk.events[files]), queued_at, key)
                    for job_id, files, key in zip(job_ids, chunk.job_slices(),
                                                  fair_keys(task.start, task.priority, n_jobs), strict=True)
                ],
            )
            await queries.copy_rows(
                conn,
                "file_dat",
                queries.FILE_COLUMNS,
                list(zip(
                    chunk.lfns, repeat(chunk.dataset), repeat(chunk.task_id), job_of_file, repeat("input"),
                    chunk.urls, chunk.sizes, chunk.adler32s, chunk.events, repeat(file_state.value),
                )),
            )
        return job_ids


def _total_events(events: list[int | None]) -> int | None:
    return None if any(e is None for e in events) else sum(events)  # type: ignore[arg-type]

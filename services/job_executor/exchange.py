"""Protocol 2: one exchange per pilot cycle (docs/dispatch.md).

An exchange applies the reports of the pilot's jobs (one statement per kind: running, finished; failures, the
rare case, one by one), beats the jobs it has in flight (those it no longer holds come back as abort orders),
and claims up to ``want`` jobs that fit what the pilot has free (slots, cores, memory, GPUs; computed here from
the jobs it holds, never taken from the pilot), all in one transaction. When nothing is ready and the pilot is
willing to wait, the claim waits (long poll) until the ready jobs change, then tries once more.
"""
from __future__ import annotations

import asyncio
import collections
import contextlib
import dataclasses
import logging
import uuid
from collections.abc import Awaitable, Callable
from typing import Any

import asyncpg

from common.db import ready_jobs
from common.db.models import Record
from common.db.session import Database, Transaction
from common.policies import resource_types_served
from common.states import AttemptOutcome, FileRole, JobState, PilotState
from services.job_executor import errors, queries
from services.job_executor import exchange_queries as hot
from services.job_executor.attempts import (
    ReportInvalid,
    check_staged_files,
    job_spec,
    staged_file_row,
    storage_prefix,
)
from services.job_executor.exchange_codec import (
    AbortOrder,
    ExchangeReply,
    ExchangeReport,
    ExchangeRequest,
    JobBeat,
    JobSpec,
    ReportOutcome,
)
from services.job_executor.pilot_sessions import PilotEnded, PilotSessions
from services.job_executor.retries import lose_jobs, retry_or_fail, retry_policy

log = logging.getLogger("wms.job_executor.exchange")
# A held job's heartbeat is rewritten only when older than this fraction of the pilot timeout (beats off the hot
# path: an exchange of 8 jobs writes what changed, not 8 heartbeats).
BEAT_FRESH_FRACTION = 0.25
READY_POLL_S = 0.2  # how often waiting claims look for new ready jobs (one query for all of them)
TASK_CACHE_LIMIT = 10_000


class ReadyWatcher:
    """Wakes long-polling claims when jobs become ready. An announcement (common.db.ready_jobs) says how many jobs of
    which resource type: it wakes just enough of the claims waiting for that type, longest waiting first, so a
    chunk of 14 jobs wakes two 8-slot pilots, not a hundred claims that would queue for the database. While
    anybody waits, one query every READY_POLL_S for all of them finds what no announcement told (jobs out of their
    retry backoff, resumed tasks, announcements lost with a connection) and wakes everybody. Nobody waiting, no
    query."""

    def __init__(self, engine: Database) -> None:
        self.engine = engine
        self._waiting: collections.deque[_Waiter] = collections.deque()
        self._loop: asyncio.Task[None] | None = None
        self.listener = ready_jobs.ReadyListener(engine, self._announced)

    def start(self) -> None:
        self.listener.start()

    def _announced(self, ready: ready_jobs.Ready | None) -> None:
        if ready is None:
            self._wake_all()
            return
        budget = ready.jobs
        for waiter in list(self._waiting):
            if budget <= 0:
                break
            if ready.resource_type in waiter.serves and not waiter.woken.done():
                waiter.woken.set_result(None)
                self._waiting.remove(waiter)
                budget -= waiter.want

    def _wake_all(self) -> None:
        while self._waiting:
            woken = self._waiting.popleft().woken
            if not woken.done():
                woken.set_result(None)

    async def wait(self, timeout_s: float, serves: tuple[str, ...] = ("cpu",), want: int = 1) -> bool:
        """True if jobs of a type in ``serves`` may have become ready within ``timeout_s``."""
        waiter = _Waiter(asyncio.get_running_loop().create_future(), serves, want)
        self._waiting.append(waiter)
        if self._loop is None or self._loop.done():
            self._loop = asyncio.create_task(self._watch())
        try:
            await asyncio.wait_for(asyncio.shield(waiter.woken), timeout_s)
            return True
        except TimeoutError:
            return False
        finally:
            with contextlib.suppress(ValueError):
                self._waiting.remove(waiter)

    async def _watch(self) -> None:
        seen: Any = None
        while self._waiting:
            try:
                async with self.engine.connect() as conn:
                    now = await queries.ready_generation(conn)
            except Exception as exc:  # an outage: waiters time out and their pilots retry
                log.warning("ready watcher cannot read", extra={"error": type(exc).__name__})
                now = seen
            if seen is not None and now != seen:
                self._wake_all()
            seen = now
            await asyncio.sleep(READY_POLL_S)

    async def close(self) -> None:
        await self.listener.close()
        if self._loop is not None:
            self._loop.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._loop


@dataclasses.dataclass(eq=False)
class _Waiter:
    woken: asyncio.Future[None]
    serves: tuple[str, ...]
    want: int


class Exchanges:
    def __init__(self, sessions: PilotSessions, watcher: ReadyWatcher, on_job_ended: Callable[[int], None]) -> None:
        self.sessions, self.watcher = sessions, watcher
        self.engine, self.settings = sessions.engine, sessions.settings
        self.retry_policy = retry_policy(self.settings)
        # Called with the task id when a job reached a terminal state: the task may be complete.
        self.on_job_ended = on_job_ended
        self._tasks: dict[int, Record] = {}  # task id -> (payload, output dataset): fixed at registration

    async def exchange(self, pilot_id: int, session: str | None, request: ExchangeRequest,
                       caller_gone: Callable[[], Awaitable[bool]] | None = None) -> ExchangeReply:
        """``caller_gone``: whether the pilot has hung up (a closed connection); a claim that waited is not made
        for a pilot that has gone (its jobs would wait for its heartbeat timeout)."""
        ended_tasks: set[int] = set()
        async with self.engine.begin() as conn:
            db = await hot.hot_transaction(conn)  # the hot statements, on asyncpg directly
            pilot = self.sessions.check(pilot_id, session, await hot.pilot(db, pilot_id))
            outcomes = await self._apply_reports(conn, db, pilot_id, request.reports, ended_tasks)
            # a job this exchange's own report ended is not beaten (nor aborted): the pilot sent its last beat
            # with its final report
            ended = {(o.job_id, o.attempt) for o in outcomes if o.status == 200} & {
                (r.job_id, r.attempt) for r in request.reports if r.state in ("finished", "failed")}
            abort = await self._beat(db, pilot_id,
                                     [b for b in request.running if (b.job_id, b.attempt) not in ended])
            await self._record_usage(db, pilot_id, request, outcomes)
            specs = await self._claim(conn, db, pilot, request.want, request.request_id)
            await hot.set_pilot_load(db, pilot_id)  # and its heartbeat
        for task_id in ended_tasks:
            self.on_job_ended(task_id)
        # a waiting pilot is not heard meanwhile: never longer than its heartbeat interval. A wake-up that finds
        # nothing (another pilot was faster, a listener that just reconnected wakes everybody) waits on.
        clock = asyncio.get_running_loop()
        deadline = clock.time() + min(request.wait_s, self.settings.heartbeat_interval_s)
        while not specs and request.want and (left := deadline - clock.time()) > 0:
            if not await self.watcher.wait(left, resource_types_served(pilot.resource_type), request.want):
                break
            if caller_gone is not None and await caller_gone():
                log.info("a waiting claim's pilot has gone: nothing claimed", extra={"pilot_id": pilot_id})
                break
            async with self.engine.begin() as conn:
                db = await hot.hot_transaction(conn)
                pilot = self.sessions.check(pilot_id, session, await hot.pilot(db, pilot_id))
                specs = await self._claim(conn, db, pilot, request.want, request.request_id)
                await hot.set_pilot_load(db, pilot_id)
        return ExchangeReply(reports=outcomes, abort=abort, jobs=specs)

    async def give_back(self, pilot_id: int, jobs: list[tuple[int, int]], reason: str) -> int:
        """Jobs (id, attempt) an answer carried that never reached its pilot: ready again at once (their attempts
        end as lost, counted against no budget), and waiting claims are told. The number given back."""
        async with self.engine.begin() as conn:
            back = await hot.give_back(await hot.hot_transaction(conn), pilot_id, jobs, reason)
            for row in back:
                await ready_jobs.announce(conn, ready_jobs.Ready(row.resource_type, row.jobs))
        given = sum(int(row.jobs) for row in back)
        if given:
            log.warning("jobs given back: their answer could not be delivered", extra={
                "pilot_id": pilot_id, "jobs": given, "reason": reason})
        return given

    async def pilot_lost(self, pilot_id: int, session: str | None, reason: str) -> None:
        """The pilot application died (its daemon says so, with the session it left): the pilot is dead and its
        jobs are lost at once (retried within the infrastructure budget), not after its heartbeat timeout.
        Saying it again changes nothing."""
        async with self.engine.begin() as conn:
            try:
                await self.sessions.authenticate(conn, pilot_id, session)
            except PilotEnded:
                return  # dead or exited already: what it held was dealt with then
            await queries.end_pilot(conn, pilot_id, PilotState.DEAD)
            in_flight = await queries.in_flight_of_pilot(conn, pilot_id)
            lost = await lose_jobs(conn, self.settings, in_flight, self.retry_policy,
                                   f"the pilot application died, said its daemon: {reason}")
        log.warning("pilot lost, said its daemon", extra={"pilot_id": pilot_id, "retried": len(lost.retried),
                                                          "failed": len(lost.failed), "reason": reason})
        await lost.remove_staged(self.settings)
        for task_id in {row.task_id for row in lost.failed}:
            self.on_job_ended(task_id)

    # --- reports ---------------------------------------------------------------------------------------------

    async def _apply_reports(self, conn: Transaction, db: asyncpg.Connection, pilot_id: int,
                             reports: list[ExchangeReport],
                             ended_tasks: set[int]) -> list[ReportOutcome]:
        outcomes: dict[tuple[int, int], ReportOutcome] = {}
        with_files = [r.job_id for r in reports if r.outputs or r.log]
        contexts = await queries.output_datasets_of(conn, with_files) if with_files else {}
        valid: list[ExchangeReport] = []
        for r in reports:
            if r.outputs or r.log:
                context = contexts.get(r.job_id)
                try:
                    if context is None:
                        raise ReportInvalid(f"job {r.job_id} not found")
                    dataset = context[1]
                    check_staged_files(storage_prefix(self.settings, dataset, r.job_id, r.attempt), dataset,
                                       r.job_id, r)
                except ReportInvalid as exc:
                    outcomes[(r.job_id, r.attempt)] = ReportOutcome(job_id=r.job_id, attempt=r.attempt, status=422,
                                                                    detail=str(exc))
                    continue
            valid.append(r)

        # a job that also ended in this exchange goes straight to its end (dispatched -> finished/failed are allowed
        # moves): one write of its row instead of two, and no second touch of a row this transaction wrote
        ending = {(r.job_id, r.attempt) for r in valid if r.state in ("finished", "failed")}
        running = [(r.job_id, r.attempt) for r in valid if r.state == "running" and (r.job_id, r.attempt) not in ending]
        moved = await hot.start_running_many(db, pilot_id, running)
        finished = [r for r in valid if r.state == "finished"]
        done = await hot.finish_jobs_many(db, pilot_id, [(r.job_id, r.attempt) for r in finished])
        done_ids = {row.id for row in done}
        if done:
            task_of = {row.id: row.task_id for row in done}
            staged = [staged_file_row(task_of[r.job_id], r.job_id, contexts[r.job_id][1], f, role)
                      for r in finished if r.job_id in done_ids
                      for f, role in [*((o, FileRole.OUTPUT) for o in r.outputs),
                                      *(((r.log, FileRole.LOG),) if r.log else ())]]
            await queries.insert_staged_files(conn, staged)
            ended_tasks.update(task_of.values())
        failed_moved: set[int] = set()
        for r in valid:
            if r.state == "failed" and await self._fail(conn, pilot_id, r, contexts, ended_tasks):
                failed_moved.add(r.job_id)

        unmoved = [r for r in valid if r.job_id not in moved | done_ids | failed_moved]
        current = await queries.select_jobs(conn, [r.job_id for r in unmoved]) if unmoved else {}
        for r in unmoved:
            outcomes[(r.job_id, r.attempt)] = self._repeat_or_refusal(pilot_id, r, current.get(r.job_id))
        for outcome in outcomes.values():
            if outcome.status >= 400:
                errors.report_refused(outcome.status)
        return [outcomes.get((r.job_id, r.attempt)) or ReportOutcome(job_id=r.job_id, attempt=r.attempt, status=200)
                for r in reports]

    async def _fail(self, conn: Transaction, pilot_id: int, r: ExchangeReport,
                    contexts: dict[int, tuple[int, str]], ended_tasks: set[int]) -> bool:
        category = r.error_category or "payload"
        in_flight = await queries.attempt_in_flight(conn, r.job_id, r.attempt, pilot_id)
        retried, failed = await retry_or_fail(conn, in_flight, self.retry_policy, category,
                                              r.error_message, r.exit_code)
        if not retried and not failed:
            return False
        task_id = (retried or failed)[0].task_id
        if r.log is not None:
            await queries.insert_staged_files(conn, [staged_file_row(task_id, r.job_id, contexts[r.job_id][1], r.log,
                                                                     FileRole.LOG)])
        errors.attempts_failed(category)
        await queries.end_attempts(conn, [(r.job_id, r.attempt)], AttemptOutcome.FAILED, r.exit_code, category,
                                   r.error_message)
        if failed:
            ended_tasks.add(task_id)
        return True

    @staticmethod
    def _repeat_or_refusal(pilot_id: int, r: ExchangeReport, job: Record | None) -> ReportOutcome:
        if job is None:
            return ReportOutcome(job_id=r.job_id, attempt=r.attempt, status=409, detail=f"job {r.job_id} not found")
        ours = (job.attempt, job.pilot_id) == (r.attempt, pilot_id)
        repeat = {"running": (JobState.RUNNING,), "finished": (JobState.FINISHED,)}.get(r.state, ())
        if ours and job.status in repeat:
            return ReportOutcome(job_id=r.job_id, attempt=r.attempt, status=200, detail="repeat")
        return ReportOutcome(job_id=r.job_id, attempt=r.attempt, status=409, current_state=job.status,
                             detail=f"job {r.job_id} is {job.status} at attempt {job.attempt}; attempt {r.attempt} "
                             f"of pilot {pilot_id} is no longer current")

    @staticmethod
    async def _record_usage(db: asyncpg.Connection, pilot_id: int, request: ExchangeRequest,
                            outcomes: list[ReportOutcome]) -> None:
        """The payloads' figures: final ones of the accepted reports (observed in the usage histograms once the
        attempt ended), latest ones of the beats that carry some."""
        accepted = {(o.job_id, o.attempt) for o in outcomes if o.status == 200 and o.detail != "repeat"}
        ended = {(r.job_id, r.attempt) for r in request.reports if r.state != "running"}
        figures = {(r.job_id, r.attempt): r.usage for r in request.reports
                   if r.usage is not None and (r.job_id, r.attempt) in accepted}
        figures.update({(b.job_id, b.attempt): b.usage for b in request.running if b.usage is not None})
        for row in await hot.record_usage(db, pilot_id, [(*key, usage) for key, usage in figures.items()]):
            if (row.job_id, row.attempt) in ended:
                usage = figures[(row.job_id, row.attempt)]
                errors.attempt_used(row.task_type, row.cores, usage.wall_s, usage.cpu_s, usage.max_rss_mb)

    # --- heartbeats and claims --------------------------------------------------------------------------------

    async def _beat(self, db: asyncpg.Connection, pilot_id: int, running: list[JobBeat]) -> list[AbortOrder]:
        # a live pilot's job is written at least every fresh_s + one exchange interval, well within the timeout
        fresh_s = self.settings.pilot_timeout_s * BEAT_FRESH_FRACTION
        held = await hot.beat_jobs(db, pilot_id, [(b.job_id, b.attempt) for b in running], fresh_s)
        return [AbortOrder(job_id=b.job_id, attempt=b.attempt,
                           reason=f"job {b.job_id} attempt {b.attempt} is no longer this pilot's (cancelled, "
                           "timed out or retried elsewhere)")
                for b in running if b.job_id not in held]

    async def _claim(self, conn: Transaction, db: asyncpg.Connection, pilot: Any, want: int,
                     request_id: uuid.UUID | None) -> list[JobSpec]:
        if want <= 0:
            return []
        held = await hot.held_capacity(db, pilot.id, request_id)
        if request_id is not None and held.by_request:  # a retried exchange gets back what it claimed
            again = await queries.jobs_claimed_by_request(conn, pilot.id, request_id)
            await hot.redelivered(db, pilot.id, [r.id for r in again])
            return await self._specs(conn, again, await hot.inputs_of(db, [r.id for r in again]))
        # prefetch: the pilot may hold more jobs than its slots, waiting on its node for one; what it holds fits
        # (slots + prefetch) / slots times its resources, each job fits the pilot on its own
        prefetch = self.settings.pilot_prefetch.get(pilot.resource_type, 0)
        scale = (pilot.slots + prefetch) / pilot.slots
        slots = min(want, pilot.slots + prefetch - held.jobs)
        cores, memory = int(pilot.cores * scale) - held.cores, int(pilot.memory_mb * scale) - held.memory_mb
        specs: list[JobSpec] = []
        for resource_type in resource_types_served(pilot.resource_type):
            limit = slots - len(specs)
            if resource_type == "gpu":
                limit = min(limit, int(pilot.gpus * scale) - held.gpu_jobs)  # a GPU job takes one GPU
            got, inputs = await hot.claim_jobs(db, pilot.id, resource_type, cores, memory, limit, request_id,
                                               pilot.cores, pilot.memory_mb)
            if got:
                contexts = await self._task_contexts(conn, [r.task_id for r in got])
                for r in got:  # what these jobs take from the free cores and memory
                    task = contexts[r.task_id]
                    cores, memory = cores - task.cores, memory - task.memory_mb
                specs += await self._specs(conn, got, inputs)
        return specs

    async def _task_contexts(self, conn: Transaction, task_ids: list[int]) -> dict[int, Record]:
        missing = sorted(set(task_ids) - set(self._tasks))
        if missing:
            if len(self._tasks) > TASK_CACHE_LIMIT:
                self._tasks.clear()
            self._tasks.update(await queries.task_contexts(conn, missing))
        return self._tasks

    async def _specs(self, conn: Transaction, claimed: list[Any], inputs: dict[int, list[Any]]) -> list[JobSpec]:
        if not claimed:
            return []
        contexts = await self._task_contexts(conn, [r.task_id for r in claimed])
        return [job_spec(self.settings, r.id, r.attempt, contexts[r.task_id], inputs[r.id], r.last_error,
                         gpus=1 if r.resource_type == "gpu" else 0)
                for r in claimed]

"""The factory's cycle: follow the batch jobs of its pilots, then submit or withdraw pilots per queue.

One factory process leads at a time (common.db.leadership: a session advisory lock on a connection it holds; if it
dies, the lock goes with its connection and another replica's next cycle takes over). Every submission is recorded
as intended before the batch system is asked, under a unique batch job name, so a factory that died mid-submission
finds the job by its name after a restart (or learns there is none) and never submits twice for the same need.
"""
from __future__ import annotations

import logging
import time
import uuid
from collections import Counter as Tally
from typing import Any

from prometheus_client import Counter, Gauge
from sqlalchemy.ext.asyncio import AsyncConnection

from common.db.leadership import Leadership
from common.db.models import Record
from common.db.session import Database
from common.states import SubmissionState
from services.pilot_factory import queries
from services.pilot_factory.batch import BatchError, BatchJob, BatchState, BatchSystem, PilotJob
from services.pilot_factory.policy import QueueState, decide
from services.pilot_factory.queues import SiteQueue
from services.pilot_factory.settings import FactorySettings

S = SubmissionState
LEADER_LOCK = 0x57_4D_53_46  # "WMSF"
log = logging.getLogger("wms.pilot_factory")
SUBMISSIONS = Gauge("wms_factory_submissions", "Live pilot submissions by queue and state", ["queue", "state"])
SUBMITTED = Counter("wms_factory_submitted_total", "Pilot submissions by queue and outcome", ["queue", "outcome"])
BATCH_ENDED = Counter("wms_factory_batch_jobs_ended_total", "Pilot batch jobs over, by queue and how",
                      ["queue", "how"])


class Factory:
    def __init__(self, engine: Database, settings: FactorySettings, queues: list[SiteQueue],
                 systems: dict[str, BatchSystem]) -> None:
        self.engine, self.settings, self.queues, self.systems = engine, settings, queues, systems
        self.prefix = f"wms-{settings.broker_namespace}-pilot-"
        self.leadership = Leadership(engine, LEADER_LOCK, "pilot-factory")

    async def run_once(self) -> bool:
        """One cycle; False (the loop then sleeps its interval)."""
        if not await self.leadership.hold():
            return False
        await self.follow()
        await self.provision()
        return False

    async def close(self) -> None:
        await self.leadership.release()

    @property
    def leading(self) -> bool:
        return self.leadership.held

    # --- following batch jobs ---------------------------------------------------------------------------------

    async def follow(self) -> None:
        """Move each live submission to what its batch system says; record how batch jobs ended on their pilots."""
        async with self.engine.connect() as conn:
            live = await queries.live_submissions(conn, self.prefix)
        known: dict[str, dict[str, BatchJob]] = {}
        for system_name in sorted({s.batch_system for s in live}):
            try:
                known[system_name] = {j.name: j for j in await self.systems[system_name].jobs(self.prefix)}
            except (BatchError, KeyError) as exc:  # unreachable now: nothing is concluded about its jobs
                log.warning("batch system cannot be asked", extra={"batch_system": system_name, "error": str(exc)})
        now_age = time.time()
        for submission in live:
            jobs = known.get(submission.batch_system)
            if jobs is not None:
                await self._follow_one(submission, jobs.get(submission.batch_name), now_age)

    async def _follow_one(self, s: Record, job: BatchJob | None, now: float) -> None:
        async with self.engine.begin() as conn:
            if job is None:
                if s.status == S.INTENDED:
                    if now - s.created_at.timestamp() > self.settings.factory_intent_grace_s:
                        await queries.move(conn, s.id, S.UNSUBMITTED,
                                           error="not in the batch system: never submitted (the factory stopped)")
                    return
                if await queries.move(conn, s.id, S.VANISHED, batch_state="vanished"):
                    BATCH_ENDED.labels(s.queue, "vanished").inc()
                    await self._end_pilots(conn, s, "vanished")
                return
            if job.state == BatchState.PENDING:
                if s.status == S.INTENDED:
                    await queries.move(conn, s.id, S.QUEUED, batch_job_id=job.job_id)
            elif job.state == BatchState.RUNNING:
                if s.status != S.RUNNING:
                    await queries.move(conn, s.id, S.RUNNING, batch_job_id=job.job_id)
            elif await queries.move(conn, s.id, S.ENDED, batch_job_id=job.job_id, batch_state=job.detail):
                BATCH_ENDED.labels(s.queue, job.detail.split(" ")[0] or "ended").inc()
                await self._end_pilots(conn, s, job.detail, job.job_id)

    @staticmethod
    async def _end_pilots(conn: AsyncConnection, s: Record, how: str, job_id: str | None = None) -> None:
        batch_job_id = job_id or s.batch_job_id
        if batch_job_id is None:
            return
        dead = await queries.end_pilots_of_batch_job(conn, s.batch_system, batch_job_id, how)
        if dead:
            log.warning("pilot's batch job ended under it: its jobs are retried", extra={
                "pilot_ids": dead, "batch_job_id": batch_job_id, "batch_state": how})

    # --- submitting and withdrawing -------------------------------------------------------------------------------

    async def provision(self) -> None:
        async with self.engine.connect() as conn:
            backlog = {q.name: await queries.ready_backlog(conn, q.resource_type, q.cores, q.memory_mb)
                       for q in self.queues}
            live = await queries.live_submissions(conn, self.prefix)
        SUBMISSIONS.clear()
        for (queue_name, state), n in Tally((s.queue, s.status) for s in live).items():
            SUBMISSIONS.labels(queue_name, state).set(n)
        for queue in self.queues:
            mine = [s for s in live if s.queue == queue.name]
            queued = [s for s in mine if s.status in (S.INTENDED, S.QUEUED)]
            state = QueueState(backlog=backlog[queue.name], queued=len(queued),
                               running=sum(1 for s in mine if s.status == S.RUNNING))
            decision = decide(queue, state)
            if decision.withdraw_queued:
                await self._withdraw(queue, [s for s in queued if s.status == S.QUEUED and s.batch_job_id])
            if decision.submit:
                await self._submit(queue, decision.submit)

    async def _withdraw(self, queue: SiteQueue, queued: list[Record]) -> None:
        if not queued:
            return
        try:
            await self.systems[queue.batch_system].cancel([s.batch_job_id for s in queued])
        except BatchError as exc:
            log.warning("cannot withdraw queued pilots", extra={"queue": queue.name, "error": str(exc)})
            return
        async with self.engine.begin() as conn:
            for s in queued:
                await queries.move(conn, s.id, S.WITHDRAWN, batch_state="withdrawn")
        log.info("queued pilots withdrawn: no backlog", extra={"queue": queue.name, "pilots": len(queued)})

    async def _submit(self, queue: SiteQueue, n: int) -> None:
        names = [f"{self.prefix}{queue.name}-{uuid.uuid4().hex[:12]}" for _ in range(n)]
        async with self.engine.begin() as conn:  # the intent first: a restart finds these names or knows better
            ids = await queries.intend(conn, [{"queue": queue.name, "resource_type": queue.resource_type,
                                               "batch_system": queue.batch_system, "batch_name": name}
                                              for name in names])
        system = self.systems[queue.batch_system]
        for i, name in enumerate(names):
            try:
                job_id = await system.submit(self.pilot_job(queue, name))
            except BatchError as exc:
                SUBMITTED.labels(queue.name, "refused").inc()
                async with self.engine.begin() as conn:  # the rest of this cycle's would meet the same answer
                    for unsent in names[i:]:
                        await queries.move(conn, ids[unsent], S.UNSUBMITTED, error=str(exc)[:1000])
                log.warning("pilot submission refused", extra={"queue": queue.name, "error": str(exc)})
                return
            SUBMITTED.labels(queue.name, "submitted").inc()
            async with self.engine.begin() as conn:
                await queries.move(conn, ids[name], S.QUEUED, batch_job_id=job_id)
        log.info("pilots submitted", extra={"queue": queue.name, "pilots": n})

    def pilot_job(self, queue: SiteQueue, name: str) -> PilotJob:
        settings = self.settings
        env: dict[str, Any] = {
            "WMS_PILOT_CHANNEL": queue.channel,
            "WMS_PILOT_SERVER_URL": settings.factory_pilot_server_urls,
            # the pilots' broker login, only to pilots that use the broker
            **({"WMS_PILOT_AMQP_URL": settings.factory_pilot_amqp_url} if queue.channel == "mq" else {}),
            "WMS_PILOT_BROKER_NAMESPACE": settings.broker_namespace,
            "WMS_PILOT_TOKEN": settings.factory_pilot_token,
            "WMS_PILOT_RESOURCE_TYPE": queue.resource_type,
            "WMS_PILOT_GPUS": str(queue.gpus),
            "WMS_PILOT_SLOTS": str(queue.pilot_slots),
            "WMS_PILOT_IDLE_LIMIT_S": str(queue.pilot_idle_limit_s),
            "WMS_PILOT_LIFETIME_S": str(queue.pilot_lifetime_s),
            **queue.pilot_env,
        }
        return PilotJob(name=name, cores=queue.cores, memory_mb=queue.memory_mb, gpus=queue.gpus, env=env,
                        log_dir=settings.factory_log_dir, options=queue.options)

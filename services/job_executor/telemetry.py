"""Gauges of the whole system for Prometheus, sampled by the job-executor: jobs by state and resource type,
messages waiting per queue (dead-letter queues included), live pilots by resource type and channel, and for the
USE method: the live pilots' job slots and how many are busy (utilization), how long the oldest ready job has
waited (saturation, with the ready count and the queue depths); errors are counters where they happen
(docs/operations.md, Monitoring). Each sample's ready backlog and slots by resource type are also written to
LOAD_SAMPLE, which the web monitor plots over time.

Every ``metrics_interval_s``: the jobs of unsettled tasks counted by state (their index), the settled tasks'
counts remembered (a task that ended and closed its outputs has jobs that no longer change: each is counted once
per process), live pilots, and one passive declare per queue. The cost follows the live work, not the history
in JOB_DAT, nor the number of scrapes. One job-executor replica reports them, the one holding the telemetry lock
(common.db.leadership); the others report none, so a sum over replicas counts each job once, and when the
reporting replica dies another one takes over at its next sample.
"""
from __future__ import annotations

from collections import Counter

from prometheus_client import Gauge

from common import background, capacity
from common.broker import Broker
from common.db.leadership import Leadership
from common.db.models import RESOURCE_TYPES
from common.db.session import Database
from common.states import JOB_MACHINE
from services.job_executor import queries

JOBS = Gauge("wms_jobs", "Jobs by state and resource type", ["state", "resource_type"])
QUEUE_MESSAGES = Gauge("wms_queue_messages", "Messages waiting in a RabbitMQ queue", ["queue"])
LIVE_PILOTS = Gauge("wms_pilots_live", "Live (idle or busy) pilots", ["resource_type", "channel"])
SLOTS = Gauge("wms_pilot_slots", "Job slots of the live pilots, by the pilots' resource type", ["resource_type"])
SLOTS_BUSY = Gauge("wms_pilot_slots_busy", "Jobs in flight on live pilots, by the pilots' resource type",
                   ["resource_type"])
READY_AGE = Gauge("wms_ready_oldest_seconds", "How long the longest-waiting claimable job has been ready",
                  ["resource_type"])
CHANNELS = ("rest", "mq")
TELEMETRY_LOCK = 0x5BD_0004


class Telemetry:
    def __init__(self, engine: Database, broker: Broker, interval_s: float) -> None:
        self.engine, self.broker = engine, broker
        self.loop = background.Loop("telemetry", self.sample, interval_s)
        self._settled: dict[int, dict[tuple[str, str], int]] = {}  # task id -> its final job counts
        self.leadership = Leadership(engine, TELEMETRY_LOCK, "telemetry")

    async def sample(self) -> bool:
        if not await self.leadership.hold():
            for gauge in (JOBS, LIVE_PILOTS, QUEUE_MESSAGES, SLOTS, SLOTS_BUSY, READY_AGE):
                gauge.clear()  # another replica reports (or nobody can: the database is down)
            return False
        async with self.engine.connect() as conn:
            settled, unsettled = await queries.tasks_settled_or_not(conn)
            newly_settled = [t for t in settled if t not in self._settled]
            # remembered counts of settled tasks, without those purged since
            self._settled = {t: self._settled[t] for t in settled if t in self._settled}
            self._settled.update(await queries.count_jobs_of_tasks(conn, newly_settled))
            live = await queries.count_jobs_of_tasks(conn, unsettled)
            pilot_counts = await queries.count_live_pilots_by_type_and_channel(conn)
            use = await capacity.use_by_resource_type(conn)
        job_counts: Counter[tuple[str, str]] = Counter()
        for task_id in settled:
            job_counts.update(self._settled[task_id])
        for counts in live.values():
            job_counts.update(counts)
        for state in JOB_MACHINE.states:
            for resource_type in RESOURCE_TYPES:
                JOBS.labels(state, resource_type).set(job_counts.get((state, resource_type), 0))
        samples = []
        for resource_type in RESOURCE_TYPES:
            for channel in CHANNELS:
                LIVE_PILOTS.labels(resource_type, channel).set(pilot_counts.get((resource_type, channel), 0))
            of_type = use.get(resource_type, capacity.Use(0, 0, 0, 0.0))
            SLOTS.labels(resource_type).set(of_type.slots)
            SLOTS_BUSY.labels(resource_type).set(of_type.busy)
            READY_AGE.labels(resource_type).set(of_type.oldest_ready_s)
            samples.append({"resource_type": resource_type, "ready": of_type.ready, "slots": of_type.slots,
                            "busy": of_type.busy})
        async with self.engine.begin() as conn:  # the monitor's backlog and slots over time
            await queries.record_load(conn, samples)
        for queue, depth in (await self.broker.queue_depths()).items():
            QUEUE_MESSAGES.labels(queue).set(depth)
        return False

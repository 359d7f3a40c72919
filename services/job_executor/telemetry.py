"""Gauges of the whole system for Prometheus, sampled by the job-executor: jobs by state and resource type,
messages waiting per queue (dead-letter queues included), live pilots by resource type and channel.

One grouped query per table and one passive declare per queue every ``metrics_interval_s``: the cost does not
grow with the number of scrapes. Every replica reports the same figures (aggregate them with max()).
"""
from __future__ import annotations

from prometheus_client import Gauge

from common import background
from common.broker import Broker
from common.db.models import RESOURCE_TYPES
from common.db.session import Database
from common.states import JOB_MACHINE
from services.job_executor import queries

JOBS = Gauge("wms_jobs", "Jobs by state and resource type", ["state", "resource_type"])
QUEUE_MESSAGES = Gauge("wms_queue_messages", "Messages waiting in a RabbitMQ queue", ["queue"])
LIVE_PILOTS = Gauge("wms_pilots_live", "Live (idle or busy) pilots", ["resource_type", "channel"])
CHANNELS = ("rest", "mq")


class Telemetry:
    def __init__(self, engine: Database, broker: Broker, interval_s: float) -> None:
        self.engine, self.broker = engine, broker
        self.loop = background.Loop("telemetry", self.sample, interval_s)

    async def sample(self) -> bool:
        async with self.engine.connect() as conn:
            job_counts = await queries.count_jobs_by_state_and_type(conn)
            pilot_counts = await queries.count_live_pilots_by_type_and_channel(conn)
        for state in JOB_MACHINE.states:
            for resource_type in RESOURCE_TYPES:
                JOBS.labels(state, resource_type).set(job_counts.get((state, resource_type), 0))
        for resource_type in RESOURCE_TYPES:
            for channel in CHANNELS:
                LIVE_PILOTS.labels(resource_type, channel).set(pilot_counts.get((resource_type, channel), 0))
        for queue, depth in (await self.broker.queue_depths()).items():
            QUEUE_MESSAGES.labels(queue).set(depth)
        return False

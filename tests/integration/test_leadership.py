"""Leadership by a session advisory lock (common.db.leadership), and the job-executor's telemetry under it: one
replica reports the system's gauges, the others none; when the reporting one goes, another takes over."""
from __future__ import annotations

from prometheus_client import REGISTRY

from common.broker import Broker
from common.db.leadership import Leadership
from services.job_executor.telemetry import TELEMETRY_LOCK, Telemetry
from tests.integration.test_job_executor_api import make_jobs


async def test_one_holder_at_a_time_and_the_next_takes_over(db) -> None:
    first, second = Leadership(db, 0x7E57_0001, "test"), Leadership(db, 0x7E57_0001, "test")
    try:
        assert await first.hold() and not await second.hold()
        assert await first.hold()  # still held: its connection lives
        await first.release()
        assert await second.hold() and not await first.hold()
    finally:
        await first.release()
        await second.release()


def _ready_jobs_gauge() -> float | None:
    return REGISTRY.get_sample_value("wms_jobs", {"state": "ready", "resource_type": "cpu"})


async def test_only_the_replica_holding_the_telemetry_lock_reports_gauges(settings, db) -> None:
    await make_jobs(db, 3)
    broker = Broker(settings)
    await broker.connect()
    other_replica = Leadership(db, TELEMETRY_LOCK, "telemetry")
    telemetry = Telemetry(db, broker, 60)
    try:
        assert await other_replica.hold()
        await telemetry.sample()
        assert _ready_jobs_gauge() is None  # another replica reports: this one exports nothing
        await other_replica.release()  # that replica died
        await telemetry.sample()
        assert _ready_jobs_gauge() == 3.0
    finally:
        await other_replica.release()
        await telemetry.leadership.release()
        await broker.close()

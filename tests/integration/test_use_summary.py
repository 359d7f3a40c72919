"""The USE summary operators read (`GET /api/v1/use`, the last lines of `wms q`): utilization and saturation by
resource type, and the errors."""
from __future__ import annotations

import datetime as dt

import sqlalchemy as sa

from common.db.models import jobs, pilots
from tests.conftest import OPERATOR_TOKEN
from tests.factories import insert_jobs, insert_task

OPERATOR = {"Authorization": f"Bearer {OPERATOR_TOKEN}"}


async def test_slots_busy_ready_the_oldest_wait_and_the_errors(task_manager, db) -> None:
    now = dt.datetime.now(dt.UTC)
    async with db.begin() as conn:
        live = list((await conn.execute(sa.insert(pilots).returning(pilots.c.id), [
            {"host": "wn1", "resource_type": "cpu", "cores": 8, "memory_mb": 16000, "slots": 8, "version": "t",
             "status": "busy"},
            {"host": "wn2", "resource_type": "cpu", "cores": 4, "memory_mb": 8000, "slots": 4, "version": "t",
             "status": "idle"},
            {"host": "gone", "resource_type": "cpu", "cores": 8, "memory_mb": 8000, "slots": 8, "version": "t",
             "status": "exited"},
        ])).scalars())
        task_id = await insert_task(conn, status="running")
        await insert_jobs(conn, task_id, 3, status="running", pilot_id=live[0], attempt=1)
        await insert_jobs(conn, task_id, 1, status="dispatched", pilot_id=live[1], attempt=1)
        await insert_jobs(conn, task_id, 2, status="ready", queued_at=now - dt.timedelta(seconds=120))
        await insert_jobs(conn, task_id, 1, status="ready", queued_at=now)
        await insert_jobs(conn, task_id, 1, status="ready", queued_at=now - dt.timedelta(hours=1),
                          not_before=now + dt.timedelta(minutes=5))  # in its retry backoff: not claimable
        await insert_jobs(conn, task_id, 1, status="ready", resource_type="gpu", queued_at=now)
        await insert_jobs(conn, task_id, 2, status="failed", finished_at=now - dt.timedelta(minutes=1))
        await insert_jobs(conn, task_id, 1, status="failed", finished_at=now - dt.timedelta(hours=1))
        await conn.execute(sa.update(jobs).where(jobs.c.status == "finished").values(finished_at=now))
    response = await task_manager.get("/api/v1/use", headers=OPERATOR)
    assert response.status_code == 200, response.text
    use = response.json()
    by_type = {r["resource_type"]: r for r in use["resources"]}
    cpu, gpu = by_type["cpu"], by_type["gpu"]
    assert (cpu["slots"], cpu["busy"], cpu["ready"]) == (12, 4, 3)
    assert 115 <= cpu["oldest_ready_s"] <= 180
    assert (gpu["slots"], gpu["busy"], gpu["ready"]) == (0, 0, 1)
    assert use["jobs_failed_last_10_min"] == 2
    assert use["dead_letters"] == 0
    assert (await task_manager.get("/api/v1/use")).status_code == 401

"""SIGKILL the task-executor and the job-manager in the middle of a 10,000-file dataset, restart them: every file
still ends in exactly one job of the task."""
from __future__ import annotations

import uuid

import httpx
import pytest
import sqlalchemy as sa
from sqlalchemy.ext.asyncio import create_async_engine

from common.db.models import files, jobs, tasks
from common.dsm import DsmClient, DsmFile
from tests.conftest import SERVICE_TOKEN, WFMS_TOKEN, drop_database, wait_for
from tests.e2e.processes import Deployment
from tests.factories import task_description

pytestmark = pytest.mark.e2e
N_FILES = 10_000


@pytest.fixture
async def deployment(postgres_server_url, amqp_url, broker_namespace, tmp_path):
    database = f"wms_e2e_{uuid.uuid4().hex[:8]}"
    d = Deployment.create(postgres_server_url, database, amqp_url, broker_namespace, tmp_path,
                          WMS_CHUNK_FILES="100", WMS_BACKLOG_FLOOR="1000000")
    d.migrate()
    try:
        yield d
    finally:
        d.stop_all()
        await drop_database(postgres_server_url, database)


async def test_kill_task_executor_and_job_manager_mid_dataset(deployment: Deployment) -> None:
    for service in ("wms-dsm", "wms-task-manager", "wms-job-manager"):
        await deployment.start(service)
    engine = create_async_engine(deployment.env["WMS_DATABASE_URL"])
    dsm = DsmClient(deployment.url("wms-dsm"), SERVICE_TOKEN)
    try:
        await dsm.create_dataset("spd.raw.crash")
        for start in range(0, N_FILES, 5000):
            await dsm.register_files("spd.raw.crash", [
                DsmFile(lfn=f"crash/f{i:05d}", url=f"file:///d/f{i:05d}", size=10, adler32="00000001", events=1)
                for i in range(start, start + 5000)])
        await dsm.close_dataset("spd.raw.crash")
        async with httpx.AsyncClient(base_url=deployment.url("wms-task-manager")) as tm:
            response = await tm.post("/api/v1/tasks", headers={"Authorization": f"Bearer {WFMS_TOKEN}"},
                                     json=task_description(input_dataset="spd.raw.crash",
                                                           split={"by": "files", "size": 3}))
            assert response.status_code == 201, response.text
            task_id = response.json()["id"]

        async def task() -> sa.Row:
            async with engine.connect() as conn:
                return (await conn.execute(sa.select(tasks).where(tasks.c.id == task_id))).one()

        async def files_assigned_at_least(n: int):
            return (await task()).files_assigned >= n

        await deployment.start("wms-task-executor")
        await wait_for(lambda: files_assigned_at_least(1500), interval=0.01)
        deployment.kill("wms-task-executor")
        killed_at = (await task()).files_assigned
        assert killed_at < N_FILES, "generation ended before the kill: nothing was tested"

        await deployment.start("wms-task-executor")
        await wait_for(lambda: files_assigned_at_least(killed_at + 1500), interval=0.01)
        deployment.kill("wms-job-manager")  # chunks in its hands are redelivered to the next one
        registered_at_kill = (await task()).jobs_registered
        assert registered_at_kill < -(-N_FILES // 3)
        await deployment.start("wms-job-manager")

        async def complete():
            t = await task()
            return t.files_total is not None and t.jobs_registered == t.jobs_total

        await wait_for(complete, timeout=120)
        async with engine.connect() as conn:
            lfns = list((await conn.execute(
                sa.select(files.c.lfn).where(files.c.task_id == task_id, files.c.role == "input"))).scalars())
            n_jobs, n_files = (await conn.execute(
                sa.select(sa.func.count(), sa.func.sum(jobs.c.n_files)).where(jobs.c.task_id == task_id))).one()
        assert len(lfns) == N_FILES and set(lfns) == {f"crash/f{i:05d}" for i in range(N_FILES)}
        t = await task()
        assert (t.files_total, t.files_assigned, n_files) == (N_FILES, N_FILES, N_FILES)
        assert n_jobs == t.jobs_total == -(-N_FILES // 3)
    finally:
        await dsm.close()
        await engine.dispose()

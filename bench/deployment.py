"""What the benchmarks share: a throw-away WMS deployment (own database and broker namespace, services as
processes), a dataset registered in its DSM, a task submitted to it."""
from __future__ import annotations

import contextlib
import os
import sys
import tempfile
import uuid
from collections.abc import AsyncIterator, Callable
from pathlib import Path

import httpx
from sqlalchemy.ext.asyncio import AsyncEngine, create_async_engine

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from common.dsm import DsmClient, DsmFile  # noqa: E402
from tests.conftest import SERVICE_TOKEN, WFMS_TOKEN, delete_namespace, drop_database  # noqa: E402
from tests.e2e.processes import Deployment  # noqa: E402
from tests.factories import task_description  # noqa: E402

SERVER = os.environ.get("WMS_DATABASE_URL", "postgresql+asyncpg://postgres@127.0.0.1:5432/postgres")
AMQP = os.environ.get("WMS_AMQP_URL", "amqp://guest:guest@127.0.0.1:5672/")
DSM_BATCH = 10_000


@contextlib.asynccontextmanager
async def bench_deployment(services: tuple[str, ...], **env: str) -> AsyncIterator[tuple[Deployment, AsyncEngine]]:
    """Migrate a fresh database, start ``services``; on exit stop them and drop the database and namespace."""
    database = f"wms_bench_{uuid.uuid4().hex[:8]}"
    logs = Path(tempfile.mkdtemp(prefix="wms-bench-"))
    deployment = Deployment.create(SERVER, database, AMQP, f"bench-{uuid.uuid4().hex[:8]}", logs,
                                   WMS_LOG_LEVEL=os.environ.get("BENCH_LOG_LEVEL", "WARNING"), **env)
    deployment.migrate()
    engine = create_async_engine(deployment.env["WMS_DATABASE_URL"])
    try:
        for service in services:
            await deployment.start(service)
        yield deployment, engine
    finally:
        print(f"logs: {logs}", file=sys.stderr)
        deployment.stop_all()
        await engine.dispose()
        await drop_database(SERVER, database)
        await delete_namespace(AMQP, deployment.env["WMS_BROKER_NAMESPACE"])


async def register_dataset(deployment: Deployment, name: str, n_files: int, file: Callable[[int], DsmFile],
                           timeout_s: float = 300) -> None:
    """A closed dataset of ``n_files`` files, ``file(i)`` each, registered in batches."""
    dsm = DsmClient(deployment.url("wms-dsm"), SERVICE_TOKEN, timeout_s=timeout_s)
    try:
        await dsm.create_dataset(name)
        for start in range(0, n_files, DSM_BATCH):
            await dsm.register_files(name, [file(i) for i in range(start, min(start + DSM_BATCH, n_files))])
        await dsm.close_dataset(name)
    finally:
        await dsm.close()


async def submit(deployment: Deployment, **description: object) -> int:
    async with httpx.AsyncClient(base_url=deployment.url("wms-task-manager")) as tm:
        response = await tm.post("/api/v1/tasks", headers={"Authorization": f"Bearer {WFMS_TOKEN}"},
                                 json=task_description(**description))
        response.raise_for_status()
        return response.json()["id"]

"""A whole WMS for end-to-end tests: the services in this process (DSM and job-executor over real HTTP), pilots
as OS processes (REST or RabbitMQ channel), payloads as real programs."""
from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import subprocess
import sys
import zlib
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncEngine

from common.db.models import tasks
from common.dsm import DsmClient, DsmFile
from common.settings import Settings
from tests.conftest import PILOT_TOKEN, SERVICE_TOKEN, WFMS_TOKEN, running_app, serve_in_process

WFMS = {"Authorization": f"Bearer {WFMS_TOKEN}"}


@dataclass
class Stack:
    settings: Settings
    db: AsyncEngine
    dsm: DsmClient
    task_manager: httpx.AsyncClient
    job_executor_url: str
    tmp: Path
    pilots: list[subprocess.Popen] = field(default_factory=list)

    def start_pilot(self, channel: str = "rest", resource_type: str = "cpu", **env: str) -> subprocess.Popen:
        n = len(self.pilots)
        process = subprocess.Popen(
            [sys.executable, "-m", "pilot.app"],
            env={
                **os.environ,
                "WMS_PILOT_CHANNEL": channel,
                "WMS_PILOT_SERVER_URL": self.job_executor_url,
                "WMS_PILOT_AMQP_URL": self.settings.amqp_url,
                "WMS_PILOT_BROKER_NAMESPACE": self.settings.broker_namespace,
                "WMS_PILOT_TOKEN": PILOT_TOKEN,
                "WMS_PILOT_WORKDIR": str(self.tmp / f"pilot{n}"),
                "WMS_PILOT_RESOURCE_TYPE": resource_type,
                "WMS_PILOT_GPUS": "1" if resource_type == "gpu" else "0",
                "WMS_PILOT_CORES": "2",
                "WMS_PILOT_HOST": f"wn{n}",
                "WMS_PILOT_IDLE_POLL_S": "0.2",
                "WMS_PILOT_IDLE_LIMIT_S": "600",
                "WMS_PILOT_USAGE_INTERVAL_S": "0.5",
                **env,
            },
            stdout=(self.tmp / f"pilot{n}.log").open("w"),
            stderr=subprocess.STDOUT,
        )
        self.pilots.append(process)
        return process

    async def stop_pilots(self) -> None:
        """SIGTERM every pilot and wait for it without blocking the loop (the services answering their last
        calls run in this very loop)."""
        for p in self.pilots:
            if p.poll() is None:
                p.send_signal(signal.SIGTERM)
        for _ in range(400):
            if all(p.poll() is not None for p in self.pilots):
                return
            await asyncio.sleep(0.05)
        for p in self.pilots:
            if p.poll() is None:
                p.kill()
                p.wait()

    async def make_dataset(self, name: str, n: int, content: bytes = b"", close: bool = True) -> list[Path]:
        """A dataset of ``n`` real files on the shared filesystem."""
        directory = self.tmp / "data" / name
        directory.mkdir(parents=True, exist_ok=True)
        paths, entries = [], []
        for i in range(n):
            path = directory / f"f{i:05d}.dat"
            data = content or f"file {i} of {name}\n".encode()
            path.write_bytes(data)
            paths.append(path)
            entries.append(DsmFile(lfn=f"{name}/f{i:05d}.dat", url=f"file://{path}", size=len(data),
                                   adler32=f"{zlib.adler32(data) & 0xFFFFFFFF:08x}", events=1))
        await self.dsm.create_dataset(name)
        if entries:
            await self.dsm.register_files(name, entries)
        if close:
            await self.dsm.close_dataset(name)
        return paths

    async def submit(self, **description) -> int:
        from tests.factories import task_description

        response = await self.task_manager.post("/api/v1/tasks", json=task_description(**description), headers=WFMS)
        assert response.status_code == 201, response.text
        return response.json()["id"]

    async def task(self, task_id: int) -> sa.Row:
        async with self.db.connect() as conn:
            return (await conn.execute(sa.select(tasks).where(tasks.c.id == task_id))).one()

    async def ended(self, task_id: int) -> bool:
        t = await self.task(task_id)
        return t.status in ("done", "finished", "failed", "cancelled") and t.output_closed_at is not None


@contextlib.asynccontextmanager
async def wms_stack(settings: Settings, db: AsyncEngine, tmp: Path, **overrides) -> AsyncIterator[Stack]:
    from services.dsm.app import create_app as dsm_app
    from services.job_executor.app import create_app as job_executor_app
    from services.job_manager.app import create_app as job_manager_app
    from services.task_executor.app import create_app as task_executor_app
    from services.task_manager.app import create_app as task_manager_app

    base = settings.model_copy(update={
        "storage_root": str(tmp / "storage"), "heartbeat_interval_s": 0.5, "pilot_timeout_s": 3.0,
        "retry_backoff_s": 0.2, "retry_backoff_max_s": 1.0, "oversight_interval_s": 0.2, "chunk_files": 50,
        "dsm_poll_interval_s": 0.3, **overrides,
    })
    async with serve_in_process(dsm_app(base)) as dsm_url:
        tuned = base.model_copy(update={"dsm_url": dsm_url})
        async with (
            serve_in_process(job_executor_app(tuned)) as je_url,
            # over real HTTP: browsers and the CLI (other processes) use it too
            serve_in_process(task_manager_app(tuned)) as tm_url,
            httpx.AsyncClient(base_url=tm_url, timeout=30) as tm,
            running_app(job_manager_app(tuned)),
            running_app(task_executor_app(tuned)),
        ):
            dsm = DsmClient(dsm_url, SERVICE_TOKEN)
            stack = Stack(tuned, db, dsm, tm, je_url, tmp)
            try:
                yield stack
            finally:
                await stack.stop_pilots()
                await dsm.close()

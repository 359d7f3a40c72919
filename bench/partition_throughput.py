"""Benchmark: dataset files turned into registered jobs per second (task-executor + job-manager).

Starts the reference DSM, task-manager, job-manager and task-executor as processes against a fresh database
on the configured PostgreSQL and RabbitMQ, registers a closed dataset of N files in the DSM, submits one task,
and times submission -> every file in a registered job (JOB_DAT/FILE_DAT). Prints one JSON line per run.

    .venv/bin/python bench/partition_throughput.py --files 100000 --files-per-job 1 10
"""
from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import sys
import tempfile
import time
import uuid
from pathlib import Path

import httpx
import sqlalchemy as sa
from sqlalchemy.ext.asyncio import create_async_engine

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from common.db.models import tasks  # noqa: E402
from common.dsm import DsmClient, DsmFile  # noqa: E402
from tests.conftest import delete_namespace, SERVICE_TOKEN, WFMS_TOKEN, drop_database  # noqa: E402
from tests.e2e.processes import Deployment  # noqa: E402
from tests.factories import task_description  # noqa: E402

SERVER = os.environ.get("WMS_DATABASE_URL", "postgresql+asyncpg://postgres@127.0.0.1:5432/postgres")
AMQP = os.environ.get("WMS_AMQP_URL", "amqp://guest:guest@127.0.0.1:5672/")


async def run(n_files: int, files_per_job: int, chunk_files: int) -> dict:
    database = f"wms_bench_{uuid.uuid4().hex[:8]}"
    logs = Path(tempfile.mkdtemp(prefix="wms-bench-"))
    d = Deployment.create(SERVER, database, AMQP, f"bench-{uuid.uuid4().hex[:8]}", logs,
                          WMS_CHUNK_FILES=str(chunk_files), WMS_BACKLOG_FLOOR=str(10 * n_files),
                          WMS_LOG_LEVEL=os.environ.get("BENCH_LOG_LEVEL", "WARNING"))
    d.migrate()
    engine = create_async_engine(d.env["WMS_DATABASE_URL"])
    try:
        for service in ("wms-dsm", "wms-task-manager", "wms-job-manager", "wms-task-executor"):
            await d.start(service)
        dsm = DsmClient(d.url("wms-dsm"), SERVICE_TOKEN, timeout_s=300)
        t0 = time.perf_counter()
        await dsm.create_dataset("bench.raw")
        for start in range(0, n_files, 10_000):
            await dsm.register_files("bench.raw", [
                DsmFile(lfn=f"bench/raw/f{i:07d}.tsl", url=f"file:///data/bench/raw/f{i:07d}.tsl",
                        size=1_000_000, adler32=f"{i:08x}", events=100)
                for i in range(start, min(start + 10_000, n_files))])
        await dsm.close_dataset("bench.raw")
        dsm_s = time.perf_counter() - t0
        await dsm.close()

        async with httpx.AsyncClient(base_url=d.url("wms-task-manager")) as tm:
            start = time.perf_counter()
            response = await tm.post("/api/v1/tasks", headers={"Authorization": f"Bearer {WFMS_TOKEN}"},
                                     json=task_description(input_dataset="bench.raw",
                                                           split={"by": "files", "size": files_per_job}))
            task_id = response.json()["id"]
        while True:
            async with engine.connect() as conn:
                t = (await conn.execute(sa.select(tasks).where(tasks.c.id == task_id))).one()
            if t.files_total is not None and t.jobs_registered == t.jobs_total:
                break
            await asyncio.sleep(0.02)
        elapsed = time.perf_counter() - start
        return {
            "files": n_files, "files_per_job": files_per_job, "jobs": t.jobs_total, "chunk_files": chunk_files,
            "seconds": round(elapsed, 2), "files_per_s": round(n_files / elapsed),
            "jobs_per_s": round(t.jobs_total / elapsed), "dsm_registration_s": round(dsm_s, 2),
        }
    finally:
        print(f"logs: {logs}", file=sys.stderr)
        d.stop_all()
        await engine.dispose()
        await drop_database(SERVER, database)
        await delete_namespace(AMQP, d.env["WMS_BROKER_NAMESPACE"])


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--files", type=int, default=100_000)
    parser.add_argument("--files-per-job", type=int, nargs="+", default=[1, 10])
    parser.add_argument("--chunk-files", type=int, default=2000)
    args = parser.parse_args()
    print(json.dumps({"machine": f"{platform.machine()} {os.cpu_count()} cores", "python": platform.python_version()}))
    for fpj in args.files_per_job:
        print(json.dumps(await run(args.files, fpj, args.chunk_files)), flush=True)


if __name__ == "__main__":
    asyncio.run(main())

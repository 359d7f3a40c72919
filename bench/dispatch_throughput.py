"""Benchmark: no-op jobs per second end to end, and dispatch latency (ready -> running), with N simulated pilots.

Runs the DSM, task-manager, task-executor, job-manager and job-executor as processes on a fresh database; the
pilots are coroutines in this process speaking the real REST (or RabbitMQ) protocol: register, claim, report
running, report finished (no payload, no files). One task of --jobs files at one file per job.

    .venv/bin/python bench/dispatch_throughput.py --pilots 100 --jobs 5000 [--channel mq]
"""
from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import statistics
import sys
import tempfile
import time
import uuid
from pathlib import Path

import httpx
import sqlalchemy as sa
from sqlalchemy.ext.asyncio import create_async_engine

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from common.db.models import jobs, tasks  # noqa: E402
from common.dsm import DsmClient, DsmFile  # noqa: E402
from common.pilot_protocol import JobReport, PilotRegistration  # noqa: E402
from pilot.channels.mq import MqChannel  # noqa: E402
from pilot.channels.rest import RestChannel  # noqa: E402
from tests.conftest import delete_namespace, PILOT_TOKEN, SERVICE_TOKEN, WFMS_TOKEN, drop_database  # noqa: E402
from tests.e2e.processes import Deployment  # noqa: E402
from tests.factories import task_description  # noqa: E402

SERVER = os.environ.get("WMS_DATABASE_URL", "postgresql+asyncpg://postgres@127.0.0.1:5432/postgres")
AMQP = os.environ.get("WMS_AMQP_URL", "amqp://guest:guest@127.0.0.1:5672/")


async def simulated_pilot(n: int, d: Deployment, channel_kind: str, running_at: dict[int, float],
                          stop: asyncio.Event) -> int:
    channel = (RestChannel(d.url("wms-job-executor"), PILOT_TOKEN, 60) if channel_kind == "rest"
               else MqChannel(AMQP, d.env["WMS_BROKER_NAMESPACE"], 60))
    await channel.register(PilotRegistration(host=f"sim{n}", resource_type="cpu", cores=1, memory_mb=1000,
                                             version="bench"))
    done = 0
    try:
        while not stop.is_set():
            job = await channel.claim()
            if job is None:
                await asyncio.sleep(0.05)
                continue
            await channel.report(job.job_id, JobReport(attempt=job.attempt, state="running"))
            running_at[job.job_id] = time.time()
            await channel.report(job.job_id, JobReport(attempt=job.attempt, state="finished", exit_code=0))
            done += 1
    finally:
        await channel.close()
    return done


async def run(n_pilots: int, n_jobs: int, channel_kind: str, floor: int, per_pilot: int) -> dict:
    database = f"wms_bench_{uuid.uuid4().hex[:8]}"
    d = Deployment.create(SERVER, database, AMQP, f"bench-{uuid.uuid4().hex[:8]}",
                          Path(tempfile.mkdtemp(prefix="wms-bench-")), WMS_LOG_LEVEL="WARNING",
                          WMS_DB_POOL_SIZE="20", WMS_OUTBOX_POLL_INTERVAL_S="0.2",
                          WMS_BACKLOG_FLOOR=str(floor), WMS_BACKLOG_PER_PILOT=str(per_pilot))
    d.migrate()
    engine = create_async_engine(d.env["WMS_DATABASE_URL"])
    stop = asyncio.Event()
    try:
        for service in ("wms-dsm", "wms-task-manager", "wms-job-manager", "wms-task-executor", "wms-job-executor"):
            await d.start(service)
        dsm = DsmClient(d.url("wms-dsm"), SERVICE_TOKEN, timeout_s=120)
        await dsm.create_dataset("bench.noop")
        for start in range(0, n_jobs, 10_000):
            await dsm.register_files("bench.noop", [
                DsmFile(lfn=f"noop/{i}", url=f"file:///dev/null/{i}", size=0, adler32="00000001", events=1)
                for i in range(start, min(start + 10_000, n_jobs))])
        await dsm.close_dataset("bench.noop")
        await dsm.close()
        running_at: dict[int, float] = {}
        pilots = [asyncio.create_task(simulated_pilot(i, d, channel_kind, running_at, stop)) for i in range(n_pilots)]
        await asyncio.sleep(1)  # all registered and polling
        async with httpx.AsyncClient(base_url=d.url("wms-task-manager")) as tm:
            start = time.perf_counter()
            response = await tm.post("/api/v1/tasks", headers={"Authorization": f"Bearer {WFMS_TOKEN}"},
                                     json=task_description(input_dataset="bench.noop", output_dataset="bench.out",
                                                           split={"by": "files", "size": 1}))
            task_id = response.json()["id"]
        while True:
            async with engine.connect() as conn:
                status = (await conn.execute(sa.select(tasks.c.status).where(tasks.c.id == task_id))).scalar()
            if status in ("done", "finished"):
                break
            await asyncio.sleep(0.05)
        elapsed = time.perf_counter() - start
        stop.set()
        await asyncio.gather(*pilots)
        async with engine.connect() as conn:
            queued = dict((await conn.execute(sa.select(jobs.c.id, sa.func.extract("epoch", jobs.c.queued_at)).where(
                jobs.c.task_id == task_id))).all())
        latencies = sorted(running_at[j] - float(q) for j, q in queued.items() if j in running_at)
        pct = statistics.quantiles(latencies, n=100)
        return {"channel": channel_kind, "pilots": n_pilots, "jobs": n_jobs, "backlog_floor": floor,
                "backlog_per_pilot": per_pilot, "seconds": round(elapsed, 2),
                "jobs_per_s": round(n_jobs / elapsed), "latency_p50_ms": round(1000 * pct[49], 1),
                "latency_p99_ms": round(1000 * pct[98], 1), "status": status}
    finally:
        stop.set()
        d.stop_all()
        await engine.dispose()
        await drop_database(SERVER, database)
        await delete_namespace(AMQP, d.env["WMS_BROKER_NAMESPACE"])


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--pilots", type=int, default=100)
    parser.add_argument("--jobs", type=int, default=5000)
    parser.add_argument("--channel", choices=["rest", "mq"], default="rest")
    parser.add_argument("--backlog-floor", type=int, default=1000, help="WMS_BACKLOG_FLOOR (default as deployed)")
    parser.add_argument("--backlog-per-pilot", type=int, default=2, help="WMS_BACKLOG_PER_PILOT")
    args = parser.parse_args()
    print(json.dumps({"machine": f"{platform.machine()} {os.cpu_count()} cores", "python": platform.python_version()}))
    print(json.dumps(await run(args.pilots, args.jobs, args.channel, args.backlog_floor, args.backlog_per_pilot)),
          flush=True)


if __name__ == "__main__":
    asyncio.run(main())

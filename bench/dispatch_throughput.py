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
import time
import uuid

import sqlalchemy as sa
from deployment import AMQP, bench_deployment, register_dataset, submit

from common.db.models import jobs, tasks
from common.dsm import DsmFile
from common.pilot_protocol import JobReport, PilotRegistration
from pilot.channels.mq import MqChannel
from pilot.channels.rest import RestChannel
from tests.conftest import PILOT_TOKEN
from tests.e2e.processes import Deployment


async def simulated_pilot(n: int, d: Deployment, channel_kind: str, running_at: dict[int, float],
                          stop: asyncio.Event) -> int:
    channel = (RestChannel(d.url("wms-job-executor"), PILOT_TOKEN, 60) if channel_kind == "rest"
               else MqChannel(AMQP, d.env["WMS_BROKER_NAMESPACE"], PILOT_TOKEN, 60))
    await channel.register(PilotRegistration(host=f"sim{n}", resource_type="cpu", cores=1, memory_mb=1000,
                                             version="bench"))
    done = 0
    try:
        while not stop.is_set():
            job = await channel.claim(uuid.uuid4())
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
    services = ("wms-dsm", "wms-task-manager", "wms-job-manager", "wms-task-executor", "wms-job-executor")
    stop = asyncio.Event()
    async with bench_deployment(services, WMS_DB_POOL_SIZE="20", WMS_OUTBOX_POLL_INTERVAL_S="0.2",
                                WMS_BACKLOG_FLOOR=str(floor), WMS_BACKLOG_PER_PILOT=str(per_pilot)) as (d, engine):
        await register_dataset(d, "bench.noop", n_jobs, lambda i: DsmFile(
            lfn=f"noop/{i}", url=f"file:///dev/null/{i}", size=0, adler32="00000001", events=1), timeout_s=120)
        running_at: dict[int, float] = {}
        pilots = [asyncio.create_task(simulated_pilot(i, d, channel_kind, running_at, stop)) for i in range(n_pilots)]
        try:
            await asyncio.sleep(1)  # all registered and polling
            start = time.perf_counter()
            task_id = await submit(d, input_dataset="bench.noop", output_dataset="bench.out",
                                   split={"by": "files", "size": 1})
            while True:
                async with engine.connect() as conn:
                    status = (await conn.execute(sa.select(tasks.c.status).where(tasks.c.id == task_id))).scalar()
                if status in ("done", "finished"):
                    break
                await asyncio.sleep(0.05)
            elapsed = time.perf_counter() - start
        finally:
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

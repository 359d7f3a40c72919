"""Benchmark: no-op jobs per second end to end, and dispatch latency (ready -> running), with N simulated pilots.

Runs the DSM, task-manager, task-executor, job-manager and job-executor as processes on a fresh database; the
pilots are coroutines in this process speaking the real REST (or RabbitMQ) protocol 2: register, then exchanges
that report each job running, then finished (no payload, no files; every attempt, pilot and time recorded as in
production), and claim jobs for their free slots. One task of --jobs files at one file per job.

    .venv/bin/python bench/dispatch_throughput.py --pilots 100 --slots 8 --jobs 20000 [--channel mq]
    .venv/bin/python bench/dispatch_throughput.py --pilots 100 --slots 8 --jobs 20000 --history 10000000
    .venv/bin/python bench/dispatch_throughput.py --pilots 100 --slots 8 --jobs 20000 --job-executors 2
    .venv/bin/python bench/dispatch_throughput.py --pilots 100 --slots 8 --jobs 10000 --rate 700
    .venv/bin/python bench/dispatch_throughput.py --pilots 100 --slots 1 --prefetch 7 --jobs 10000

--rate R makes the load open-loop: the task's dataset is open and grows by R files (jobs) per second, so the
ready -> running latency measures dispatch at that load, not a queue of jobs made ready all at once.
--prefetch P sets the job-executor's WMS_PILOT_PREFETCH for the CPU queue: each pilot holds up to slots + P jobs
(no-op jobs: all it holds have run by its next exchange).
--history N first fills JOB_DAT with N finished jobs of an ended task (a farm that has run for a while), so the
figure can be compared with the one on an empty database.
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

from common.db.models import job_attempts, jobs, tasks
from common.dsm import DsmClient, DsmFile
from common.pilot_protocol import ExchangeReport, ExchangeRequest, JobBeat, PilotRegistration
from pilot.channels.mq import MqChannel
from pilot.channels.rest import RestChannel
from tests.conftest import PILOT_TOKEN, SERVICE_TOKEN
from tests.e2e.processes import Deployment


async def simulated_pilot(n: int, d: Deployment, server: str, channel_kind: str, slots: int,
                          running_at: dict[int, float], stop: asyncio.Event) -> int:
    channel = (RestChannel(d.url(server), PILOT_TOKEN, 60) if channel_kind == "rest"
               else MqChannel(AMQP, d.env["WMS_BROKER_NAMESPACE"], PILOT_TOKEN, 60))
    session = await channel.register(PilotRegistration(host=f"sim{n}", resource_type="cpu", cores=slots,
                                                       memory_mb=1000 * slots, slots=slots, version="bench"))
    holds = slots + session.prefetch
    done = 0
    held: list[JobBeat] = []  # claimed by the last exchange: reported running and finished in this one
    try:
        while not stop.is_set():
            # a no-op job starts and ends between two cycles: both reports travel in one exchange, in order
            reports = [ExchangeReport(job_id=j.job_id, attempt=j.attempt, state=state, exit_code=0)
                       for j in held for state in ("running", "finished")]
            now = time.time()
            for j in held:
                running_at[j.job_id] = now
            done += len(held)
            reply = await channel.exchange(ExchangeRequest(
                reports=reports, want=holds, request_id=uuid.uuid4(), wait_s=0.0 if reports else 1.0))
            held = [JobBeat(job_id=j.job_id, attempt=j.attempt) for j in reply.jobs]
    finally:
        await channel.close()
    return done


HISTORY_TASK = sa.text("""
    INSERT INTO task_dat (name, task_type, input_dataset, output_dataset, payload, resource_type, cores, memory_mb,
                          split_by, split_size, max_attempts, priority, request_hash, status, files_total,
                          jobs_total, jobs_registered, finished_at, output_closed_at)
    VALUES ('history', 'history', 'history.in', 'history.out', '{"command": "true"}', 'cpu', 1, 500, 'files', 1, 1,
            1, 'history', 'done', :n, :n, :n, now() - interval '1 day', now() - interval '1 day')
    RETURNING id""")
HISTORY_JOBS = sa.text("""
    INSERT INTO job_dat (task_id, status, attempt, resource_type, priority, n_files, created_at, queued_at,
                         started_at, heartbeat_at, finished_at, exit_code)
    SELECT :task, 'finished', 1, 'cpu', 1, 1, t, t, t, t, t + interval '1 second', 0
      FROM (SELECT now() - interval '2 days' + g * interval '10 ms' AS t
              FROM generate_series(1, :n) AS g) AS s""")


async def fill_history(engine: sa.ext.asyncio.AsyncEngine, n: int) -> float:
    """N finished jobs of an ended task, in batches; seconds it took."""
    start = time.perf_counter()
    async with engine.begin() as conn:
        task_id = (await conn.execute(HISTORY_TASK, {"n": n})).scalar_one()
    batch = 1_000_000
    for done in range(0, n, batch):
        async with engine.begin() as conn:
            await conn.execute(HISTORY_JOBS, {"task": task_id, "n": min(batch, n - done)})
    async with engine.connect() as conn:
        await conn.execution_options(isolation_level="AUTOCOMMIT")
        await conn.execute(sa.text("VACUUM ANALYZE job_dat"))
    return time.perf_counter() - start


def noop_file(i: int) -> DsmFile:
    return DsmFile(lfn=f"noop/{i}", url=f"file:///dev/null/{i}", size=0, adler32="00000001", events=1)


async def feed(d: Deployment, dataset: str, n_files: int, rate: float) -> None:
    """Open-loop load: files appended to the open ``dataset`` at ``rate`` per second (every 20 ms), then closed."""
    dsm = DsmClient(d.url("wms-dsm"), SERVICE_TOKEN, timeout_s=30)
    try:
        start, sent = time.perf_counter(), 0
        while sent < n_files:
            due = min(n_files, int(rate * (time.perf_counter() - start)))
            if due > sent:
                await dsm.register_files(dataset, [noop_file(i) for i in range(sent, due)])
                sent = due
            await asyncio.sleep(0.02)
        await dsm.close_dataset(dataset)
    finally:
        await dsm.close()


async def run(n_pilots: int, slots: int, n_jobs: int, channel_kind: str, floor: int, per_slot: int,
              history: int = 0, job_executors: int = 1, rate: float | None = None, prefetch: int = 0) -> dict:
    services = ("wms-dsm", "wms-task-manager", "wms-job-manager", "wms-task-executor", "wms-job-executor")
    stop = asyncio.Event()
    # open loop: the task-executor reads the growing dataset every 20 ms and relays chunks at once
    polls = {"WMS_DSM_POLL_INTERVAL_S": "0.02", "WMS_OUTBOX_POLL_INTERVAL_S": "0.02"} if rate else {
        "WMS_OUTBOX_POLL_INTERVAL_S": "0.2"}
    async with bench_deployment(services, WMS_DB_POOL_SIZE="20", WMS_BACKLOG_FLOOR=str(floor),
                                WMS_BACKLOG_PER_SLOT=str(per_slot),
                                WMS_PILOT_PREFETCH=json.dumps({"cpu": prefetch, "gpu": 0}), **polls) as (d, engine):
        history_s = await fill_history(engine, history) if history else 0.0
        replicas = ["wms-job-executor"] + [f"job-executor-{i}" for i in range(2, job_executors + 1)]
        for replica in replicas[1:]:  # REST pilots are spread over them; MQ requests go to whichever consumes
            await d.start("wms-job-executor", replica=replica)
        if rate:
            dsm = DsmClient(d.url("wms-dsm"), SERVICE_TOKEN, timeout_s=30)
            await dsm.create_dataset("bench.noop")
            await dsm.close()
        else:
            await register_dataset(d, "bench.noop", n_jobs, noop_file, timeout_s=120)
        running_at: dict[int, float] = {}
        pilots = [asyncio.create_task(simulated_pilot(i, d, replicas[i % len(replicas)], channel_kind, slots,
                                                      running_at, stop))
                  for i in range(n_pilots)]
        try:
            await asyncio.sleep(1)  # all registered and polling
            start = time.perf_counter()
            task_id = await submit(d, input_dataset="bench.noop", output_dataset="bench.out",
                                   split={"by": "files", "size": 1}, cores=1, memory_mb=500)
            feeding = asyncio.create_task(feed(d, "bench.noop", n_jobs, rate)) if rate else None
            while True:
                async with engine.connect() as conn:
                    status = (await conn.execute(sa.select(tasks.c.status).where(tasks.c.id == task_id))).scalar()
                if status in ("done", "finished"):
                    break
                await asyncio.sleep(0.05)
            elapsed = time.perf_counter() - start
            if feeding is not None:
                await feeding
        finally:
            stop.set()
            await asyncio.gather(*pilots)
        async with engine.connect() as conn:
            times = (await conn.execute(sa.select(
                jobs.c.id, sa.func.extract("epoch", jobs.c.queued_at),
                sa.func.extract("epoch", job_attempts.c.started_at))
                .join(job_attempts, sa.and_(job_attempts.c.job_id == jobs.c.id, job_attempts.c.attempt == 1))
                .where(jobs.c.task_id == task_id))).all()
        # ready (queued_at, when the job-manager registers it) -> dispatched (the first attempt's start, the claim)
        # -> the pilot's running report (the exchange after the one that gave it the job)
        pct = _percentiles([running_at[j] - float(q) for j, q, _ in times if j in running_at])
        claim = _percentiles([float(c) - float(q) for _, q, c in times if c is not None])
        return {"channel": channel_kind, "pilots": n_pilots, "slots": slots, "jobs": n_jobs,
                "job_executors": job_executors, "prefetch": prefetch, "offered_jobs_per_s": rate or "closed loop",
                "history_jobs": history, "history_fill_s": round(history_s, 1), "backlog_floor": floor,
                "backlog_per_slot": per_slot, "seconds": round(elapsed, 2),
                "jobs_per_s": round(n_jobs / elapsed), "latency_p50_ms": pct[49], "latency_p99_ms": pct[98],
                "ready_to_dispatched_p50_ms": claim[49], "ready_to_dispatched_p99_ms": claim[98],
                "status": status}


def _percentiles(seconds: list[float]) -> list[float]:
    """The 1st..99th percentiles, in milliseconds."""
    return [round(1000 * p, 1) for p in statistics.quantiles(sorted(seconds), n=100)]


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--pilots", type=int, default=100)
    parser.add_argument("--slots", type=int, default=1, help="jobs each pilot runs at once")
    parser.add_argument("--jobs", type=int, default=5000)
    parser.add_argument("--history", type=int, default=0, help="finished jobs already in JOB_DAT")
    parser.add_argument("--channel", choices=["rest", "mq"], default="rest")
    parser.add_argument("--job-executors", type=int, default=1, help="job-executor processes (replicas)")
    parser.add_argument("--rate", type=float, help="open loop: jobs made ready at this rate (files appended to an "
                        "open dataset) instead of all at once; the latency is then dispatch, not queueing")
    parser.add_argument("--backlog-floor", type=int, default=1000, help="WMS_BACKLOG_FLOOR (default as deployed)")
    parser.add_argument("--backlog-per-slot", type=int, default=2, help="WMS_BACKLOG_PER_SLOT")
    parser.add_argument("--prefetch", type=int, default=0, help="WMS_PILOT_PREFETCH of the CPU queue")
    args = parser.parse_args()
    print(json.dumps({"machine": f"{platform.machine()} {os.cpu_count()} cores", "python": platform.python_version()}))
    print(json.dumps(await run(args.pilots, args.slots, args.jobs, args.channel, args.backlog_floor,
                               args.backlog_per_slot, args.history, args.job_executors, args.rate, args.prefetch)),
          flush=True)


if __name__ == "__main__":
    asyncio.run(main())

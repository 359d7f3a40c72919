"""Load levels: the running WMS fed with the workload model's stream at increasing rates, until it saturates.

    .venv/bin/python bench/load_levels.py                       # the levels of docs/load-levels.md
    .venv/bin/python bench/load_levels.py --levels 100,400 --seconds 15 --pilots 50 --slots 8

One deployment (all services as processes, a fresh database); 50 simulated 8-slot pilots (coroutines speaking
protocol 2 over REST) that hold each job for the model's job duration, time-compressed to this machine (the
filter stage's job: ``events per file x cpu_s_per_event`` of tools/model/spd.yaml, divided by --compress). Per
level: an open dataset grows by LEVEL files (jobs) per second for --seconds, its task runs, and the script records
offered and achieved jobs/s, dispatch latency (ready -> the pilot has the job) p50/p99, the ready backlog (the
saturation: its mean and maximum while fed), pilot slot utilization, failed jobs, and each process's CPU and RSS
from /proc (the services, PostgreSQL's backends: RSS counts shared buffers in each, RabbitMQ). Prints a JSON line
per level, then a Markdown table; --plots DIR writes achieved-vs-offered and latency plots. The knee: the first
level whose last job ends more than LAG_S after its stream (work piled up), or whose p99 latency exceeds 10x the
lowest level's. --chain runs the three-stage chain instead (levels in raw files/s; every job writes a real output
file, which the job-executor verifies and registers, and the next stage reads from the DSM).
"""
from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import shutil
import statistics
import tempfile
import time
import uuid
import zlib
from pathlib import Path

import sqlalchemy as sa
from deployment import bench_deployment, submit
from dispatch_throughput import feed

from common.db.models import jobs, tasks
from common.dsm import DsmClient
from common.pilot_protocol import ExchangeReport, ExchangeRequest, JobBeat, JobSpec, PilotRegistration, StagedFile
from pilot.channels.rest import RestChannel
from tests.conftest import PILOT_TOKEN, SERVICE_TOKEN
from tests.e2e.processes import Deployment
from tools.model.model import load

SERVICES = ("wms-dsm", "wms-task-manager", "wms-job-manager", "wms-task-executor", "wms-job-executor")
TICK = os.sysconf("SC_CLK_TCK")
LAG_S = 4.0  # a level is kept up with if its last job ends within this long after the stream (pipeline drain)


class SlotMeter:
    """Busy slots of all simulated pilots, sampled."""

    def __init__(self, total: int) -> None:
        self.total, self.busy, self.samples = total, 0, []

    def sample(self) -> None:
        self.samples.append(self.busy / self.total)


def stage_output(spec: JobSpec) -> StagedFile:
    """What a job of the chain writes: one small file in its attempt's directory, named under its job."""
    path = Path(spec.output_url_prefix.removeprefix("file://")) / f"{spec.job_id}.out"
    path.parent.mkdir(parents=True, exist_ok=True)
    data = f"job {spec.job_id} of task {spec.task_id}\n".encode() * 4
    path.write_bytes(data)
    return StagedFile(lfn=f"{spec.output_dataset}/{spec.job_id}/{spec.job_id}.out", url=f"file://{path}",
                      size=len(data), adler32=f"{zlib.adler32(data) & 0xFFFFFFFF:08x}", events=1)


async def holding_pilot(n: int, d: Deployment, slots: int, job_s: float, got_at: dict[int, float],
                        meter: SlotMeter, stop: asyncio.Event, durations: dict[int, float] | None = None,
                        write_outputs: bool = False) -> None:
    """A pilot whose jobs each take ``job_s`` (or their task's duration in ``durations``): reports them running at
    once and finished when their time is up, with an output file each if ``write_outputs`` (the chain: the next
    stage reads them)."""
    channel = RestChannel(d.url("wms-job-executor"), PILOT_TOKEN, 60)
    await channel.register(PilotRegistration(host=f"sim{n}", resource_type="cpu", cores=slots,
                                             memory_mb=1000 * slots, slots=slots, version="bench"))
    held: dict[tuple[int, int], float] = {}  # (job, attempt) -> when it ends
    specs: dict[tuple[int, int], JobSpec] = {}
    fresh: list[tuple[int, int]] = []
    try:
        while not stop.is_set():
            now = time.time()
            reports = [ExchangeReport(job_id=j, attempt=a, state="running") for j, a in fresh]
            ended = [key for key, end in held.items() if end <= now]
            reports += [ExchangeReport(job_id=j, attempt=a, state="finished", exit_code=0,
                                       outputs=[stage_output(specs[(j, a)])] if write_outputs else [])
                        for j, a in ended]
            for key in ended:
                del held[key]
                specs.pop(key, None)
                meter.busy -= 1
            running = [JobBeat(job_id=j, attempt=a) for j, a in held if (j, a) not in ended]
            wait_s = 0.0 if reports else (min(held.values()) - now if held else 1.0)
            reply = await channel.exchange(ExchangeRequest(
                reports=reports, running=running, want=slots - len(held), request_id=uuid.uuid4(),
                wait_s=max(0.0, min(wait_s, 1.0))))
            now = time.time()
            fresh = []
            for spec in reply.jobs:
                got_at[spec.job_id] = now
                held[(spec.job_id, spec.attempt)] = now + (durations or {}).get(spec.task_id, job_s)
                specs[(spec.job_id, spec.attempt)] = spec
                fresh.append((spec.job_id, spec.attempt))
                meter.busy += 1
            if not reports and not reply.jobs and held:
                await asyncio.sleep(max(0.0, min(held.values()) - time.time()))
    finally:
        await channel.close()


def cpu_rss_io(pids: dict[str, list[int]]) -> dict[str, tuple[float, int, int]]:
    """CPU seconds, RSS bytes and bytes read + written from/to storage, summed over each group's processes
    (/proc/PID/stat and /proc/PID/io)."""
    found = {}
    for group, members in pids.items():
        cpu, rss, io = 0.0, 0, 0
        for pid in members:
            try:
                fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
                cpu += (int(fields[11]) + int(fields[12])) / TICK
                rss += int(fields[21]) * os.sysconf("SC_PAGE_SIZE")
                counters = dict(line.split(": ") for line in Path(f"/proc/{pid}/io").read_text().splitlines())
                io += int(counters.get("read_bytes", 0)) + int(counters.get("write_bytes", 0))
            except (OSError, IndexError, ValueError):
                continue
        found[group] = (cpu, rss, io)
    return found


def usage(before: dict[str, tuple[float, int, int]], after: dict[str, tuple[float, int, int]],
          elapsed: float) -> dict[str, dict[str, float]]:
    """Each process group's CPU (% of a core), RSS and storage I/O over a level."""
    return {group: {"cpu_percent": round(100 * (after[group][0] - before[group][0]) / elapsed, 1),
                    "rss_mb": round(after[group][1] / 2**20),
                    "io_mb_per_s": round((after[group][2] - before[group][2]) / elapsed / 2**20, 2)}
            for group in after if group in before}


def percentiles(seconds: list[float]) -> list[float]:
    return statistics.quantiles(sorted(seconds), n=100) if len(seconds) > 1 else [0.0] * 99


async def top_statements(engine, limit: int = 5) -> list[dict] | str:
    """PostgreSQL's top statements by total time since the last reset, with their buffer hits (pg_stat_statements:
    only where the server preloads it; otherwise why not)."""
    try:
        async with engine.connect() as conn:
            rows = (await conn.execute(sa.text(
                "SELECT calls, total_exec_time, shared_blks_hit, shared_blks_read, left(regexp_replace(query, "
                "'\\s+', ' ', 'g'), 70) AS query FROM pg_stat_statements WHERE query NOT ILIKE '%pg_stat_statements%' "
                "ORDER BY total_exec_time DESC LIMIT :n"), {"n": limit})).all()
    except Exception as exc:
        return f"not available ({type(exc).__name__})"
    return [{"calls": r.calls, "total_ms": round(r.total_exec_time), "hit": r.shared_blks_hit,
             "read": r.shared_blks_read, "query": r.query} for r in rows]


async def reset_statements(engine) -> None:
    try:
        async with engine.connect() as conn:
            await conn.execute(sa.text("CREATE EXTENSION IF NOT EXISTS pg_stat_statements"))
            await conn.execute(sa.text("SELECT pg_stat_statements_reset()"))
            await conn.commit()
    except Exception:
        pass


def process_groups(d: Deployment) -> dict[str, list[int]]:
    groups: dict[str, list[int]] = {name.removeprefix("wms-"): [p.pid] for name, p in d.processes.items()}
    groups["bench (pilots)"] = [os.getpid()]
    groups["postgres"], groups["rabbitmq"] = [], []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            command = (entry / "cmdline").read_bytes().split(b"\0")[0].decode(errors="replace")
        except OSError:
            continue
        if command.startswith("postgres") or "/postgres" in command:
            groups["postgres"].append(int(entry.name))
        elif "beam.smp" in command:
            groups["rabbitmq"].append(int(entry.name))
    return groups


async def run_level(d: Deployment, engine, level: int, seconds: float, meter: SlotMeter,
                    got_at: dict[int, float]) -> dict:
    name = f"level.{level}"
    dsm = DsmClient(d.url("wms-dsm"), SERVICE_TOKEN, timeout_s=30)
    await dsm.create_dataset(name)
    await dsm.close()
    n_jobs = int(level * seconds)
    groups = process_groups(d)
    await reset_statements(engine)
    before = cpu_rss_io(groups)
    start = time.perf_counter()
    task_id = await submit(d, input_dataset=name, output_dataset=f"{name}.out", split={"by": "files", "size": 1},
                           cores=1, memory_mb=500)
    feeding = asyncio.create_task(feed(d, name, n_jobs, level))
    backlog: list[int] = []
    meter.samples.clear()
    while True:
        async with engine.connect() as conn:
            status = (await conn.execute(sa.select(tasks.c.status).where(tasks.c.id == task_id))).scalar()
            if not feeding.done():
                backlog.append((await conn.execute(sa.select(sa.func.count()).where(
                    jobs.c.status == "ready"))).scalar_one())
        if not feeding.done():
            meter.sample()
        if status in ("done", "finished", "failed"):
            break
        await asyncio.sleep(0.25)
    elapsed = time.perf_counter() - start
    await feeding
    after = cpu_rss_io(groups)
    statements = await top_statements(engine)
    async with engine.connect() as conn:
        rows = (await conn.execute(sa.select(jobs.c.id, jobs.c.status, sa.func.extract("epoch", jobs.c.queued_at))
                                   .where(jobs.c.task_id == task_id))).all()
        first_ready, last_end = (await conn.execute(sa.select(
            sa.func.extract("epoch", sa.func.min(jobs.c.queued_at)),
            sa.func.extract("epoch", sa.func.max(jobs.c.finished_at))).where(jobs.c.task_id == task_id))).one()
    # the WMS's rate over the stream it was given: first job ready -> last job finished (a level that keeps up
    # spans the feeding time plus one job's duration)
    span = max(float(last_end or 0) - float(first_ready or 0), 1e-3)
    latencies = sorted(got_at[j] - float(q) for j, _, q in rows if j in got_at)
    pct = percentiles(latencies)
    process = usage(before, after, elapsed)
    return {"offered_jobs_per_s": level, "jobs": n_jobs, "seconds": round(elapsed, 1),
            "achieved_jobs_per_s": round(sum(1 for _, s, _ in rows if s == "finished") / span, 1),
            "stream_span_s": round(span, 1), "lag_s": round(span - seconds, 1),
            "failed_jobs": sum(1 for _, s, _ in rows if s == "failed"), "status": status,
            "latency_p50_ms": round(1000 * pct[49], 1), "latency_p99_ms": round(1000 * pct[98], 1),
            "backlog_mean": round(statistics.fmean(backlog), 1) if backlog else 0,
            "backlog_max": max(backlog, default=0),
            "slot_utilization": round(statistics.fmean(meter.samples), 3) if meter.samples else 0.0,
            "processes": process, "top_statements": statements}


CHAIN = (("unscramble", 1), ("filter", 1), ("merge", 20))  # stage, files per job (tools/model/spd.yaml)


async def run_chain_level(d: Deployment, engine, level: int, seconds: float, meter: SlotMeter,
                          got_at: dict[int, float], durations: dict[int, float], stage_s: dict[str, float]) -> dict:
    """The three-stage chain at ``level`` raw files per second: unscramble reads the growing raw dataset, filter
    reads unscramble's growing output, merge filter's (20 files a job); every job writes a real output file that
    the job-executor verifies and registers in the DSM, where the next stage finds it."""
    names = [f"c{level}.raw", f"c{level}.events", f"c{level}.hot", f"c{level}.merged"]
    dsm = DsmClient(d.url("wms-dsm"), SERVICE_TOKEN, timeout_s=30)
    await dsm.create_dataset(names[0])
    await dsm.close()
    groups = process_groups(d)
    await reset_statements(engine)
    before = cpu_rss_io(groups)
    start = time.perf_counter()
    task_ids = []
    for (stage, files_per_job), source, target in zip(CHAIN, names[:-1], names[1:], strict=True):
        task_id = await submit(d, input_dataset=source, output_dataset=target,
                               split={"by": "files", "size": files_per_job}, cores=1, memory_mb=500)
        durations[task_id] = stage_s[stage]
        task_ids.append(task_id)
    feeding = asyncio.create_task(feed(d, names[0], int(level * seconds), level))
    backlog: list[int] = []
    meter.samples.clear()
    while True:
        async with engine.connect() as conn:
            statuses = dict((await conn.execute(sa.select(tasks.c.id, tasks.c.status)
                                                .where(tasks.c.id.in_(task_ids)))).all())
            if not feeding.done():
                backlog.append((await conn.execute(sa.select(sa.func.count()).where(
                    jobs.c.status == "ready"))).scalar_one())
        if not feeding.done():
            meter.sample()
        if all(statuses[t] in ("done", "finished", "failed", "cancelled") for t in task_ids):
            break
        if time.perf_counter() - start > 10 * seconds + 180:
            break  # reported as not ended
        await asyncio.sleep(0.25)
    elapsed = time.perf_counter() - start
    await feeding
    after = cpu_rss_io(groups)
    statements = await top_statements(engine)
    stages = {}
    all_latencies: list[float] = []
    async with engine.connect() as conn:
        for (stage, _), task_id in zip(CHAIN, task_ids, strict=True):
            rows = (await conn.execute(sa.select(jobs.c.id, jobs.c.status,
                                                 sa.func.extract("epoch", jobs.c.queued_at))
                                       .where(jobs.c.task_id == task_id))).all()
            latencies = [got_at[j] - float(q) for j, _, q in rows if j in got_at and q is not None]
            all_latencies += latencies
            stages[stage] = {"jobs": len(rows), "finished": sum(1 for _, s, _ in rows if s == "finished"),
                             "failed": sum(1 for _, s, _ in rows if s == "failed"), "status": statuses[task_id]}
        first_ready, last_end = (await conn.execute(sa.select(
            sa.func.extract("epoch", sa.func.min(jobs.c.queued_at)),
            sa.func.extract("epoch", sa.func.max(jobs.c.finished_at))).where(jobs.c.task_id.in_(task_ids)))).one()
    span = max(float(last_end or 0) - float(first_ready or 0), 1e-3)
    pct = percentiles(all_latencies)
    finished = sum(s["finished"] for s in stages.values())
    return {"raw_files_per_s": level, "offered_jobs_per_s": round(level * sum(1 / n for _, n in CHAIN), 1),
            "seconds": round(elapsed, 1), "stream_span_s": round(span, 1), "lag_s": round(span - seconds, 1),
            "achieved_jobs_per_s": round(finished / span, 1), "stages": stages,
            "failed_jobs": sum(s["failed"] for s in stages.values()),
            "status": "/".join(s["status"] for s in stages.values()),
            "latency_p50_ms": round(1000 * pct[49], 1), "latency_p99_ms": round(1000 * pct[98], 1),
            "backlog_mean": round(statistics.fmean(backlog), 1) if backlog else 0,
            "backlog_max": max(backlog, default=0),
            "slot_utilization": round(statistics.fmean(meter.samples), 3) if meter.samples else 0.0,
            "processes": usage(before, after, elapsed),
            "top_statements": statements}


def knee(results: list[dict]) -> int | None:
    """The first level the WMS did not keep up with: its last job finished more than LAG_S after the stream
    ended (the work piled up), or its p99 latency is 10x the lowest level's."""
    base = max(results[0]["latency_p99_ms"], 1.0)
    for r in results:
        if r["lag_s"] > LAG_S or r["latency_p99_ms"] > 10 * base:
            return r["offered_jobs_per_s"]
    return None


def table(results: list[dict]) -> str:
    lines = ["| offered jobs/s | achieved | lag | p50 | p99 | ready backlog mean / max | slot use | failed | CPU % "
             "(job-executor, PostgreSQL, RabbitMQ, other services, simulated pilots) | PostgreSQL I/O MB/s |",
             "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |"]
    for r in results:
        p = r["processes"]
        others = sum(v["cpu_percent"] for k, v in p.items()
                     if k not in ("job-executor", "postgres", "rabbitmq", "bench (pilots)"))
        cpu = {k: p.get(k, {}).get("cpu_percent", 0) for k in ("job-executor", "postgres", "rabbitmq")}
        lines.append(f"| {r['offered_jobs_per_s']} | {r['achieved_jobs_per_s']} | {r['lag_s']} s | "
                     f"{r['latency_p50_ms']:.0f} ms | "
                     f"{r['latency_p99_ms']:.0f} ms | {r['backlog_mean']} / {r['backlog_max']} | "
                     f"{100 * r['slot_utilization']:.0f}% | {r['failed_jobs']} | "
                     f"{cpu['job-executor']}, {cpu['postgres']}, {cpu['rabbitmq']}, {others:.1f}, "
                     f"{p.get('bench (pilots)', {}).get('cpu_percent', 0)} | "
                     f"{p.get('postgres', {}).get('io_mb_per_s', 0)} |")
    return "\n".join(lines)


def plot(results: list[dict], directory: Path, chain: bool = False) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    directory.mkdir(parents=True, exist_ok=True)
    offered = [r["offered_jobs_per_s"] for r in results]
    figure, (left, right) = plt.subplots(1, 2, figsize=(11, 4.2))
    left.plot(offered, [r["achieved_jobs_per_s"] for r in results], marker="o", label="achieved")
    left.plot(offered, offered, linestyle="--", color="grey", label="offered")
    left.set_xlabel("offered jobs/s")
    left.set_ylabel("jobs/s")
    left.legend()
    left.grid(True, alpha=0.3)
    right.plot(offered, [r["latency_p50_ms"] for r in results], marker="o", label="p50")
    right.plot(offered, [r["latency_p99_ms"] for r in results], marker="o", label="p99")
    right.set_xlabel("offered jobs/s")
    right.set_ylabel("ready -> pilot has the job (ms)")
    right.set_yscale("log")
    right.legend()
    right.grid(True, alpha=0.3)
    figure.suptitle(f"WMS load levels{' (the three-stage chain)' if chain else ''} (50 pilots x 8 slots, "
                    "this 2-core machine)")
    figure.tight_layout()
    figure.savefig(directory / ("load-levels-chain.png" if chain else "load-levels.png"), dpi=110)
    plt.close(figure)


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--levels", default="50,100,200,400,700,1000,1400")
    parser.add_argument("--seconds", type=float, default=15.0, help="how long each level is fed")
    parser.add_argument("--pilots", type=int, default=50)
    parser.add_argument("--slots", type=int, default=8)
    parser.add_argument("--compress", type=float, default=200.0,
                        help="time compression of the model's job duration (filter: 60 s of CPU -> 0.3 s)")
    parser.add_argument("--plots", type=Path)
    parser.add_argument("--chain", action="store_true",
                        help="the three-stage chain (levels are raw files/s; every job writes a real output file)")
    args = parser.parse_args()
    model = load()
    d_ = model.detector
    events_per_file = d_.events_per_slice * d_.slices_per_file
    filter_stage = next(s for s in model.stages if s.name == "filter")
    job_s = events_per_file * filter_stage.cpu_s_per_event / args.compress
    # each stage's job, compressed like the filter's: CPU per event, or per GB read (merge: 20 filtered files)
    stage_s = {}
    for stage, files_per_job in CHAIN:
        params = next(s for s in model.stages if s.name == stage)
        keep = filter_stage.keep_fraction if stage == "merge" else 1.0
        gb = files_per_job * d_.raw_file_bytes * keep / 1e9
        stage_s[stage] = (events_per_file * keep * files_per_job * params.cpu_s_per_event
                          + gb * params.cpu_s_per_gb) / args.compress
    print(json.dumps({"machine": f"{platform.machine()} {os.cpu_count()} cores", "python": platform.python_version(),
                      "pilots": args.pilots, "slots": args.slots, "job_s": round(job_s, 3),
                      "model_job_cpu_s": events_per_file * filter_stage.cpu_s_per_event,
                      "chain_job_s": {k: round(v, 4) for k, v in stage_s.items()} if args.chain else None}),
          flush=True)
    durations: dict[int, float] = {}
    stop = asyncio.Event()
    got_at: dict[int, float] = {}
    meter = SlotMeter(args.pilots * args.slots)
    polls = {"WMS_DSM_POLL_INTERVAL_S": "0.05", "WMS_OUTBOX_POLL_INTERVAL_S": "0.05"}
    results = []
    storage = tempfile.mkdtemp(prefix="wms-levels-storage-")
    async with bench_deployment(SERVICES, WMS_DB_POOL_SIZE="20", WMS_STORAGE_ROOT=storage, **polls) as (d, engine):
        pilots = [asyncio.create_task(holding_pilot(i, d, args.slots, job_s, got_at, meter, stop, durations,
                                                    write_outputs=args.chain))
                  for i in range(args.pilots)]
        try:
            await asyncio.sleep(1)
            for level in (int(x) for x in args.levels.split(",")):
                result = (await run_chain_level(d, engine, level, args.seconds, meter, got_at, durations, stage_s)
                          if args.chain else await run_level(d, engine, level, args.seconds, meter, got_at))
                results.append(result)
                print(json.dumps(result), flush=True)
        finally:
            stop.set()
            await asyncio.gather(*pilots, return_exceptions=True)
    shutil.rmtree(storage, ignore_errors=True)
    print(table(results))
    print(f"knee: {knee(results) or 'not reached'} jobs/s offered")
    if args.plots:
        plot(results, args.plots, args.chain)


if __name__ == "__main__":
    asyncio.run(main())

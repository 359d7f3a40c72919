"""The dispatch goals of issue 23, measured in one invocation against the Celery peer on the same machine.

    .venv/bin/pip install -e '.[bench]'
    .venv/bin/python bench/goals.py [--history 10000000] [--out docs/figures/dispatch-goals.json]

Runs, one after the other (each a fresh deployment: bench/dispatch_throughput.py as a process): the Celery peer,
100 pilots x 8 slots over REST and over RabbitMQ, 100 x 1 without and with prefetch (REST and RabbitMQ), the open
loop at half the 100 x 8 REST rate, the same 100 x 8 REST run with --history finished jobs in JOB_DAT first
(0: skipped), and the Celery peer again. Prints each run's JSON as it ends, then the goals table (markdown);
--out keeps every figure. Numbers are never asserted: this machine's figures move between runs.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
PYTHON = sys.executable


def run(script: str, *args: str) -> dict[str, Any]:
    started = time.perf_counter()
    done = subprocess.run([PYTHON, str(HERE / script), *args], capture_output=True, text=True, timeout=1800,
                          cwd=HERE.parent)
    if done.returncode != 0:
        raise RuntimeError(f"{script} {' '.join(args)} failed:\n{done.stderr[-3000:]}")
    figures: dict[str, Any] = json.loads(done.stdout.strip().splitlines()[-1])
    figures["run"] = f"{script} {' '.join(args)}"
    figures["wall_s"] = round(time.perf_counter() - started, 1)
    print(json.dumps(figures), flush=True)
    return figures


def wms(*args: str) -> dict[str, Any]:
    return run("dispatch_throughput.py", *args)


def ratio(a: float, b: float) -> str:
    return f"{a / b:.2f}x"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--jobs", type=int, default=20000, help="jobs of the 8-slot runs (the 1-slot ones: half)")
    parser.add_argument("--prefetch", type=int, default=7, help="WMS_PILOT_PREFETCH of the prefetch runs")
    parser.add_argument("--history", type=int, default=10_000_000, help="finished jobs of the history run (0: none)")
    parser.add_argument("--out", type=Path, help="write every run's figures here (JSON)")
    args = parser.parse_args()
    jobs, small = str(args.jobs), str(args.jobs // 2)
    machine = {"machine": f"{platform.machine()} {os.cpu_count()} cores", "python": platform.python_version(),
               "date": time.strftime("%Y-%m-%d")}
    print(json.dumps(machine), flush=True)

    celery_first = run("celery_peer.py", "--tasks", jobs)
    rest8 = wms("--pilots", "100", "--slots", "8", "--jobs", jobs)
    mq8 = wms("--pilots", "100", "--slots", "8", "--jobs", jobs, "--channel", "mq")
    rest1 = wms("--pilots", "100", "--slots", "1", "--jobs", small)
    rest1p = wms("--pilots", "100", "--slots", "1", "--jobs", small, "--prefetch", str(args.prefetch))
    mq1p = wms("--pilots", "100", "--slots", "1", "--jobs", small, "--prefetch", str(args.prefetch), "--channel", "mq")
    half = rest8["jobs_per_s"] / 2
    open_loop = wms("--pilots", "100", "--slots", "8", "--jobs", small, "--rate", str(round(half)))
    history = wms("--pilots", "100", "--slots", "8", "--jobs", jobs, "--history", str(args.history)) \
        if args.history else None
    celery_last = run("celery_peer.py", "--tasks", jobs)

    celery = statistics.mean([celery_first["tasks_per_s"], celery_last["tasks_per_s"]])
    rows = [
        ("100 pilots x 8 slots, no-op jobs, full tracking (REST)", ratio(rest8["jobs_per_s"], celery), ">= 10x"),
        ("100 pilots x 1 slot, prefetch " + str(args.prefetch) + " (REST)", ratio(rest1p["jobs_per_s"], celery),
         ">= 2x"),
        ("100 pilots x 1 slot, prefetch " + str(args.prefetch) + " (RabbitMQ)", ratio(mq1p["jobs_per_s"], celery),
         ">= 2x"),
        (f"p99 ready -> running at half the saturation rate (open loop, {round(half)} jobs/s offered)",
         f"{open_loop['latency_p99_ms']:.0f} ms (ready -> dispatched p99 {open_loop['ready_to_dispatched_p99_ms']:.0f}"
         " ms)", "< 50 ms"),
        ("MQ against REST (100 x 8)", f"{100 * (mq8['jobs_per_s'] / rest8['jobs_per_s'] - 1):+.0f}%", "within 10%"),
    ]
    if history is not None:
        rows.append((f"{args.history:,} finished jobs in JOB_DAT (100 x 8 REST)",
                     f"{100 * (history['jobs_per_s'] / rest8['jobs_per_s'] - 1):+.0f}%", "within 10%"))
    print()
    print(f"Celery peer: {celery_first['tasks_per_s']} and {celery_last['tasks_per_s']} tasks/s (mean {celery:.0f}); "
          f"WMS 100 x 8 REST {rest8['jobs_per_s']}, MQ {mq8['jobs_per_s']}; 100 x 1 REST {rest1['jobs_per_s']} "
          f"(prefetch {args.prefetch}: REST {rest1p['jobs_per_s']}, MQ {mq1p['jobs_per_s']}) jobs/s")
    print()
    print("| figure | measured | goal |")
    print("| --- | --- | --- |")
    for figure, measured, goal in rows:
        print(f"| {figure} | {measured} | {goal} |")
    if args.out:
        runs = [celery_first, rest8, mq8, rest1, rest1p, mq1p, open_loop, *([history] if history else []),
                celery_last]
        args.out.write_text(json.dumps({**machine, "runs": runs, "goals": rows}, indent=1) + "\n")


if __name__ == "__main__":
    main()

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
import time

import sqlalchemy as sa
from deployment import bench_deployment, register_dataset, submit

from common.db.models import tasks
from common.dsm import DsmFile


def raw_file(i: int) -> DsmFile:
    return DsmFile(lfn=f"bench/raw/f{i:07d}.tsl", url=f"file:///data/bench/raw/f{i:07d}.tsl", size=1_000_000,
                   adler32=f"{i:08x}", events=100)


async def run(n_files: int, files_per_job: int, chunk_files: int) -> dict:
    services = ("wms-dsm", "wms-task-manager", "wms-job-manager", "wms-task-executor")
    async with bench_deployment(services, WMS_CHUNK_FILES=str(chunk_files),
                                WMS_BACKLOG_FLOOR=str(10 * n_files)) as (d, engine):
        t0 = time.perf_counter()
        await register_dataset(d, "bench.raw", n_files, raw_file)
        dsm_s = time.perf_counter() - t0
        start = time.perf_counter()
        task_id = await submit(d, input_dataset="bench.raw", split={"by": "files", "size": files_per_job})
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

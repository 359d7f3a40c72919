"""Celery peer of the WMS dispatch benchmark: no-op tasks through RabbitMQ, results in PostgreSQL (the SQLAlchemy
result backend), one worker with as many prefork processes as the machine has cores. Tasks per second from the
first submission to the last result.

    .venv/bin/pip install -e '.[bench]'
    .venv/bin/python bench/celery_peer.py --tasks 20000
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
import uuid
from pathlib import Path

import sqlalchemy as sa
from celery import Celery

SERVER = os.environ.get("CELERY_BENCH_DATABASE", "postgresql+psycopg2://postgres@127.0.0.1:5432")
BROKER = os.environ.get("CELERY_BENCH_BROKER", "pyamqp://guest:guest@127.0.0.1:5672//")
DATABASE = os.environ.get("CELERY_BENCH_DB_NAME", "celery_bench")

app = Celery("celery_peer", broker=BROKER, backend=f"db+{SERVER}/{DATABASE}")
app.conf.update(task_acks_late=False, worker_prefetch_multiplier=64, result_extended=False,
                broker_connection_retry_on_startup=True)


@app.task(name="noop")
def noop(i: int) -> int:
    return i


def run(n_tasks: int, processes: int) -> dict[str, object]:
    admin = sa.create_engine(f"{SERVER}/postgres", isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.execute(sa.text(f'DROP DATABASE IF EXISTS "{DATABASE}"'))
        conn.execute(sa.text(f'CREATE DATABASE "{DATABASE}"'))
    queue = f"celery-bench-{uuid.uuid4().hex[:8]}"
    worker = subprocess.Popen(
        [sys.executable, "-m", "celery", "-A", "celery_peer", "worker", "--pool", "prefork", "--concurrency",
         str(processes), "-Q", queue, "--loglevel", "WARNING", "--without-gossip", "--without-mingle"],
        cwd=Path(__file__).parent, stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT)
    try:
        noop.apply_async((0,), queue=queue).get(timeout=120)  # the worker is up and the result tables exist
        results_db = sa.create_engine(f"{SERVER}/{DATABASE}")
        start = time.perf_counter()
        for i in range(n_tasks):
            noop.apply_async((i,), queue=queue)
        # done when the backend holds every result (one count every 0.1 s: fetching 20,000 results one by one
        # would measure the client, not Celery)
        with results_db.connect() as conn:
            while conn.execute(sa.text("SELECT count(*) FROM celery_taskmeta WHERE status = 'SUCCESS'")
                               ).scalar_one() < n_tasks + 1:
                conn.commit()
                time.sleep(0.1)
        elapsed = time.perf_counter() - start
        results_db.dispose()
    finally:
        worker.terminate()
        worker.wait(timeout=60)
        with admin.connect() as conn:
            conn.execute(sa.text(f'DROP DATABASE IF EXISTS "{DATABASE}" WITH (FORCE)'))
    return {"system": "celery", "celery": __import__("celery").__version__, "processes": processes,
            "tasks": n_tasks, "seconds": round(elapsed, 2), "tasks_per_s": round(n_tasks / elapsed)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--tasks", type=int, default=20000)
    parser.add_argument("--processes", type=int, default=os.cpu_count() or 1)
    args = parser.parse_args()
    print(json.dumps(run(args.tasks, args.processes)), flush=True)


if __name__ == "__main__":
    main()

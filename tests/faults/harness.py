"""What every fault scenario shares: a whole WMS as OS processes (five services, pilots running a real payload),
a task of a few hundred real files, and the end-of-run audit the reliability issue asks for:

- the task is done; every input file is in exactly one finished job;
- every output is registered exactly once in FILE_DAT and in the DSM, and exists on storage with the registered
  size and adler32;
- no message is left in a dead-letter queue; every service is ready again.

Each scenario also records its recovery time (fault end -> first job finished after it) in the JSON-lines file
named by WMS_FAULT_REPORT, if set (docs/reliability.md is made from it).
"""
from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import json
import os
import signal
import subprocess
import sys
import time
import uuid
import zlib
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path

import aio_pika
import httpx
import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncEngine, create_async_engine

from common.broker import Topology, broker_urls
from common.db.models import files, job_attempts, jobs, pilots, tasks
from common.dsm import DsmClient, DsmFile
from tests.conftest import PILOT_TOKEN, SERVICE_TOKEN, WFMS_TOKEN, create_database, drop_database, wait_for
from tests.e2e.processes import Deployment
from tests.factories import task_description

SERVICES = ("wms-dsm", "wms-task-manager", "wms-job-manager", "wms-task-executor", "wms-job-executor")
WFMS = {"Authorization": f"Bearer {WFMS_TOKEN}"}
N_FILES = 200
FILES_PER_JOB = 2
N_JOBS_DEFAULT = N_FILES // FILES_PER_JOB
# Fast oversight so a scenario runs in seconds: pilots beat every 0.5 s and are dead after 3 s of silence.
FAST = {
    "WMS_HEARTBEAT_INTERVAL_S": "0.5", "WMS_PILOT_TIMEOUT_S": "3", "WMS_RETRY_BACKOFF_S": "0.2",
    "WMS_RETRY_BACKOFF_MAX_S": "1", "WMS_OVERSIGHT_INTERVAL_S": "0.2", "WMS_CHUNK_FILES": "50",
    "WMS_DSM_POLL_INTERVAL_S": "0.3", "WMS_TRANSIENT_RETRY_MAX_S": "2", "WMS_DSM_RETRY_MAX_S": "2",
    "WMS_BROKER_RECONNECT_MAX_S": "1", "WMS_DB_CONNECT_TIMEOUT_S": "2", "WMS_DB_STATEMENT_TIMEOUT_S": "10",
    "WMS_DSM_TIMEOUT_S": "5", "WMS_OUTBOX_RETRY_MAX_S": "2",
}

# Copies each input (upper-cased) to the output directory after an optional pause; writes an events manifest.
PAYLOAD = """
import json, os, pathlib, sys, time
time.sleep(float(os.environ.get("PAYLOAD_SLEEP_S", "0")))
out = pathlib.Path(os.environ["WMS_OUTPUT_DIR"])
manifest = {}
for name in sys.argv[1:]:
    target = out / (pathlib.Path(name).stem + ".out")
    target.write_bytes(pathlib.Path(name).read_bytes().upper())
    manifest[target.name] = {"events": 1}
pathlib.Path(os.environ["WMS_WORKDIR"], "outputs.json").write_text(json.dumps(manifest))
"""


def copy_payload(sleep_s: float = 0.2) -> dict:
    return {"command": sys.executable, "args": ["-c", PAYLOAD, "{inputs}"], "env": {"PAYLOAD_SLEEP_S": str(sleep_s)}}


def adler32_of(path: Path) -> str:
    return f"{zlib.adler32(path.read_bytes()) & 0xFFFFFFFF:08x}"


async def connect_any(amqp_url: str) -> aio_pika.abc.AbstractConnection:
    """A connection to the first node of ``amqp_url`` (one URL, or a cluster's, comma-separated) that answers."""
    error: Exception | None = None
    for url in broker_urls(amqp_url):
        try:
            return await aio_pika.connect(url, timeout=10)
        except Exception as exc:  # that node is down: the next one
            error = exc
    raise AssertionError(f"no broker node answers: {error}")


@dataclass
class FaultRun:
    deployment: Deployment
    engine: AsyncEngine
    dsm: DsmClient
    amqp_url: str
    tmp: Path
    pilots: list[subprocess.Popen] = field(default_factory=list)

    async def start_services(self, *names: str, **env: str) -> None:
        for name in names or SERVICES:
            await self.deployment.start(name, **env)

    def start_pilot(self, channel: str = "rest", **env: str) -> subprocess.Popen:
        n = len(self.pilots)
        d = self.deployment
        process = subprocess.Popen(
            [sys.executable, "-m", "pilot.app"],
            env={**d.env, "WMS_PILOT_CHANNEL": channel, "WMS_PILOT_SERVER_URL": d.url("wms-job-executor"),
                 "WMS_PILOT_AMQP_URL": self.amqp_url, "WMS_PILOT_BROKER_NAMESPACE": d.env["WMS_BROKER_NAMESPACE"],
                 "WMS_PILOT_TOKEN": PILOT_TOKEN, "WMS_PILOT_WORKDIR": str(self.tmp / f"pilot{n}"),
                 "WMS_PILOT_RESOURCE_TYPE": "cpu", "WMS_PILOT_GPUS": "0", "WMS_PILOT_CORES": "1",
                 "WMS_PILOT_HOST": f"wn{n}", "WMS_PILOT_IDLE_POLL_S": "0.2", "WMS_PILOT_IDLE_LIMIT_S": "600",
                 "WMS_PILOT_REQUEST_TIMEOUT_S": "5", "WMS_PILOT_RETRY_MAX_S": "1", **env},
            stdout=(self.tmp / f"pilot{n}.log").open("w"), stderr=subprocess.STDOUT, start_new_session=True,
        )
        self.pilots.append(process)
        return process

    async def make_dataset(self, name: str, n: int = N_FILES, size: int = 0) -> None:
        directory = self.tmp / "data" / name
        directory.mkdir(parents=True, exist_ok=True)
        entries = []
        for i in range(n):
            data = (f"file {i} of {name}\n" * max(1, size // 20)).encode()[: size or None]
            path = directory / f"f{i:05d}.dat"
            path.write_bytes(data)
            entries.append(DsmFile(lfn=f"{name}/f{i:05d}.dat", url=f"file://{path}", size=len(data),
                                   adler32=f"{zlib.adler32(data) & 0xFFFFFFFF:08x}", events=1))
        await self.dsm.create_dataset(name)
        await self.dsm.register_files(name, entries)
        await self.dsm.close_dataset(name)

    async def submit(self, input_dataset: str, output_dataset: str, **overrides: object) -> int:
        body = task_description(**{"input_dataset": input_dataset, "output_dataset": output_dataset,
                                   "payload": copy_payload(), "split": {"by": "files", "size": FILES_PER_JOB},
                                   "max_attempts": 3, **overrides})
        async with httpx.AsyncClient(base_url=self.deployment.url("wms-task-manager"), timeout=30) as client:
            response = await client.post("/api/v1/tasks", json=body, headers=WFMS)
        assert response.status_code == 201, response.text
        return response.json()["id"]

    async def task_under_way(self, name: str, channels: tuple[str, ...] = ("rest", "rest", "mq", "mq")) -> int:
        """Services up, a dataset ``raw.<name>``, its task writing ``out.<name>``, pilots of both channels, and
        a quarter of its jobs finished: the moment to inject a fault."""
        await self.start_services()
        await self.make_dataset(f"raw.{name}")
        task_id = await self.submit(f"raw.{name}", f"out.{name}")
        for channel in channels:
            self.start_pilot(channel)
        await self.wait_finished_jobs(task_id, N_JOBS_DEFAULT // 4)
        return task_id

    async def task(self, task_id: int) -> sa.Row:
        async with self.engine.connect() as conn:
            return (await conn.execute(sa.select(tasks).where(tasks.c.id == task_id))).one()

    async def finished_jobs(self, task_id: int) -> int:
        async with self.engine.connect() as conn:
            return (await conn.execute(sa.select(sa.func.count()).where(
                jobs.c.task_id == task_id, jobs.c.status == "finished"))).scalar_one()

    async def wait_finished_jobs(self, task_id: int, n: int, timeout: float = 60) -> None:
        await wait_for(lambda: self._at_least(task_id, n), timeout=timeout, interval=0.1)

    async def _at_least(self, task_id: int, n: int) -> bool:
        try:
            return await self.finished_jobs(task_id) >= n
        except Exception:  # the database may be the fault being injected
            return False

    async def wait_ended(self, task_id: int, timeout: float = 180) -> sa.Row:
        async def ended() -> sa.Row | None:
            try:
                t = await self.task(task_id)
            except Exception:
                return None
            return t if t.status in ("done", "finished", "failed", "cancelled") and t.output_closed_at else None

        return await wait_for(ended, timeout=timeout, interval=0.2)

    async def recovery_s(self, fault_end: dt.datetime, channel: str | None = None) -> float:
        """Fault end -> the first job finished after it (by a pilot of ``channel``, if given)."""
        stmt = sa.select(sa.func.min(jobs.c.finished_at)).where(
            jobs.c.status == "finished", jobs.c.finished_at > fault_end)
        if channel is not None:
            stmt = stmt.join(pilots, pilots.c.id == jobs.c.pilot_id).where(pilots.c.channel == channel)
        async with self.engine.connect() as conn:
            first = (await conn.execute(stmt)).scalar_one()
        assert first is not None, "no job finished after the fault"
        return (first - fault_end).total_seconds()

    async def registration_recovery_s(self, fault_end: dt.datetime) -> float:
        """Fault end -> the first output registered in the DSM after it."""
        async with self.engine.connect() as conn:
            first = (await conn.execute(sa.select(sa.func.min(files.c.updated_at)).where(
                files.c.status == "registered", files.c.updated_at > fault_end))).scalar_one()
        assert first is not None, "no output registered after the fault"
        return (first - fault_end).total_seconds()

    async def readiness(self) -> dict[str, int]:
        """/readyz status code of every running service (0: no answer)."""
        codes = {}
        async with httpx.AsyncClient(timeout=5) as client:
            for name in self.deployment.processes:
                try:
                    codes[name] = (await client.get(self.deployment.url(name) + "/readyz")).status_code
                except httpx.TransportError:
                    codes[name] = 0
        return codes

    async def report(self, task_id: int) -> dict:
        async with httpx.AsyncClient(base_url=self.deployment.url("wms-task-manager"), timeout=30) as client:
            response = await client.get(f"/api/v1/tasks/{task_id}/report", headers=WFMS)
        assert response.status_code == 200, response.text
        return response.json()

    async def explain_a_job(self, task_id: int) -> str:
        """``wms explain`` of one of the task's jobs, as the operator reads it (the CLI as a process)."""
        async with self.engine.connect() as conn:
            job_id = (await conn.execute(sa.select(sa.func.min(jobs.c.id)).where(jobs.c.task_id == task_id))).scalar()
        done = await asyncio.to_thread(
            subprocess.run, [Path(sys.executable).parent / "wms", "explain", str(job_id)],
            env={**self.deployment.env, "WMS_CLI_URL": self.deployment.url("wms-task-manager"),
                 "WMS_CLI_TOKEN": WFMS_TOKEN, "COLUMNS": "200"},
            capture_output=True, text=True, timeout=60)
        assert done.returncode == 0, done.stdout + done.stderr
        return done.stdout

    async def attempts(self, task_id: int) -> list[sa.Row]:
        async with self.engine.connect() as conn:
            return list((await conn.execute(
                sa.select(job_attempts).join(jobs, jobs.c.id == job_attempts.c.job_id)
                .where(jobs.c.task_id == task_id))).all())

    async def audit(self, task_id: int, n_files: int = N_FILES) -> None:
        """The issue's end-of-run assertions for one task."""
        t = await self.task(task_id)
        assert t.status == "done", (t.status, t.error)
        async with self.engine.connect() as conn:
            inputs = (await conn.execute(
                sa.select(files.c.lfn, files.c.status, jobs.c.status.label("job_status"))
                .join(jobs, jobs.c.id == files.c.job_id)
                .where(files.c.task_id == task_id, files.c.role == "input"))).all()
            outputs = (await conn.execute(sa.select(files).where(
                files.c.task_id == task_id, files.c.role == "output"))).all()
        # every input file in exactly one job, and that job finished
        assert len(inputs) == n_files and len({i.lfn for i in inputs}) == n_files
        assert {(i.status, i.job_status) for i in inputs} == {("done", "finished")}
        # every output exactly once in FILE_DAT, registered, and the same in the DSM and on storage
        assert len(outputs) == n_files and len({o.lfn for o in outputs}) == n_files
        assert {o.status for o in outputs} == {"registered"}
        page = await self.dsm.list_files(t.output_dataset, after=0, limit=10_000)
        assert page.status == "closed"
        in_dsm = {f.lfn: f for f in page.items}
        assert len(page.items) == n_files and set(in_dsm) == {o.lfn for o in outputs}
        for o in outputs:
            entry = in_dsm[o.lfn]
            assert (entry.url, entry.size, entry.adler32) == (o.url, o.size, o.adler32)
            path = Path(o.url.removeprefix("file://"))
            assert path.stat().st_size == o.size and adler32_of(path) == o.adler32, o.lfn

    async def audit_attempts(self) -> list[sa.Row]:
        """Every job finished by exactly one attempt, and no attempt started before the one before it ended (never
        two at once: no job dispatched twice). The attempts, by job and attempt."""
        async with self.engine.connect() as conn:
            attempts = list((await conn.execute(sa.select(job_attempts).order_by(job_attempts.c.job_id,
                                                                                  job_attempts.c.attempt))).all())
        by_job: dict[int, list[sa.Row]] = {}
        for a in attempts:
            by_job.setdefault(a.job_id, []).append(a)
        for job_id, rows in by_job.items():
            assert sum(a.outcome == "finished" for a in rows) == 1, (job_id, rows)
            for before, after in zip(rows, rows[1:], strict=False):
                assert before.finished_at is not None and before.finished_at <= after.started_at, (job_id, rows)
        return attempts

    async def audit_system(self) -> None:
        """No dead letter anywhere; every service ready."""
        topology = Topology(self.deployment.env["WMS_BROKER_NAMESPACE"])
        connection = await connect_any(self.amqp_url)
        async with connection:
            channel = await connection.channel()
            for queue in topology.all_queues():
                if queue.endswith(".dlq"):
                    declared = await channel.declare_queue(queue, passive=True)
                    assert declared.declaration_result.message_count == 0, f"dead letters in {queue}"
        async with httpx.AsyncClient(timeout=5) as client:
            for name in self.deployment.processes:
                async def ready(name: str = name) -> bool:
                    try:
                        return (await client.get(self.deployment.url(name) + "/readyz")).status_code == 200
                    except httpx.TransportError:
                        return False
                await wait_for(ready, timeout=30)

    def pilots_alive(self) -> list[int]:
        """Exit codes of pilots that ended (a pilot must not exit because a server was briefly unavailable)."""
        return [p.returncode for p in self.pilots if p.poll() is not None]

    async def stop_pilots(self) -> None:
        for p in self.pilots:
            if p.poll() is None:
                p.send_signal(signal.SIGTERM)
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline and any(p.poll() is None for p in self.pilots):
            await asyncio.sleep(0.1)
        for p in self.pilots:
            if p.poll() is None:
                p.kill()
                p.wait()


def record(scenario: str, injected: str, outcome: str, recovery_s: float | None, lost: str = "none") -> None:
    """One row of docs/reliability.md's table (appended to WMS_FAULT_REPORT when set)."""
    row = {"scenario": scenario, "injected": injected, "outcome": outcome,
           "recovery_s": None if recovery_s is None else round(recovery_s, 2), "data_lost": lost}
    print("FAULT-REPORT", json.dumps(row))
    target = os.environ.get("WMS_FAULT_REPORT")
    if target:
        with open(target, "a") as f:
            f.write(json.dumps(row) + "\n")


def now_utc() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


@contextlib.asynccontextmanager
async def fault_run(server_url: str, amqp_url: str, tmp: Path, **env: str) -> AsyncIterator[FaultRun]:
    """A migrated database of its own on ``server_url``, a namespace of its own on ``amqp_url``."""
    from tests.conftest import delete_namespace

    database = f"wms_fault_{uuid.uuid4().hex[:8]}"
    namespace = f"f-{uuid.uuid4().hex[:10]}"
    await create_database(server_url, database)
    storage = tmp / "storage"
    d = Deployment.create(server_url, database, amqp_url, namespace, tmp,
                          WMS_STORAGE_ROOT=str(storage), **{**FAST, **env})
    d.migrate()
    engine = create_async_engine(d.env["WMS_DATABASE_URL"], pool_pre_ping=True)
    dsm = DsmClient(d.url("wms-dsm"), SERVICE_TOKEN, timeout_s=10)
    run = FaultRun(d, engine, dsm, amqp_url, tmp)
    try:
        yield run
    finally:
        await run.stop_pilots()
        d.stop_all()
        await dsm.close()
        await engine.dispose()
        with contextlib.suppress(Exception):
            await delete_namespace(amqp_url, namespace)
        with contextlib.suppress(Exception):
            await drop_database(server_url, database)

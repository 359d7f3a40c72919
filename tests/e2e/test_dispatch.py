"""Dispatch end to end: real pilot processes (REST and RabbitMQ, CPU and GPU) running real payloads."""
from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import sys

import pytest
import sqlalchemy as sa

from common.db.models import files, job_attempts, jobs, pilots
from tests.conftest import wait_for
from tests.e2e.stack import WFMS, wms_stack

pytestmark = pytest.mark.e2e

# Copies each input to the output directory, upper-cased; writes an events manifest.
COPY = """
import json, os, pathlib, sys
out = pathlib.Path(os.environ["WMS_OUTPUT_DIR"])
manifest = {}
for name in sys.argv[1:]:
    data = pathlib.Path(name).read_bytes().upper()
    target = out / (pathlib.Path(name).stem + ".out")
    target.write_bytes(data)
    manifest[target.name] = {"events": 1}
pathlib.Path(os.environ["WMS_WORKDIR"], "outputs.json").write_text(json.dumps(manifest))
print("copied", len(sys.argv) - 1)
"""


def copy_payload() -> dict:
    return {"command": sys.executable, "args": ["-c", COPY, "{inputs}"], "env": {}}


async def test_task_runs_to_done_on_rest_mq_and_gpu_pilots(settings, db, tmp_path) -> None:
    async with wms_stack(settings, db, tmp_path) as stack:
        await stack.make_dataset("raw.a", 30)
        task_id = await stack.submit(input_dataset="raw.a", output_dataset="out.a", payload=copy_payload(),
                                     split={"by": "files", "size": 2})
        stack.start_pilot("rest")
        stack.start_pilot("mq")
        stack.start_pilot("rest", resource_type="gpu")
        await wait_for(lambda: stack.ended(task_id), timeout=60)

        t = await stack.task(task_id)
        assert t.status == "done"
        async with db.connect() as conn:
            outputs = (await conn.execute(sa.select(files).where(files.c.task_id == task_id,
                                                                 files.c.role == "output"))).all()
            logs = (await conn.execute(sa.select(sa.func.count()).where(files.c.task_id == task_id,
                                                                        files.c.role == "log"))).scalar()
            inputs_done = (await conn.execute(sa.select(files.c.status).where(
                files.c.task_id == task_id, files.c.role == "input"))).scalars().all()
            channels = set((await conn.execute(sa.select(pilots.c.channel, pilots.c.resource_type).join(
                jobs, jobs.c.pilot_id == pilots.c.id).where(jobs.c.task_id == task_id))).all())
        assert sorted(f.lfn.rsplit("/", 1)[1] for f in outputs) == [f"f{i:05d}.out" for i in range(30)]
        assert all(f.status == "registered" for f in outputs) and logs == 15
        assert set(inputs_done) == {"done"}
        assert {c for c, _ in channels} == {"rest", "mq"}  # both channels did work
        # the outputs are really the payload's work, with their checksums
        first = next(f for f in outputs if f.lfn.endswith("f00000.out"))
        assert open(first.url.removeprefix("file://"), "rb").read() == b"FILE 0 OF RAW.A\n"

        dataset = await stack.dsm.dataset("out.a")
        assert dataset.status == "closed" and dataset.n_files == 30
        logs_dataset = await stack.dsm.dataset("out.a.log")
        assert logs_dataset.status == "closed" and logs_dataset.n_files == 15
        report = (await stack.task_manager.get(f"/api/v1/tasks/{task_id}/report", headers=WFMS)).json()
        assert report["final"] and report["files"]["done"] == 30 and report["outputs"]["files"] == 30
        assert report["jobs"]["finished"] == 15 and report["failures"] == []



# Sleeps (so it can be killed mid-job) with a child, then copies like COPY. The test finds its processes by the
# SLOW_MARK in their environment (host pids: a sandboxed payload sees only its own PID namespace).
SLOW = """
import os, pathlib, subprocess, sys, time, json
child = subprocess.Popen(["sleep", "300"])
time.sleep(float(os.environ.get("SLEEP_S", "2")))
child.kill()
out = pathlib.Path(os.environ["WMS_OUTPUT_DIR"])
for name in sys.argv[1:]:
    (out / (pathlib.Path(name).stem + ".out")).write_bytes(pathlib.Path(name).read_bytes())
"""


def slow_payload(mark, sleep_s: float) -> dict:
    return {"command": sys.executable, "args": ["-c", SLOW, "{inputs}"],
            "env": {"SLOW_MARK": str(mark), "SLEEP_S": str(sleep_s)}}


def slow_payloads(mark) -> dict[str, list[int]]:
    """The running SLOW payloads of ``mark``: job.attempt -> host pids of the payload and its sleeping child (the
    sandbox's own helpers, bubblewrap, left out)."""
    wanted = f"SLOW_MARK={mark}".encode()
    found: dict[str, list[int]] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/environ", "rb") as f:
                env = f.read().split(b"\0")
            with open(f"/proc/{entry}/comm", "rb") as f:
                comm = f.read().strip()
        except OSError:
            continue
        if wanted in env and comm != b"bwrap" and alive(int(entry)):
            values = dict(v.split(b"=", 1) for v in env if b"=" in v)
            key = f"{values[b'WMS_JOB_ID'].decode()}.{values[b'WMS_ATTEMPT'].decode()}"
            found.setdefault(key, []).append(int(entry))
    return {key: pids for key, pids in found.items() if len(pids) >= 2}


async def attempts_of(db, task_id: int) -> list[sa.Row]:
    async with db.connect() as conn:
        return list((await conn.execute(
            sa.select(job_attempts).join(jobs, jobs.c.id == job_attempts.c.job_id)
            .where(jobs.c.task_id == task_id).order_by(job_attempts.c.job_id, job_attempts.c.attempt))).all())


async def output_lfns(db, task_id: int) -> list[str]:
    async with db.connect() as conn:
        return list((await conn.execute(sa.select(files.c.lfn).where(
            files.c.task_id == task_id, files.c.role == "output"))).scalars())


def alive(pid: int) -> bool:
    """Running (a zombie waiting for its parent, or for this machine's init, to reap it counts as dead)."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except FileNotFoundError:
        return False


async def test_sigkilled_pilot_job_is_retried_elsewhere_without_duplicate_output(settings, db, tmp_path) -> None:
    async with wms_stack(settings, db, tmp_path) as stack:
        await stack.make_dataset("raw.k", 1)
        task_id = await stack.submit(input_dataset="raw.k", output_dataset="out.k",
                                     payload=slow_payload(tmp_path / "pids", 2), split={"by": "files", "size": 1})
        victim = stack.start_pilot("rest")
        await wait_for(lambda: _has_pid_files(tmp_path / "pids", 1))
        victim.kill()  # SIGKILL mid-job
        victim.wait()
        stack.start_pilot("rest")
        await wait_for(lambda: stack.ended(task_id), timeout=60)
        assert (await stack.task(task_id)).status == "done"
        attempts = await attempts_of(db, task_id)
        assert [(a.attempt, a.outcome) for a in attempts] == [(1, "lost"), (2, "finished")]
        assert attempts[0].pilot_id != attempts[1].pilot_id
        assert await output_lfns(db, task_id) == ["out.k/1/f00000.out"]


async def _has_pid_files(mark, n: int) -> bool:
    return len(slow_payloads(mark)) >= n


FLAKY = """
import os, pathlib, sys
attempt = int(os.environ["WMS_ATTEMPT"])
if "always" in sys.argv[1] or attempt < 3:
    print("failing attempt", attempt)
    sys.exit(7)
(pathlib.Path(os.environ["WMS_OUTPUT_DIR"]) / "ok.out").write_text("ok")
"""


async def test_retries_until_success_and_exhausted_attempts_fail_the_file(settings, db, tmp_path) -> None:
    async with wms_stack(settings, db, tmp_path) as stack:
        await stack.make_dataset("raw.f", 2)
        flaky = await stack.submit(input_dataset="raw.f", output_dataset="out.flaky", max_attempts=3,
                                   payload={"command": sys.executable, "args": ["-c", FLAKY, "{inputs}"]},
                                   split={"by": "files", "size": 2})
        broken = await stack.submit(input_dataset="raw.f", output_dataset="out.broken", max_attempts=3,
                                    payload={"command": sys.executable, "args": ["-c", FLAKY, "always"]},
                                    split={"by": "files", "size": 2})
        stack.start_pilot("rest")
        stack.start_pilot("mq")
        await wait_for(lambda: stack.ended(flaky), timeout=60)
        await wait_for(lambda: stack.ended(broken), timeout=60)

        assert (await stack.task(flaky)).status == "done"
        assert [(a.attempt, a.outcome, a.exit_code) for a in await attempts_of(db, flaky)] == [
            (1, "failed", 7), (2, "failed", 7), (3, "finished", 0)]
        assert (await stack.task(broken)).status == "failed"  # its only job failed: nothing was produced
        assert "no job finished" in (await stack.task(broken)).error
        assert [a.outcome for a in await attempts_of(db, broken)] == ["failed"] * 3
        report = (await stack.task_manager.get(f"/api/v1/tasks/{broken}/report", headers=WFMS)).json()
        async with db.connect() as conn:
            broken_job = (await conn.execute(sa.select(jobs.c.id).where(jobs.c.task_id == broken))).scalar_one()
        assert report["files"]["failed"] == 2 and report["files"]["done"] == 0
        assert report["failures"] == [{"error_category": "payload", "error_message": "exit code 7", "attempts": 3,
                                       "jobs": 1, "jobs_failed": 1, "files": 2, "job_ids": [broken_job]}]
        async with db.connect() as conn:
            states = set((await conn.execute(sa.select(files.c.status).where(
                files.c.task_id == broken, files.c.role == "input"))).scalars())
            logs = (await conn.execute(sa.select(sa.func.count()).where(
                files.c.task_id == broken, files.c.role == "log"))).scalar()
        assert states == {"failed"} and logs == 3  # every attempt's log is kept
        assert (await stack.dsm.dataset("out.broken")).status == "closed"


async def test_cancel_kills_running_payloads_within_a_heartbeat(settings, db, tmp_path) -> None:
    async with wms_stack(settings, db, tmp_path) as stack:
        await stack.make_dataset("raw.c", 2)
        task_id = await stack.submit(input_dataset="raw.c", output_dataset="out.c",
                                     payload=slow_payload(tmp_path / "pids", 300), split={"by": "files", "size": 1})
        stack.start_pilot("rest")
        stack.start_pilot("mq")
        await wait_for(lambda: _has_pid_files(tmp_path / "pids", 2))
        pids = [p for group in slow_payloads(tmp_path / "pids").values() for p in group]
        assert all(alive(p) for p in pids)

        response = await stack.task_manager.post(f"/api/v1/tasks/{task_id}/cancel", headers=WFMS)
        assert response.status_code == 200
        loop = asyncio.get_running_loop()
        start = loop.time()
        await wait_for(lambda: _all_dead(pids), timeout=10, interval=0.05)
        # the heartbeat interval is 0.5 s here; SIGTERM, then the process group is gone
        assert loop.time() - start < 0.5 + 1.5
        await wait_for(lambda: stack.ended(task_id))
        async with db.connect() as conn:
            states = set((await conn.execute(sa.select(jobs.c.status).where(jobs.c.task_id == task_id))).scalars())
        assert states == {"cancelled"}
        assert await output_lfns(db, task_id) == []
        async with db.connect() as conn:
            inputs = (await conn.execute(sa.select(files.c.status).where(
                files.c.task_id == task_id, files.c.role == "input"))).scalars().all()
            outcomes = (await conn.execute(sa.select(job_attempts.c.outcome, job_attempts.c.finished_at).join(
                jobs, jobs.c.id == job_attempts.c.job_id).where(jobs.c.task_id == task_id))).all()
        assert inputs == ["cancelled", "cancelled"]
        assert len(outcomes) == 2 and all(o == "cancelled" and at is not None for o, at in outcomes)


async def _all_dead(pids: list[int]) -> bool:
    return not any(alive(p) for p in pids)


async def test_pilot_declared_dead_is_fenced_when_it_comes_back(settings, db, tmp_path) -> None:
    async with wms_stack(settings, db, tmp_path) as stack:
        await stack.make_dataset("raw.z", 1)
        task_id = await stack.submit(input_dataset="raw.z", output_dataset="out.z",
                                     payload=slow_payload(tmp_path / "pids", 2), split={"by": "files", "size": 1})
        frozen = stack.start_pilot("rest")
        await wait_for(lambda: _has_pid_files(tmp_path / "pids", 1))
        payload_pids = next(iter(slow_payloads(tmp_path / "pids").values()))
        frozen.send_signal(signal.SIGSTOP)
        for pid in payload_pids:  # the whole node freezes
            os.kill(pid, signal.SIGSTOP)
        stack.start_pilot("rest")
        await wait_for(lambda: stack.ended(task_id), timeout=60)  # retried and done meanwhile
        for pid in payload_pids:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGCONT)
        frozen.send_signal(signal.SIGCONT)
        # back: its heartbeat is refused, it kills its payload and exits as a dead pilot
        assert await asyncio.to_thread(frozen.wait, 20) == 4
        await wait_for(lambda: _all_dead(payload_pids), timeout=10)
        attempts = await attempts_of(db, task_id)
        assert [(a.attempt, a.outcome) for a in attempts] == [(1, "lost"), (2, "finished")]
        assert await output_lfns(db, task_id) == ["out.z/1/f00000.out"]
        async with db.connect() as conn:
            job = (await conn.execute(sa.select(jobs).where(jobs.c.task_id == task_id))).one()
        assert (job.status, job.attempt, job.pilot_id) == ("finished", 2, attempts[1].pilot_id)

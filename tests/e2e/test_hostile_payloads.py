"""Hostile payloads against a real pilot in its default runtime (the sandbox): each tries what an attacker
would (read the pilot's credential, leave a process behind, get another file into storage, exhaust memory,
output or log); nothing escapes, no secret reaches storage or the DSM, each attempt ends with its own category,
and the pilot survives to run the next job, whose usage figures reach the API."""
from __future__ import annotations

import os
import re
import secrets
import sys

import pytest
import sqlalchemy as sa

from common.db.models import files, job_attempts, jobs, pilots
from tests.conftest import OPERATOR_TOKEN, PILOT_TOKEN, SERVICE_TOKEN, WFMS_TOKEN, wait_for
from tests.e2e.stack import WFMS, wms_stack
from tests.e2e.test_payload_tree import escapees

pytestmark = pytest.mark.e2e
OPERATOR = {"Authorization": f"Bearer {OPERATOR_TOKEN}"}
SECRETS = (PILOT_TOKEN, SERVICE_TOKEN, WFMS_TOKEN, OPERATOR_TOKEN)

# Reads every environment it can reach (its parent's first, then any process /proc shows) into an output.
ENVIRON_THIEF = """
import os, pathlib
out = pathlib.Path(os.environ["WMS_OUTPUT_DIR"])
found = []
for pid in [str(os.getppid())] + [p for p in os.listdir("/proc") if p.isdigit()]:
    try:
        found.append(pid + ": " + open(f"/proc/{pid}/environ", "rb").read().decode(errors="replace"))
    except OSError as exc:
        found.append(pid + ": " + type(exc).__name__)
for path in ("/etc/shadow", os.environ.get("TOKEN_FILE", "/nonexistent")):
    try:
        found.append(path + ": " + open(path).read())
    except OSError as exc:
        found.append(path + ": " + type(exc).__name__)
(out / "stolen.txt").write_text("\\n".join(found))
"""

MEMORY_HOG = "import time; x = bytearray(400 << 20); time.sleep(2)"


def shell(script: str) -> dict:
    return {"command": "/bin/sh", "args": ["-c", script]}


async def attempts(db, task_id: int) -> list[sa.Row]:
    async with db.connect() as conn:
        return list((await conn.execute(
            sa.select(job_attempts).join(jobs, jobs.c.id == job_attempts.c.job_id)
            .where(jobs.c.task_id == task_id).order_by(job_attempts.c.job_id, job_attempts.c.attempt))).all())


async def outputs(db, task_id: int) -> list[sa.Row]:
    async with db.connect() as conn:
        return list((await conn.execute(sa.select(files).where(files.c.task_id == task_id,
                                                               files.c.role == "output"))).all())


def storage_text(root) -> bytes:
    """Everything in storage (what the pilots staged), for a search of secrets."""
    blob = b""
    for directory, _, names in os.walk(root):
        for name in names:
            with open(os.path.join(directory, name), "rb") as f:
                blob += f.read()
    return blob


async def test_hostile_payloads_are_contained(settings, db, tmp_path) -> None:
    token_file = tmp_path / "pilot-token"
    token_file.write_text(PILOT_TOKEN)
    token_file.chmod(0o600)
    escapee = f"wms-escapee-{secrets.token_hex(4)}"
    hostile = {
        "thief": ({"command": sys.executable, "args": ["-c", ENVIRON_THIEF],
                   "env": {"TOKEN_FILE": str(token_file)}}, {}),
        "escapee": (shell(f"setsid env -i bash -c '(exec -a {escapee} sleep 900) & exit 0'; echo ok > "
                          "$WMS_OUTPUT_DIR/ok"), {}),
        "symlink": (shell("ln -s /proc/self/environ $WMS_OUTPUT_DIR/o1; ln -s /etc/shadow $WMS_OUTPUT_DIR/o2"), {}),
        "hardlink": (shell("echo x > $WMS_OUTPUT_DIR/a; ln $WMS_OUTPUT_DIR/a $WMS_OUTPUT_DIR/b"), {}),
        "fifo": (shell("mkfifo $WMS_OUTPUT_DIR/pipe; mkfifo $WMS_WORKDIR/outputs.json"), {}),
        "memory": ({"command": sys.executable, "args": ["-c", MEMORY_HOG]}, {"memory_mb": 50}),
        "output": (shell("head -c 30000000 /dev/zero > $WMS_OUTPUT_DIR/big; sleep 3"), {}),
        "log": (shell("yes 'a line of a log flood'"), {}),
    }
    async with wms_stack(settings, db, tmp_path) as stack:
        await stack.make_dataset("raw.hostile", 1)
        task_ids = {}
        for name, (payload, extra) in hostile.items():
            task_ids[name] = await stack.submit(input_dataset="raw.hostile", output_dataset=f"out.hostile.{name}",
                                                payload=payload, split={"by": "files", "size": 1}, **extra)
        pilot = stack.start_pilot("rest", WMS_PILOT_TOKEN_FILE=str(token_file), WMS_PILOT_MAX_OUTPUT_MB="10",
                                  WMS_PILOT_MAX_LOG_MB="1", WMS_PILOT_SLOTS="2", WMS_PILOT_CORES="4")
        for task_id in task_ids.values():
            await wait_for(lambda task_id=task_id: stack.ended(task_id), timeout=120)

        # reading credentials: nothing of any token, nor /etc/shadow, nor the token file
        stolen = (await outputs(db, task_ids["thief"]))
        assert len(stolen) == 1
        text = open(stolen[0].url.removeprefix("file://")).read()
        assert not any(s in text for s in SECRETS), text
        assert "/etc/shadow: PermissionError" in text and "root:" not in text
        assert f"{token_file}: " in text and PILOT_TOKEN not in text
        assert not any(s.encode() in storage_text(tmp_path / "storage") for s in SECRETS)

        # a process left behind is gone with its job
        assert (await stack.task(task_ids["escapee"])).status == "done"
        assert not escapees(escapee)

        # links, hard links and FIFOs: the attempt fails as 'manifest', naming the file, and nothing is staged
        for name, words in (("symlink", "o1 is a symbolic link"), ("hardlink", "hard link"), ("fifo", "FIFO")):
            tried = await attempts(db, task_ids[name])
            assert [a.error_category for a in tried] == ["manifest"], (name, tried)
            assert words in tried[0].error_message, tried[0].error_message
            assert await outputs(db, task_ids[name]) == []
            assert not [p for p in (tmp_path / "storage").rglob("*") if p.is_file() and f"out.hostile.{name}/" in
                        str(p) and "/logs/" not in str(p)], name

        # memory: killed, retried once with twice the memory, then failed for good
        tried = await attempts(db, task_ids["memory"])
        assert [a.error_category for a in tried] == ["memory", "memory"], tried
        assert "memory limit 100 MB" in tried[0].error_message and "memory limit 200 MB" in tried[1].error_message
        async with db.connect() as conn:
            states = (await conn.execute(sa.select(jobs.c.status).where(jobs.c.task_id == task_ids["memory"]))).all()
        assert [s for s, in states] == ["failed"]

        # output and log floods: output_too_large, not retried; the log kept as head and tail
        for name in ("output", "log"):
            tried = await attempts(db, task_ids[name])
            assert [a.error_category for a in tried] == ["output_too_large"], (name, tried)
        async with db.connect() as conn:
            log_url = (await conn.execute(sa.select(files.c.url).where(
                files.c.task_id == task_ids["log"], files.c.role == "log"))).scalar_one()
        kept = open(log_url.removeprefix("file://"), "rb").read()
        assert len(kept) < (1 << 20) + 1000 and b"bytes of payload output dropped" in kept
        assert kept.startswith(b"a line of a log flood") and b"a line of a log flood" in kept[-2000:]

        # the pilot survived all of it and runs the next job, measured
        assert pilot.poll() is None
        work = "import os; open(os.environ['WMS_OUTPUT_DIR'] + '/x', 'w').write('x' * 1000); sum(range(3_000_000))"
        last = await stack.submit(input_dataset="raw.hostile", output_dataset="out.hostile.after",
                                  payload={"command": sys.executable, "args": ["-c", work]},
                                  split={"by": "files", "size": 1})
        await wait_for(lambda: stack.ended(last), timeout=60)
        assert (await stack.task(last)).status == "done"
        async with db.connect() as conn:
            job_id = (await conn.execute(sa.select(jobs.c.id).where(jobs.c.task_id == last))).scalar_one()
            runtime = (await conn.execute(sa.select(pilots.c.runtime))).scalars().all()
        assert set(runtime) == {"sandbox"}
        explained = (await stack.task_manager.get(f"/api/v1/jobs/{job_id}/explain", headers=OPERATOR)).json()
        usage = explained["attempts"][0]["usage"]
        assert usage["wall_s"] > 0 and usage["cpu_s"] > 0 and usage["max_processes"] >= 0, usage
        report = (await stack.task_manager.get(f"/api/v1/tasks/{last}/report", headers=WFMS)).json()
        assert report["usage"]["attempts"] == 1 and report["usage"]["cpu_s"] > 0
        assert report["usage"]["cpu_efficiency"] is not None
        metrics = (await stack.task_manager.get(f"{stack.job_executor_url}/metrics")).text
        assert re.search(r'wms_job_cpu_efficiency_count\{task_type="unscramble"\} [1-9]', metrics), metrics
        assert re.search(r'wms_job_max_rss_megabytes_count\{task_type="unscramble"\} [1-9]', metrics)


async def test_a_running_jobs_figures_arrive_with_its_heartbeats(settings, db, tmp_path) -> None:
    async with wms_stack(settings, db, tmp_path) as stack:
        await stack.make_dataset("raw.beating", 1)
        task_id = await stack.submit(input_dataset="raw.beating", output_dataset="out.beating", payload={
            "command": sys.executable, "args": ["-c", "import time; x = bytearray(30 << 20); time.sleep(5)"]},
            split={"by": "files", "size": 1})
        stack.start_pilot("rest", WMS_PILOT_USAGE_REPORT_S="0")

        async def measured_while_running() -> sa.Row | None:
            async with db.connect() as conn:
                return (await conn.execute(
                    sa.select(job_attempts.c.max_rss_mb, jobs.c.status).join(jobs, jobs.c.id == job_attempts.c.job_id)
                    .where(jobs.c.task_id == task_id, jobs.c.status == "running",
                           job_attempts.c.max_rss_mb.is_not(None)))).first()

        row = await wait_for(measured_while_running, timeout=30)
        assert row.max_rss_mb >= 30  # the bytearray, measured while it sleeps
        await wait_for(lambda: stack.ended(task_id), timeout=60)


async def test_a_memory_retry_never_gets_more_than_the_pilot_has(settings, db, tmp_path) -> None:
    async with wms_stack(settings, db, tmp_path) as stack:
        await stack.make_dataset("raw.capped", 1)
        task_id = await stack.submit(input_dataset="raw.capped", output_dataset="out.capped", memory_mb=100,
                                     payload={"command": sys.executable, "args": ["-c", MEMORY_HOG]},
                                     split={"by": "files", "size": 1})
        stack.start_pilot("rest", WMS_PILOT_MEMORY_MB="150")
        await wait_for(lambda: stack.ended(task_id), timeout=60)
        tried = await attempts(db, task_id)
        assert [a.error_category for a in tried] == ["memory", "memory"]
        # 100 MB x 2 (the site factor) capped at the pilot's 150; the retry's 200 x 2 capped likewise
        assert all("memory limit 150 MB" in a.error_message for a in tried), [a.error_message for a in tried]

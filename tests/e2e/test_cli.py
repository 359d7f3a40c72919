"""The wms CLI as a process against a running WMS: submit from YAML and JSON, steer, inspect, explain, dead
letters; clear errors and exit codes."""
from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
import uuid
from pathlib import Path

import aio_pika
import pytest
import yaml

from tests.conftest import OPERATOR_TOKEN, SERVICE_TOKEN, WFMS_TOKEN, wait_for
from tests.e2e.stack import wms_stack
from tests.e2e.test_operations import FAIL
from tests.factories import task_description

pytestmark = pytest.mark.e2e
WMS = Path(sys.executable).parent / "wms"


async def wms(url: str, *args: str, token: str = OPERATOR_TOKEN, stdin: str | None = None):
    env = {**os.environ, "WMS_CLI_URL": url, "WMS_CLI_TOKEN": token, "COLUMNS": "200"}
    return await asyncio.to_thread(subprocess.run, [WMS, *args], env=env, capture_output=True, text=True,
                                   timeout=120, input=stdin)


async def test_cli_against_a_running_wms(settings, db, tmp_path, amqp) -> None:
    async with wms_stack(settings, db, tmp_path) as stack:
        url = str(stack.task_manager.base_url).rstrip("/")
        await stack.make_dataset("raw.cli", 3)
        await stack.make_dataset("raw.fail", 1)

        # submit from YAML (held: paused before any pilot exists) and from JSON on stdin
        description = task_description(name="from yaml", input_dataset="raw.cli", output_dataset="out.cli",
                                       payload={"command": sys.executable, "args": ["-c", "pass"], "env": {}},
                                       split={"by": "files", "size": 1})
        (tmp_path / "task.yaml").write_text(yaml.safe_dump(description))
        submitted = await wms(url, "--json", "submit", str(tmp_path / "task.yaml"))
        assert submitted.returncode == 0, submitted.stderr
        good = json.loads(submitted.stdout)["id"]
        failing = task_description(name="from json", input_dataset="raw.fail", output_dataset="out.fail",
                                   payload=FAIL, split={"by": "files", "size": 1}, max_attempts=1)
        submitted = await wms(url, "submit", "-", stdin=json.dumps(failing))
        assert submitted.returncode == 0 and "registered" in submitted.stdout, submitted.stderr
        bad = good + 1

        assert (await wms(url, "pause", str(good))).stdout.strip() == f"task {good}: paused"
        assert (await wms(url, "priority", str(good), "700")).stdout.strip() == f"task {good}: priority 700"
        shown = await wms(url, "show", str(good))
        assert "[paused]" in shown.stdout and "priority 700" in shown.stdout
        stack.start_pilot("rest")
        await wait_for(lambda: stack.ended(bad), timeout=60)
        assert (await stack.task(good)).status == "paused"  # held while paused
        assert (await wms(url, "resume", str(good))).stdout.strip() == f"task {good}: running"
        watched = await wms(url, "watch", str(good), "--interval", "0.2")
        assert watched.returncode == 0 and "done" in watched.stdout and "3/3" in watched.stdout, watched.stdout
        watched = await wms(url, "--json", "watch", str(bad), "--interval", "0.2")
        assert watched.returncode == 1 and json.loads(watched.stdout)["status"] == "failed"  # no job finished

        queue = await wms(url, "q", "--all")
        assert "from yaml" in queue.stdout and "2 tasks; 0 jobs queued, 0 running, 3 done, 1 failed" in queue.stdout
        failed_jobs = json.loads((await wms(url, "--json", "jobs", "--task", str(bad))).stdout)
        assert [j["status"] for j in failed_jobs] == ["failed"]
        explained = await wms(url, "explain", str(failed_jobs[0]["id"]))
        assert "failed after 1 of 1 attempts" in explained.stdout and "boom-marker" in explained.stdout
        report = json.loads((await wms(url, "--json", "report", str(bad))).stdout)
        assert report["final"] and report["files"]["failed"] == 1
        assert "wn0" in (await wms(url, "pilots")).stdout
        assert "done" in (await wms(url, "tasks", "--all")).stdout

        # dead letters: one poison task event for the task-executor, listed, then replayed
        channel = await amqp.channel()
        poison_id = str(uuid.uuid4())
        await channel.default_exchange.publish(
            aio_pika.Message(b"{not json", message_id=poison_id),
            f"{settings.broker_namespace}.task-executor.task-events")
        listed = await wait_for(lambda: _dead_letters(url), timeout=20)
        assert [(d["queue"], d["message_id"]) for d in listed] == [("task-executor.task-events", poison_id)]
        replayed = await wms(url, "dlq", "replay", "task-executor.task-events", poison_id)
        assert replayed.returncode == 0 and f"{poison_id} replayed to" in replayed.stdout
        # still poison: the consumer dead-letters it again (it is not lost, and not retried forever)
        again = await wait_for(lambda: _dead_letters(url), timeout=20)
        assert [d["message_id"] for d in again] == [poison_id]

        # a task no pilot can run (GPU): it waits, explained; then cancelled
        await stack.make_dataset("raw.gpu", 1)
        gpu = json.loads((await wms(url, "--json", "submit", "-", stdin=json.dumps(task_description(
            name="gpu", input_dataset="raw.gpu", output_dataset="out.gpu", resource_type="gpu",
            payload={"command": "true", "args": [], "env": {}})))).stdout)["id"]
        waiting = await wait_for(lambda: _jobs(url, gpu, "ready"), timeout=20)
        explained = await wms(url, "explain", str(waiting[0]["id"]))
        assert "no live pilot offers gpu" in explained.stdout, explained.stdout
        cancelled = await wms(url, "cancel", str(gpu))
        assert cancelled.returncode == 0 and cancelled.stdout.strip() == f"task {gpu}: cancelled"
        assert [j["status"] for j in await wait_for(lambda: _jobs(url, gpu, "cancelled"))] == ["cancelled"]

        # errors: clear message, non-zero exit code
        (tmp_path / "bad.yaml").write_text("name: [unclosed")
        unreadable = await wms(url, "submit", str(tmp_path / "bad.yaml"))
        assert unreadable.returncode == 2 and "neither YAML nor JSON" in unreadable.stderr
        invalid = await wms(url, "submit", "-", stdin=json.dumps({**failing, "priority": 0, "wfms_request_id": "x"}))
        assert invalid.returncode == 1 and "HTTP 422" in invalid.stderr and "priority" in invalid.stderr
        ended = await wms(url, "cancel", str(good))
        assert ended.returncode == 1 and "409" in ended.stderr and "current_state: done" in ended.stderr
        forbidden = await wms(url, "pause", str(good), token=WFMS_TOKEN)
        assert forbidden.returncode == 1 and "403" in forbidden.stderr
        assert (await wms(url, "show", "424242")).returncode == 1
        assert (await wms(url, "priority", str(good), "0")).returncode == 2


async def _jobs(url: str, task_id: int, status: str) -> list[dict] | None:
    answer = await wms(url, "--json", "jobs", "--task", str(task_id), "--status", status)
    assert answer.returncode == 0, answer.stderr
    return json.loads(answer.stdout) or None


async def _dead_letters(url: str) -> list[dict] | None:
    answer = await wms(url, "--json", "dlq", "list")
    assert answer.returncode == 0, answer.stderr
    return json.loads(answer.stdout) or None


async def test_the_demo_on_a_full_storage_says_so_and_leaves_nothing(settings, db, tmp_path) -> None:
    """Issue 22, finding 10: on a full storage `wms demo` died with a Python traceback and left an open, empty raw
    dataset in the DSM and partial files. The full storage is played by a file size limit (RLIMIT_FSIZE, the
    writes fail with EFBIG as they would with ENOSPC). Now: one message, exit 1, no dataset, no file."""
    import resource
    import signal

    def full_storage() -> None:
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # ignored stays ignored across exec: writes fail instead
        resource.setrlimit(resource.RLIMIT_FSIZE, (4096, 4096))

    async with wms_stack(settings, db, tmp_path) as stack:
        url = str(stack.task_manager.base_url).rstrip("/")
        storage = tmp_path / "full"
        env = {**os.environ, "WMS_CLI_URL": url, "WMS_CLI_TOKEN": OPERATOR_TOKEN, "COLUMNS": "200",
               "WMS_CLI_DSM_URL": stack.dsm.base_url.removesuffix("/dsm/v1"), "WMS_CLI_DSM_TOKEN": SERVICE_TOKEN,
               "WMS_STORAGE_ROOT": str(storage)}
        done = await asyncio.to_thread(subprocess.run, [WMS, "demo", "--slices", "4", "--run", "full"], env=env,
                                       capture_output=True, text=True, timeout=120, preexec_fn=full_storage)
        assert done.returncode == 1, done.stdout + done.stderr
        assert "Traceback" not in done.stderr and "wms: cannot write the raw data" in done.stderr, done.stderr
        assert await stack.dsm.dataset("spd.raw.full") is None
        assert [p for p in storage.rglob("*") if p.is_file()] == []

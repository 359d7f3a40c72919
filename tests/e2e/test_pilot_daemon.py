"""The pilot daemon: pilots one after another, backoff when idle, SIGTERM lets the running job finish, a pilot
application that dies is said lost."""
from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import subprocess
import sys

import pytest
import sqlalchemy as sa

from common.db.models import job_attempts, pilots
from pilot.exit_codes import EXIT_REFUSED
from tests.conftest import PILOT_TOKEN, wait_for
from tests.e2e.stack import wms_stack
from tests.e2e.test_dispatch import _has_pid_files, slow_payload, slow_payloads

pytestmark = pytest.mark.e2e


def daemon(stack, *args: str, **env: str) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, "-m", "pilot.daemon", *args],
        env={**os.environ, "WMS_PILOT_SERVER_URL": stack.job_executor_url, "WMS_PILOT_TOKEN": PILOT_TOKEN,
             "WMS_PILOT_WORKDIR": str(stack.tmp / "daemon"), "WMS_PILOT_IDLE_POLL_S": "0.1", **env},
        stdout=(stack.tmp / "daemon.log").open("a"), stderr=subprocess.STDOUT,
    )


async def test_idle_pilots_are_relaunched_with_backoff(settings, db, tmp_path) -> None:
    async with wms_stack(settings, db, tmp_path) as stack:
        process = daemon(stack, "--max-pilots", "3", "--backoff", "0.2", WMS_PILOT_IDLE_LIMIT_S="0.3")
        assert await asyncio.to_thread(process.wait, 60) == 0
        async with db.connect() as conn:
            states = (await conn.execute(sa.select(pilots.c.status))).scalars().all()
        assert states == ["exited"] * 3  # three pilots, one after another, each ended cleanly
        log = (tmp_path / "daemon.log").read_text()
        assert log.count('"msg": "pilot ended", "exit_code": 3') == 3


async def test_sigterm_lets_the_running_job_finish(settings, db, tmp_path) -> None:
    async with wms_stack(settings, db, tmp_path) as stack:
        await stack.make_dataset("raw.t", 1)
        task_id = await stack.submit(input_dataset="raw.t", output_dataset="out.t",
                                     payload=slow_payload(tmp_path / "pids", 1.5), split={"by": "files", "size": 1})
        process = daemon(stack, "--backoff", "0.2")
        await wait_for(lambda: _has_pid_files(tmp_path / "pids", 1))
        process.send_signal(signal.SIGTERM)
        assert await asyncio.to_thread(process.wait, 30) == 0
        await wait_for(lambda: stack.ended(task_id))
        assert (await stack.task(task_id)).status == "done"


async def test_a_refused_credential_stops_the_daemon_instead_of_relaunching(settings, db, tmp_path) -> None:
    async with wms_stack(settings, db, tmp_path) as stack:
        process = daemon(stack, "--max-pilots", "5", "--backoff", "0.1", WMS_PILOT_TOKEN="wmsp_never-issued")
        assert await asyncio.to_thread(process.wait, 60) == EXIT_REFUSED
        log = (tmp_path / "daemon.log").read_text()
        assert log.count('"msg": "pilot ended"') == 1  # one launch: relaunching with this credential is futile
        assert "missing, unknown or revoked pilot credential" in log and "not relaunching" in log


def children_of(pid: int) -> list[int]:
    with open(f"/proc/{pid}/task/{pid}/children") as f:
        return [int(p) for p in f.read().split()]


async def test_a_killed_pilot_application_is_said_lost_and_its_job_retried_at_once(settings, db, tmp_path) -> None:
    """Without its daemon's word the job would wait for the pilot's heartbeat timeout (a minute here)."""
    async with wms_stack(settings, db, tmp_path, pilot_timeout_s=60.0) as stack:
        await stack.make_dataset("raw.t", 1)
        mark = tmp_path / "pids"
        await stack.submit(input_dataset="raw.t", output_dataset="out.t", payload=slow_payload(mark, 300),
                           split={"by": "files", "size": 1})
        process = daemon(stack, "--backoff", "30")  # no relaunch within the test: the retry is seen as it is
        try:
            await wait_for(lambda: _has_pid_files(mark, 1))
            (application,) = children_of(process.pid)
            os.kill(application, signal.SIGKILL)

            async def lost_attempt():
                async with db.connect() as conn:
                    return (await conn.execute(sa.select(job_attempts).where(
                        job_attempts.c.outcome == "lost"))).first()
            attempt = await wait_for(lost_attempt, timeout=15)
            assert "killed by signal 9" in attempt.error_message
            async with db.connect() as conn:
                states = (await conn.execute(sa.select(pilots.c.status))).scalars().all()
            assert states == ["dead"]
            log = (tmp_path / "daemon.log").read_text()
            assert "pilot lost: told the job-executor" in log
        finally:
            process.terminate()
            await asyncio.to_thread(process.wait, 30)
            for pids in slow_payloads(mark).values():
                for pid in pids:
                    with contextlib.suppress(ProcessLookupError):
                        os.kill(pid, signal.SIGKILL)

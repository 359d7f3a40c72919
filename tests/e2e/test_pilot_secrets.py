"""The pilot's own secrets, whatever runtime it uses: a token given in the environment is gone from the pilot's
/proc/PID/environ (it re-executes itself without it), a token file others may read is refused, and a runtime
that does not work on the node fails the pilot at start (exit 6, the daemon stops) instead of failing jobs."""
from __future__ import annotations

import asyncio
import os
import subprocess
import sys

import pytest
import sqlalchemy as sa

from common.db.models import pilots
from pilot.exit_codes import EXIT_REFUSED, EXIT_RUNTIME
from tests.conftest import PILOT_TOKEN, wait_for
from tests.e2e.stack import wms_stack

pytestmark = pytest.mark.e2e


def environ_of(pid: int) -> bytes:
    with open(f"/proc/{pid}/environ", "rb") as f:
        return f.read()


async def test_a_token_in_the_environment_is_scrubbed_from_the_pilot(settings, db, tmp_path) -> None:
    async with wms_stack(settings, db, tmp_path) as stack:
        pilot = stack.start_pilot("mq")  # the token and the broker URL (with its password) in its environment
        async with db.connect() as conn:
            async def registered() -> bool:
                return bool((await conn.execute(sa.select(sa.func.count()).select_from(pilots))).scalar())
            await wait_for(registered, timeout=30)
        env = environ_of(pilot.pid)  # the same process: it re-executed itself (execve keeps the pid)
        assert PILOT_TOKEN.encode() not in env and b"WMS_PILOT_TOKEN=" not in env
        assert b"WMS_PILOT_AMQP_URL=" not in env and b"WMS_PILOT_SECRETS_FD=" in env
        assert pilot.poll() is None


async def test_a_token_file_others_may_read_is_refused(settings, db, tmp_path) -> None:
    token_file = tmp_path / "token"
    token_file.write_text(PILOT_TOKEN)
    token_file.chmod(0o644)
    async with wms_stack(settings, db, tmp_path) as stack:
        pilot = stack.start_pilot("rest", WMS_PILOT_TOKEN_FILE=str(token_file))
        assert await asyncio.to_thread(pilot.wait, 30) == EXIT_REFUSED
        assert "readable by others" in (tmp_path / "pilot0.log").read_text()
        token_file.chmod(0o600)
        pilot = stack.start_pilot("rest", WMS_PILOT_TOKEN_FILE=str(token_file), WMS_PILOT_TOKEN="wrong")
        async with db.connect() as conn:
            async def registered() -> bool:
                return bool((await conn.execute(sa.select(sa.func.count()).select_from(pilots))).scalar())
            await wait_for(registered, timeout=30)  # the file's token, not the environment's, was used
        assert pilot.poll() is None


async def test_a_broken_runtime_fails_the_pilot_not_jobs(settings, db, tmp_path) -> None:
    async with wms_stack(settings, db, tmp_path) as stack:
        await stack.make_dataset("raw.broken-runtime", 1)
        task_id = await stack.submit(input_dataset="raw.broken-runtime", output_dataset="out.broken-runtime",
                                     payload={"command": "/bin/true"}, split={"by": "files", "size": 1})
        daemon = subprocess.Popen(
            [sys.executable, "-m", "pilot.daemon", "--max-pilots", "3", "--backoff", "0.1"],
            env={**os.environ, "WMS_PILOT_SERVER_URL": stack.job_executor_url, "WMS_PILOT_TOKEN": PILOT_TOKEN,
                 "WMS_PILOT_WORKDIR": str(tmp_path / "daemon"), "WMS_PILOT_BWRAP": "/bin/false"},
            stdout=(tmp_path / "daemon.log").open("a"), stderr=subprocess.STDOUT)
        assert await asyncio.to_thread(daemon.wait, 60) == EXIT_RUNTIME
        log = (tmp_path / "daemon.log").read_text()
        assert log.count('"msg": "pilot ended"') == 1 and "payload runtime unavailable" in log
        async with db.connect() as conn:
            assert (await conn.execute(sa.select(sa.func.count()).select_from(pilots))).scalar() == 0
        assert (await stack.task(task_id)).status in ("registered", "running")  # no job was taken, none failed


async def test_a_plain_pilot_runs_jobs_and_says_it_contains_nothing(settings, db, tmp_path) -> None:
    async with wms_stack(settings, db, tmp_path) as stack:
        await stack.make_dataset("raw.plain", 2)
        task_id = await stack.submit(input_dataset="raw.plain", output_dataset="out.plain", payload={
            "command": sys.executable, "args": ["-c", "import os, sys, shutil; [shutil.copy(f, os.environ["
                                                "'WMS_OUTPUT_DIR']) for f in sys.argv[1:]]", "{inputs}"]},
            split={"by": "files", "size": 1})
        stack.start_pilot("rest", WMS_PILOT_RUNTIME="plain")
        await wait_for(lambda: stack.ended(task_id), timeout=60)
        assert (await stack.task(task_id)).status == "done"
        async with db.connect() as conn:
            assert (await conn.execute(sa.select(pilots.c.runtime))).scalars().all() == ["plain"]
        assert "payloads run PLAINLY" in (tmp_path / "pilot0.log").read_text()

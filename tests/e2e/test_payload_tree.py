"""A payload's whole process tree ends with it: on abort (cancel), on timeout, and when the payload exits and
leaves children behind, including children that left its process group and session (setsid)."""
from __future__ import annotations

import asyncio
import os
import sys
from pathlib import Path

import pytest

from pilot.payload import run_payload
from tests.conftest import wait_for
from tests.e2e.test_dispatch import alive

pytestmark = pytest.mark.e2e

# Starts a grandchild in a new session (setsid: out of the payload's process group), records its pid, then
# either waits (to be aborted) or exits at once leaving it behind.
ESCAPER = """
import os, subprocess, sys, time
child = subprocess.Popen(["sleep", "300"], start_new_session=True)  # setsid() in the child
open(sys.argv[1], "w").write(str(child.pid))
if sys.argv[2] == "wait":
    time.sleep(300)
"""


async def _run(tmp_path: Path, mode: str, abort: asyncio.Event, wall_time_s: float = 60):
    pid_file = tmp_path / f"{mode}.pid"
    run = asyncio.create_task(run_payload(sys.executable, ["-c", ESCAPER, str(pid_file), mode], dict(os.environ),
                                          tmp_path, tmp_path / f"{mode}.log", wall_time_s, abort))
    await wait_for(lambda: _read_pid(pid_file), timeout=20)
    return run, int(pid_file.read_text())


async def _read_pid(path: Path) -> bool:
    return path.exists() and path.read_text().strip().isdigit()


async def test_abort_kills_a_child_that_left_the_process_group(tmp_path: Path) -> None:
    abort = asyncio.Event()
    run, escaped = await _run(tmp_path, "wait", abort)
    assert alive(escaped) and os.getpgid(escaped) != os.getpgid(os.getpid())
    abort.set()
    result = await asyncio.wait_for(run, 30)
    assert result.aborted and not result.timed_out
    await wait_for(lambda: _gone(escaped), timeout=10)


async def test_timeout_kills_the_whole_tree(tmp_path: Path) -> None:
    run, escaped = await _run(tmp_path, "wait", asyncio.Event(), wall_time_s=2)
    result = await asyncio.wait_for(run, 30)
    assert result.timed_out
    await wait_for(lambda: _gone(escaped), timeout=10)


async def test_children_left_behind_by_a_finished_payload_are_killed(tmp_path: Path) -> None:
    run, escaped = await _run(tmp_path, "exit", asyncio.Event())
    result = await asyncio.wait_for(run, 30)
    assert result.exit_code == 0 and not result.aborted
    await wait_for(lambda: _gone(escaped), timeout=10)


async def _gone(pid: int) -> bool:
    return not alive(pid)

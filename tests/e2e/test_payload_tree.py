"""A payload's whole process tree ends with it: on abort (cancel), on timeout, and when the payload exits and
leaves children behind, including a child that left its session with a clean environment and a new name
(``setsid env -i bash -c '(exec -a NAME sleep 900) &'``: no tag, no parentage to the payload). In the sandbox the
kernel ends them (the PID namespace dies with its PID 1); ``plain`` finds them by tag, parentage and, where the
node allows it, the payload's control group."""
from __future__ import annotations

import asyncio
import os
import secrets
import subprocess
from pathlib import Path

import pytest

from pilot.cgroups import Cgroups, detect
from pilot.config import PilotSettings
from pilot.payload import Limits, run_payload
from pilot.runtimes import Launch, Runtime
from pilot.runtimes.select import make_runtime
from tests.conftest import wait_for

pytestmark = pytest.mark.e2e

ESCAPE = "setsid env -i bash -c '(exec -a {name} sleep 900) & exit 0'; "


def escapees(name: str) -> set[int]:
    """Host pids of processes whose command line starts with ``name``."""
    found = set()
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                with open(f"/proc/{entry}/cmdline", "rb") as f:
                    if f.read().startswith(name.encode()):
                        found.add(int(entry))
            except OSError:
                continue
    return found


@pytest.fixture(params=["sandbox", "plain"])
def runtime(request, tmp_path: Path) -> tuple[Runtime, Path, Cgroups]:
    workdir = tmp_path / "pilot"
    workdir.mkdir()
    cgroups = detect(f"test-{os.getpid()}-{secrets.token_hex(4)}", wanted=request.param == "plain")
    yield make_runtime(PilotSettings(workdir=str(workdir), runtime=request.param)), workdir, cgroups
    cgroups.remove()


async def _start(runtime: tuple[Runtime, Path, Cgroups], script: str, abort: asyncio.Event, wall_time_s: float = 60,
                 output_bytes: int = 1 << 30):
    rt, workdir, cgroups = runtime
    attempt = workdir / f"job-1-{secrets.token_hex(3)}"
    (attempt / "outputs").mkdir(parents=True)
    if rt.owner() is not None:
        for path in (attempt, attempt / "outputs"):
            os.chown(path, *rt.owner())
    launch = Launch("/bin/sh", ["-c", script], {"PATH": "/usr/bin:/bin"}, attempt, [], 1)
    return asyncio.create_task(run_payload(rt, launch, workdir / "payload.log", Limits(wall_time_s, 1 << 30,
                                                                                       output_bytes, 1 << 20),
                                           abort, cgroups, 0.5))


async def test_abort_kills_a_child_that_left_the_session(runtime) -> None:
    name = f"wms-escapee-{secrets.token_hex(4)}"
    abort = asyncio.Event()
    run = await _start(runtime, ESCAPE.format(name=name) + "sleep 300", abort)
    await wait_for(lambda: _present(name), timeout=20)
    abort.set()
    result = await asyncio.wait_for(run, 30)
    assert result.aborted and not result.timed_out
    await wait_for(lambda: _absent(name), timeout=10)


async def test_timeout_kills_the_whole_tree(runtime) -> None:
    name = f"wms-escapee-{secrets.token_hex(4)}"
    run = await _start(runtime, ESCAPE.format(name=name) + "sleep 300", asyncio.Event(), wall_time_s=3)
    await wait_for(lambda: _present(name), timeout=20)
    result = await asyncio.wait_for(run, 30)
    assert result.timed_out
    await wait_for(lambda: _absent(name), timeout=10)


async def test_children_left_behind_by_a_finished_payload_are_killed(runtime) -> None:
    name = f"wms-escapee-{secrets.token_hex(4)}"
    run = await _start(runtime, ESCAPE.format(name=name) + "sleep 1; exit 0", asyncio.Event())
    await wait_for(lambda: _present(name), timeout=20)
    result = await asyncio.wait_for(run, 30)
    assert result.exit_code == 0 and result.ended_by is None
    await wait_for(lambda: _absent(name), timeout=10)


async def _present(name: str) -> bool:
    return bool(escapees(name))


async def _absent(name: str) -> bool:
    return not escapees(name)


async def test_an_abort_racing_the_payloads_own_end_never_hangs(runtime, monkeypatch) -> None:
    """Found in CI under load: killing through Popen.kill polls first, and that poll reaped a payload that had just
    exited under the reaping thread's feet, which then never reported it: the job hung. Nothing may poll the Popen
    (recorded here: the race itself needs a loaded machine), and aborts landing right as payloads end never hang."""
    polled: list[object] = []
    monkeypatch.setattr(subprocess.Popen, "poll", lambda self: polled.append(self))
    loop = asyncio.get_running_loop()
    for i in range(40):
        abort = asyncio.Event()
        run = await _start(runtime, "sleep 0.05", abort)
        loop.call_later(0.04 + (i % 5) * 0.01, abort.set)
        result = await asyncio.wait_for(run, 15)
        assert result.exit_code is not None
    # a limit ends the payload at once (no grace): the kill lands while the sandbox's PID 1 dies
    for _ in range(3):
        run = await _start(runtime, 'head -c 3000000 /dev/zero > "$WMS_OUTPUT_DIR/big"; sleep 30', asyncio.Event(),
                           output_bytes=1 << 20)
        assert (await asyncio.wait_for(run, 15)).ended_by == "output_too_large"
    assert polled == []

"""Software a payload needs may sit in directories closed to the payload user (a checkout under a mode-700
directory in /tmp, a Python under /root): the sandbox binds it where it is and makes every directory above it
that the sandbox itself creates traversable (bubblewrap would make them 0700). Found in CI: a clone under a
mktemp directory made every console-script payload exit 2."""
from __future__ import annotations

import asyncio
import os
from pathlib import Path

import pytest

from pilot.cgroups import detect
from pilot.config import PilotSettings
from pilot.payload import Limits, run_payload
from pilot.runtimes import Launch
from pilot.runtimes.select import make_runtime

pytestmark = pytest.mark.e2e


async def test_a_tool_in_a_closed_directory_runs_in_the_sandbox(tmp_path: Path) -> None:
    closed = tmp_path / "closed"
    tool_dir = closed / "deep" / "software"
    tool_dir.mkdir(parents=True)
    closed.chmod(0o700)
    tool = tool_dir / "tool.sh"
    tool.write_text("#!/bin/sh\necho tool ran > \"$WMS_OUTPUT_DIR/out\"\n")
    tool.chmod(0o755)
    workdir = tmp_path / "pilot"
    attempt = workdir / "job-1-1"
    (attempt / "outputs").mkdir(parents=True)
    runtime = make_runtime(PilotSettings(workdir=str(workdir), sandbox_paths=[str(tool_dir)]))
    if runtime.owner() is not None:
        for path in (attempt, attempt / "outputs"):
            os.chown(path, *runtime.owner())
    result = await run_payload(runtime, Launch(str(tool), [], {"PATH": "/usr/bin:/bin"}, attempt, [], 1),
                               workdir / "log", Limits(30, 1 << 30, 1 << 30, 1 << 20), asyncio.Event(),
                               detect("unused", False))
    assert result.exit_code == 0, (workdir / "log").read_text()
    assert (attempt / "outputs" / "out").read_text() == "tool ran\n"

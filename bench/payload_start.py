"""What it costs to start a payload in each runtime: a trivial payload (/bin/true, and the pilot's Python doing
nothing) run one after another through pilot.payload.run_payload, as the pilot runs every job (runtime command,
control group where allowed, log pump, first sample, end). Milliseconds per payload, median and p90.

    sudo .venv/bin/python bench/payload_start.py --runs 100
"""
from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

from pilot.cgroups import detect
from pilot.config import PilotSettings
from pilot.payload import Limits, run_payload
from pilot.runtimes import Launch
from pilot.runtimes.select import make_runtime

PAYLOADS = {"true": ("/bin/true", []), "python": (sys.executable, ["-c", "pass"])}


async def measure(runtime_name: str, cgroups_on: bool, payload: str, runs: int, root: Path) -> dict[str, float]:
    workdir = root / f"{runtime_name}-{int(cgroups_on)}-{payload}"
    workdir.mkdir()
    runtime = make_runtime(PilotSettings(workdir=str(workdir), runtime=runtime_name))  # type: ignore[arg-type]
    cgroups = detect(f"bench-{os.getpid()}", cgroups_on)
    command, args = PAYLOADS[payload]
    times = []
    try:
        for i in range(runs):
            attempt = workdir / f"job-{i}"
            (attempt / "outputs").mkdir(parents=True)
            if runtime.owner() is not None:
                for path in (attempt, attempt / "outputs"):
                    os.chown(path, *runtime.owner())
            started = time.perf_counter()
            result = await run_payload(runtime, Launch(command, args, {"PATH": "/usr/bin:/bin"}, attempt, [], i),
                                       workdir / "log", Limits(60, 1 << 30, 1 << 30, 1 << 20), asyncio.Event(),
                                       cgroups, 5.0)
            times.append((time.perf_counter() - started) * 1000)
            assert result.exit_code == 0, result
    finally:
        cgroups.remove()
    times.sort()
    return {"median_ms": round(statistics.median(times), 1), "p90_ms": round(times[int(0.9 * (len(times) - 1))], 1)}


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--runs", type=int, default=100)
    args = parser.parse_args()
    results = []
    with tempfile.TemporaryDirectory() as tmp:
        for runtime_name, cgroups_on in (("plain", False), ("plain", True), ("sandbox", False), ("sandbox", True)):
            for payload in PAYLOADS:
                figures = await measure(runtime_name, cgroups_on, payload, args.runs, Path(tmp))
                results.append({"runtime": runtime_name, "cgroup": cgroups_on, "payload": payload, **figures})
                print(json.dumps(results[-1]), flush=True)


if __name__ == "__main__":
    asyncio.run(main())

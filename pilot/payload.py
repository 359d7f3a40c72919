"""Running a payload: its own work directory, environment, wall-time limit, output captured in a log file, and
the whole process group killed on abort or timeout."""
from __future__ import annotations

import asyncio
import os
import signal
from dataclasses import dataclass
from pathlib import Path

KILL_GRACE_S = 5.0


@dataclass(frozen=True)
class PayloadResult:
    exit_code: int | None
    timed_out: bool
    aborted: bool


def expand_args(args: list[str], inputs: list[Path], output_dir: Path, job_id: int) -> list[str]:
    """``{inputs}`` as a whole argument becomes one argument per input file; ``{output_dir}`` and ``{job_id}``
    are replaced anywhere."""
    out: list[str] = []
    for arg in args:
        if arg == "{inputs}":
            out.extend(str(p) for p in inputs)
        else:
            out.append(arg.replace("{output_dir}", str(output_dir)).replace("{job_id}", str(job_id)))
    return out


def kill_group(process: asyncio.subprocess.Process, sig: int) -> None:
    try:
        os.killpg(process.pid, sig)
    except ProcessLookupError:
        pass


async def run_payload(command: str, args: list[str], env: dict[str, str], cwd: Path, log_path: Path,
                      wall_time_s: float, abort: asyncio.Event) -> PayloadResult:
    with log_path.open("ab") as log:
        process = await asyncio.create_subprocess_exec(
            command, *args, cwd=cwd, env=env, stdout=log, stderr=asyncio.subprocess.STDOUT,
            stdin=asyncio.subprocess.DEVNULL, start_new_session=True,  # its own process group
        )
    waiter = asyncio.create_task(process.wait())
    aborter = asyncio.create_task(abort.wait())
    done, _ = await asyncio.wait({waiter, aborter}, timeout=wall_time_s, return_when=asyncio.FIRST_COMPLETED)
    aborter.cancel()
    if waiter in done:
        return PayloadResult(process.returncode, False, False)
    timed_out = aborter not in done
    kill_group(process, signal.SIGTERM)
    try:
        await asyncio.wait_for(asyncio.shield(waiter), KILL_GRACE_S)
    except TimeoutError:
        kill_group(process, signal.SIGKILL)
        await waiter
    kill_group(process, signal.SIGKILL)  # children that ignored SIGTERM or outlived the leader
    return PayloadResult(process.returncode, timed_out, not timed_out)

"""Running a payload: its own work directory, environment, wall-time limit, output captured in a log file, and
its whole process tree killed on abort, on timeout, and when it ends (leftovers).

The tree is found two ways, so a child that left the payload's process group (setsid, a daemonizing tool) is
still found: every process of the payload carries a tag in its environment (inherited across fork, exec and
setsid), and the descendants of the payload's leader are followed through /proc as well.
"""
from __future__ import annotations

import asyncio
import os
import secrets
import signal
from dataclasses import dataclass
from pathlib import Path

KILL_GRACE_S = 5.0
KILL_ROUNDS = 5  # processes may fork while being killed: look again a few times
TAG_VARIABLE = "WMS_PAYLOAD_TAG"


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


def _parent_of(pid: int) -> int | None:
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            return int(f.read().rsplit(b")", 1)[1].split()[1])
    except (OSError, ValueError, IndexError):
        return None


def _has_tag(pid: int, marker: bytes) -> bool:
    try:
        with open(f"/proc/{pid}/environ", "rb") as f:
            return marker in f.read().split(b"\0")
    except OSError:
        return False


def payload_processes(tag: str, leader: int | None) -> set[int]:
    """Pids of the payload's processes: those carrying its tag, and the descendants of ``leader``."""
    marker = f"{TAG_VARIABLE}={tag}".encode()
    me = os.getpid()
    parents: dict[int, int | None] = {}
    found: set[int] = set()
    for entry in os.listdir("/proc"):
        if not entry.isdigit() or int(entry) == me:
            continue
        pid = int(entry)
        parents[pid] = _parent_of(pid)
        if _has_tag(pid, marker):
            found.add(pid)
    if leader is not None and leader in parents:
        found.add(leader)
        grew = True
        while grew:
            grew = False
            for pid, parent in parents.items():
                if parent in found and pid not in found:
                    found.add(pid)
                    grew = True
    return found


def _signal_all(pids: set[int], sig: int) -> None:
    for pid in pids:
        try:
            os.kill(pid, sig)
        except (ProcessLookupError, PermissionError):
            pass


async def kill_tree(tag: str, leader: asyncio.subprocess.Process | None, grace_s: float = KILL_GRACE_S) -> None:
    """SIGTERM the payload's group and every process of its tree, wait ``grace_s`` for the leader, then SIGKILL
    whatever is left, looking again until nothing carries the tag."""
    pid = leader.pid if leader is not None else None
    if pid is not None:
        try:
            os.killpg(pid, signal.SIGTERM)
        except (ProcessLookupError, PermissionError):
            pass
    _signal_all(payload_processes(tag, pid), signal.SIGTERM)
    if leader is not None and leader.returncode is None:
        try:
            await asyncio.wait_for(leader.wait(), grace_s)
        except TimeoutError:
            pass
    for _ in range(KILL_ROUNDS):
        if pid is not None:
            try:
                os.killpg(pid, signal.SIGKILL)
            except (ProcessLookupError, PermissionError):
                pass
        left = payload_processes(tag, pid if leader is not None and leader.returncode is None else None)
        if not left:
            break
        _signal_all(left, signal.SIGKILL)
        await asyncio.sleep(0.05)
    if leader is not None:
        await leader.wait()


async def run_payload(command: str, args: list[str], env: dict[str, str], cwd: Path, log_path: Path,
                      wall_time_s: float, abort: asyncio.Event) -> PayloadResult:
    tag = secrets.token_hex(12)
    with log_path.open("ab") as log:
        process = await asyncio.create_subprocess_exec(
            command, *args, cwd=cwd, env={**env, TAG_VARIABLE: tag}, stdout=log, stderr=asyncio.subprocess.STDOUT,
            stdin=asyncio.subprocess.DEVNULL, start_new_session=True,  # its own process group
        )
    waiter = asyncio.create_task(process.wait())
    aborter = asyncio.create_task(abort.wait())
    done, _ = await asyncio.wait({waiter, aborter}, timeout=wall_time_s, return_when=asyncio.FIRST_COMPLETED)
    aborter.cancel()
    if waiter in done:
        # children the payload left running are not part of a finished job
        await kill_tree(tag, None, grace_s=0)
        return PayloadResult(process.returncode, False, False)
    timed_out = aborter not in done
    await kill_tree(tag, process)
    return PayloadResult(process.returncode, timed_out, not timed_out)

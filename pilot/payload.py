"""Running a payload: started by the pilot's runtime (pilot/runtimes), measured while it runs (pilot/usage.py),
bounded (memory, output volume, log size, wall time), its output captured in a bounded log, and ended for good.

How a payload is ended depends on the runtime: in a sandbox, the kernel kills every process of it when its
PID 1 dies; in ``plain``, the tree is found by an environment tag (inherited across fork, exec and setsid) and by
/proc parentage. Where the node allows a control group per payload (pilot/cgroups.py), every process of it is
in the group too: the group's member list is the tree, its memory limit the kernel's, and its counters the
payload's CPU time.
"""
from __future__ import annotations

import asyncio
import contextlib
import json
import os
import resource
import secrets
import signal
import subprocess
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from common.pilot_protocol import Usage
from pilot.cgroups import Cgroups, PayloadGroup
from pilot.runtimes import Launch, Runtime
from pilot.usage import UsageMeter, descendants, directory_bytes, sample

KILL_GRACE_S = 5.0
KILL_ROUNDS = 5  # processes may fork while being killed: look again a few times
TAG_VARIABLE = "WMS_PAYLOAD_TAG"
INFO_WAIT_S = 10.0
MB = 1 << 20

EndedBy = Literal["aborted", "timeout", "memory", "output_too_large"]


@dataclass(frozen=True)
class Limits:
    wall_time_s: float
    memory_bytes: int
    output_bytes: int
    log_bytes: int
    max_processes: int = 4096


@dataclass(frozen=True)
class PayloadResult:
    exit_code: int | None
    ended_by: EndedBy | None  # None: the payload ended by itself
    usage: Usage
    detail: str = ""

    @property
    def timed_out(self) -> bool:
        return self.ended_by == "timeout"

    @property
    def aborted(self) -> bool:
        return self.ended_by == "aborted"


class BoundedLog:
    """The payload's output, kept within ``limit`` bytes: its first half and its last half, the middle dropped
    with a line that says how much."""

    def __init__(self, path: Path, limit: int) -> None:
        self.file = path.open("wb")
        self.head_left = limit // 2
        self.tail: deque[bytes] = deque()
        self.tail_bytes, self.tail_limit = 0, limit - limit // 2
        self.total = 0
        self.limit = limit

    @property
    def exceeded(self) -> bool:
        return self.total > self.limit

    def write(self, data: bytes) -> None:
        self.total += len(data)
        if self.head_left > 0:
            head, data = data[:self.head_left], data[self.head_left:]
            self.file.write(head)
            self.head_left -= len(head)
        if data:
            self.tail.append(data)
            self.tail_bytes += len(data)
            while self.tail_bytes - len(self.tail[0]) >= self.tail_limit:
                self.tail_bytes -= len(self.tail.popleft())

    def close(self) -> None:
        tail = b"".join(self.tail)[-self.tail_limit:] if self.tail_limit else b""
        written = self.limit // 2 - max(self.head_left, 0)
        dropped = self.total - written - len(tail)
        if dropped > 0:
            self.file.write(f"\n[... {dropped} bytes of payload output dropped: the log keeps its first and last "
                            f"{self.limit // 2} bytes ...]\n".encode())
        self.file.write(tail)
        self.file.close()


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
    """Pids of a plain payload's processes: those carrying its tag, and the descendants of ``leader``."""
    marker = f"{TAG_VARIABLE}={tag}".encode()
    me = os.getpid()
    found = {int(e) for e in os.listdir("/proc") if e.isdigit() and int(e) != me and _has_tag(int(e), marker)}
    if leader is not None and _parent_of(leader) is not None:
        found |= descendants(leader)
    return found


def _signal_all(pids: set[int], sig: int) -> None:
    for pid in pids:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.kill(pid, sig)


class _Payload:
    """One started payload: its pid, its sandbox's PID 1 (contained runtimes), its group, its tag."""

    def __init__(self, runtime: Runtime, process: subprocess.Popen[bytes], tag: str,
                 group: PayloadGroup | None) -> None:
        self.runtime, self.process, self.tag, self.group = runtime, process, tag, group
        self.init_pid: int | None = None
        self.reaped = asyncio.get_running_loop().create_future()

    def processes(self) -> set[int]:
        if self.group is not None:
            return self.group.pids()
        if self.runtime.contained:
            return descendants(self.init_pid) - {self.process.pid} if self.init_pid else set()
        return payload_processes(self.tag, None if self.reaped.done() else self.process.pid)

    def kill_now(self) -> None:
        if self.runtime.contained and self.init_pid is not None:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.kill(self.init_pid, signal.SIGKILL)  # the kernel ends the whole PID namespace
        if self.group is not None:
            self.group.kill_all()
        if not self.reaped.done():
            # os.kill, never Popen.kill: Popen polls first, and a poll would reap the payload under the waiting
            # thread's feet (an unreaped child keeps its pid, so this cannot hit another process)
            for kill in (os.killpg, os.kill):
                with contextlib.suppress(ProcessLookupError, PermissionError):
                    kill(self.process.pid, signal.SIGKILL)
        if not self.runtime.contained:
            _signal_all(payload_processes(self.tag, None if self.reaped.done() else self.process.pid),
                        signal.SIGKILL)

    async def end(self, grace_s: float) -> None:
        """SIGTERM every process, ``grace_s`` for the payload to go, then SIGKILL until nothing is left."""
        if grace_s > 0 and not self.reaped.done():
            _signal_all(self.processes(), signal.SIGTERM)
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(self.process.pid, signal.SIGTERM)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(asyncio.shield(self.reaped), grace_s)
        for _ in range(KILL_ROUNDS):
            self.kill_now()
            if self.reaped.done() and not self.processes():
                break
            await asyncio.sleep(0.05)
        await self.reaped


def _wait4(pid: int, reaped: asyncio.Future[tuple[int | None, resource.struct_rusage]],
           loop: asyncio.AbstractEventLoop) -> None:
    """Reap the payload with its rusage (this thread alone reaps it: nothing may poll the Popen meanwhile)."""
    status: int | None
    try:
        _, status, rusage = os.wait4(pid, 0)
    except ChildProcessError:  # reaped elsewhere after all (Popen's own poll): its exit code is Popen's
        status, rusage = None, resource.struct_rusage((0.0, 0.0) + (0,) * 14)

    def settle() -> None:
        if not reaped.done():
            reaped.set_result((status, rusage))

    loop.call_soon_threadsafe(settle)


async def _read_info(fd: int, deadline_s: float) -> int | None:
    """The sandbox's PID 1 as bubblewrap's --info-fd tells it (JSON with "child-pid")."""
    os.set_blocking(fd, False)
    data = b""
    loop = asyncio.get_running_loop()
    end = loop.time() + deadline_s
    while loop.time() < end:
        try:
            chunk = os.read(fd, 4096)
        except BlockingIOError:
            chunk = None
        if chunk:
            data += chunk
            with contextlib.suppress(ValueError):
                pid = json.loads(data).get("child-pid")
                return int(pid) if pid else None
        elif chunk == b"":  # closed: whatever came is all
            break
        await asyncio.sleep(0.01)
    with contextlib.suppress(ValueError):
        return int(json.loads(data + b"}").get("child-pid")) if data else None
    return None


async def _pump(fd: int, log: BoundedLog, overflow: asyncio.Event) -> None:
    loop = asyncio.get_running_loop()
    reader = asyncio.StreamReader(limit=1 << 20)
    transport, _ = await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(reader), os.fdopen(fd, "rb"))
    try:
        while block := await reader.read(1 << 16):
            log.write(block)
            if log.exceeded:
                overflow.set()
    finally:
        transport.close()


async def run_payload(runtime: Runtime, launch: Launch, log_path: Path, limits: Limits, abort: asyncio.Event,
                      cgroups: Cgroups | None = None, sample_interval_s: float = 5.0,
                      on_usage: Callable[[Usage], None] | None = None) -> PayloadResult:
    """Run ``launch`` with ``runtime`` until it ends, is aborted or breaks a limit. ``on_usage`` is called with
    the latest figures after every sample (the pilot sends them with its heartbeats)."""
    loop = asyncio.get_running_loop()
    tag = secrets.token_hex(12)
    group = cgroups.create(f"job-{launch.job_id}-{tag[:8]}", limits.memory_bytes, limits.max_processes) \
        if cgroups is not None else None
    info_r, info_w = os.pipe() if runtime.contained else (None, None)
    out_r, out_w = os.pipe()
    command = runtime.command(launch, info_w)
    env = command.env if runtime.contained else {**command.env, TAG_VARIABLE: tag}
    join_fds = group.open_for_join() if group is not None else []

    def join_group() -> None:  # in the child, before exec: every process of the payload is in the group
        for fd in join_fds:
            os.write(fd, b"0")

    log = BoundedLog(log_path, limits.log_bytes)
    meter = UsageMeter()
    try:
        process = subprocess.Popen(command.argv, env=env, cwd=command.cwd, stdin=subprocess.DEVNULL, stdout=out_w,
                                   stderr=out_w, pass_fds=command.pass_fds, start_new_session=True,
                                   preexec_fn=join_group if join_fds else None)
    except BaseException:
        for fd in (info_r, info_w, out_r, out_w):
            if fd is not None:
                os.close(fd)
        log.close()
        if group is not None:
            group.remove()
        raise
    finally:
        if group is not None:
            group.close_join_fds()
    os.close(out_w)
    if info_w is not None:
        os.close(info_w)
    payload = _Payload(runtime, process, tag, group)
    threading.Thread(target=_wait4, args=(process.pid, payload.reaped, loop), daemon=True).start()
    overflow = asyncio.Event()
    pump = asyncio.create_task(_pump(out_r, log, overflow))
    if info_r is not None:
        payload.init_pid = await _read_info(info_r, INFO_WAIT_S)
        os.close(info_r)
    ended_by, detail = await _watch(payload, launch, limits, abort, overflow, meter, sample_interval_s, on_usage)
    await payload.end(KILL_GRACE_S if ended_by in ("aborted", "timeout") else 0)
    status, rusage = payload.reaped.result()
    meter.ended = time.monotonic()
    if status is not None:
        process.returncode = os.waitstatus_to_exitcode(status)  # reaped by us: Popen must not wait for it again
    with contextlib.suppress(TimeoutError):
        await asyncio.wait_for(pump, 10)
    log.close()
    meter.add_rusage(rusage)
    if group is not None:
        figures = group.figures()
        cpu = None if figures.cpu_user_s is None else figures.cpu_user_s + (figures.cpu_system_s or 0)
        meter.add_group(cpu, 0)
        if figures.oom_kills and ended_by is None:
            ended_by, detail = "memory", f"memory limit {limits.memory_bytes // MB} MB exceeded (killed by the kernel)"
        group.remove()
    if ended_by is None and log.exceeded:
        ended_by, detail = "output_too_large", f"payload log over {limits.log_bytes // MB} MB"
    return PayloadResult(process.returncode, ended_by, meter.usage(), detail)


async def _watch(payload: _Payload, launch: Launch, limits: Limits, abort: asyncio.Event, overflow: asyncio.Event,
                 meter: UsageMeter, interval_s: float,
                 on_usage: Callable[[Usage], None] | None) -> tuple[EndedBy | None, str]:
    """Sample the payload until it ends or must be ended; say why it must."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + limits.wall_time_s
    pause = min(0.5, interval_s)  # the first sample soon, so short payloads are measured too
    waits: dict[asyncio.Future[Any], str] = {asyncio.ensure_future(abort.wait()): "aborted",
                                             asyncio.ensure_future(overflow.wait()): "log"}
    try:
        while True:
            left = deadline - loop.time()
            if left <= 0:
                return "timeout", f"wall time {limits.wall_time_s:g} s exceeded"
            done, _ = await asyncio.wait({payload.reaped, *waits}, timeout=min(pause, left),
                                         return_when=asyncio.FIRST_COMPLETED)
            pause = interval_s
            if payload.reaped in done:
                return None, ""
            for future in done:
                if waits.get(future) == "aborted":
                    return "aborted", "aborted on the job-executor's request"
                if waits.get(future) == "log":
                    return "output_too_large", f"payload log over {limits.log_bytes // MB} MB"
            reason = _measure(payload, launch, limits, meter)
            if on_usage is not None:
                on_usage(meter.usage())
            if reason is not None:
                return reason
    finally:
        for future in waits:
            future.cancel()


def _measure(payload: _Payload, launch: Launch, limits: Limits, meter: UsageMeter) -> tuple[EndedBy, str] | None:
    s = sample(payload.processes())
    meter.add(s)
    memory = s.pss_bytes
    if payload.group is not None:
        figures = payload.group.figures()
        memory = figures.memory_bytes
        cpu = None if figures.cpu_user_s is None else figures.cpu_user_s + (figures.cpu_system_s or 0)
        meter.add_group(cpu, memory)
    if memory > limits.memory_bytes:
        return "memory", f"memory limit {limits.memory_bytes // MB} MB exceeded ({memory // MB} MB)"
    written = directory_bytes(str(launch.workdir))
    if written > limits.output_bytes:
        return "output_too_large", f"output volume over {limits.output_bytes // MB} MB ({written // MB} MB written)"
    return None

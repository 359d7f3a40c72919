"""Job monitoring data, prmon-like: what a payload's processes use, sampled from /proc every few seconds.

A sample sums over the payload's processes: CPU seconds (utime, stime), resident and proportional memory (RSS,
PSS from smaps_rollup), bytes read and written (/proc/PID/io; a reaped child's figures are added to its parent's,
so the live tree carries what its ended members did), processes and threads. ``UsageMeter`` keeps the maxima and
the latest figures; the final ones also take what the kernel says when the payload is reaped (rusage) and what
its control group counted, whichever knows more.
"""
from __future__ import annotations

import os
import resource
import time
from collections.abc import Iterable
from dataclasses import dataclass, field

from common.pilot_protocol import Usage

CLOCK_TICKS = os.sysconf("SC_CLK_TCK")
MB = 1 << 20


@dataclass
class Sample:
    cpu_s: float = 0.0
    rss_bytes: int = 0
    pss_bytes: int = 0
    read_bytes: int = 0
    written_bytes: int = 0
    processes: int = 0
    threads: int = 0


def _fields(path: str, wanted: Iterable[str]) -> dict[str, int]:
    """``name: value [kB]`` lines of a /proc file (status, io, smaps_rollup), in bytes where they say kB."""
    keys = set(wanted)
    out: dict[str, int] = {}
    with open(path) as f:
        for line in f:
            name, _, rest = line.partition(":")
            if name in keys:
                parts = rest.split()
                out[name] = int(parts[0]) * (1024 if len(parts) > 1 and parts[1] == "kB" else 1)
    return out


def sample(pids: Iterable[int]) -> Sample:
    s = Sample()
    for pid in pids:
        try:
            with open(f"/proc/{pid}/stat", "rb") as f:
                stat = f.read().rsplit(b")", 1)[1].split()
            status = _fields(f"/proc/{pid}/status", ("VmRSS", "Threads"))
        except (OSError, ValueError, IndexError):
            continue  # gone meanwhile
        s.processes += 1
        s.threads += status.get("Threads", 1)
        s.cpu_s += (int(stat[11]) + int(stat[12])) / CLOCK_TICKS
        s.rss_bytes += status.get("VmRSS", 0)
        try:
            s.pss_bytes += _fields(f"/proc/{pid}/smaps_rollup", ("Pss",)).get("Pss", 0)
        except OSError:
            s.pss_bytes += status.get("VmRSS", 0)
        try:
            io = _fields(f"/proc/{pid}/io", ("read_bytes", "write_bytes"))
            s.read_bytes += io.get("read_bytes", 0)
            s.written_bytes += io.get("write_bytes", 0)
        except OSError:
            pass
    return s


@dataclass
class UsageMeter:
    """The figures of one payload so far: maxima over the samples, and the latest sums."""

    started: float = field(default_factory=time.monotonic)
    cpu_s: float = 0.0
    max_rss_bytes: int = 0
    max_pss_bytes: int = 0
    read_bytes: int = 0
    written_bytes: int = 0
    max_processes: int = 0
    ended: float | None = None

    def add(self, s: Sample) -> None:
        self.cpu_s = max(self.cpu_s, s.cpu_s)
        self.max_rss_bytes = max(self.max_rss_bytes, s.rss_bytes)
        self.max_pss_bytes = max(self.max_pss_bytes, s.pss_bytes)
        self.read_bytes = max(self.read_bytes, s.read_bytes)
        self.written_bytes = max(self.written_bytes, s.written_bytes)
        self.max_processes = max(self.max_processes, s.processes)

    def add_rusage(self, ru: resource.struct_rusage) -> None:
        """What the kernel counted for the reaped payload and every descendant it reaped."""
        # (not ru_maxrss: the spawned process was a fork of the pilot before it exec'd, so it counts the pilot)
        self.cpu_s = max(self.cpu_s, ru.ru_utime + ru.ru_stime)
        self.read_bytes = max(self.read_bytes, ru.ru_inblock * 512)
        self.written_bytes = max(self.written_bytes, ru.ru_oublock * 512)

    def add_group(self, cpu_s: float | None, memory_bytes: int) -> None:
        if cpu_s is not None:
            self.cpu_s = max(self.cpu_s, cpu_s)
        self.max_rss_bytes = max(self.max_rss_bytes, memory_bytes)

    def usage(self) -> Usage:
        wall = (self.ended or time.monotonic()) - self.started
        return Usage(wall_s=round(wall, 3), cpu_s=round(self.cpu_s, 3),
                     max_rss_mb=round(self.max_rss_bytes / MB, 2), max_pss_mb=round(self.max_pss_bytes / MB, 2),
                     read_mb=round(self.read_bytes / MB, 3), written_mb=round(self.written_bytes / MB, 3),
                     max_processes=self.max_processes)


def descendants(root: int) -> set[int]:
    """``root`` and every process below it (through /proc parentage). Inside a PID namespace nothing can leave
    the tree: an orphan is adopted by the namespace's init, the root here."""
    children: dict[int, list[int]] = {}
    live: set[int] = set()
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat", "rb") as f:
                state, parent = f.read().rsplit(b")", 1)[1].split()[:2]
        except (OSError, ValueError, IndexError):
            continue
        if state != b"Z":  # a zombie holds nothing: only its pid, until somebody reaps it
            live.add(int(entry))
        children.setdefault(int(parent), []).append(int(entry))
    found: set[int] = set()
    todo = [root]
    while todo:
        pid = todo.pop()
        if pid not in found:
            found.add(pid)
            todo.extend(children.get(pid, ()))
    return found & live


def directory_bytes(path: str) -> int:
    """Bytes in a directory tree, links not followed (what a payload wrote into its attempt directory)."""
    total = 0
    stack = [path]
    while stack:
        try:
            with os.scandir(stack.pop()) as it:
                for entry in it:
                    try:
                        if entry.is_dir(follow_symlinks=False):
                            stack.append(entry.path)
                        elif entry.is_file(follow_symlinks=False):
                            total += entry.stat(follow_symlinks=False).st_size  # what staging would copy
                    except OSError:
                        continue
        except OSError:
            continue
    return total

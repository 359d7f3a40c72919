"""A control group of its own for each payload, where the node lets the pilot make one: memory limited with swap
off, processes limited, and accounting read from the group (exact, and still there after the payload ended).

cgroup v2 where the pilot's own group has the controllers delegated, else the v1 hierarchies ``memory``,
``cpuacct`` and ``pids`` where they are writable (the kind of machine we test on), else none: the pilot then
measures and bounds the payload by sampling /proc (pilot/usage.py) and says so at start.

Memory counts anon + shmem, never the page cache (HTCondor learned that the page cache causes false OOM kills);
the kernel's own limit reclaims the cache before it kills anything.
"""
from __future__ import annotations

import contextlib
import logging
import os
from dataclasses import dataclass
from pathlib import Path

log = logging.getLogger("wms.pilot.cgroups")
ROOT = Path("/sys/fs/cgroup")
V1_CONTROLLERS = ("memory", "cpuacct", "pids")


@dataclass(frozen=True)
class GroupFigures:
    memory_bytes: int  # anon + shmem now
    cpu_user_s: float | None
    cpu_system_s: float | None
    oom_kills: int


def _own_path(controller: str | None) -> str:
    """The pilot's own group in a v1 hierarchy (``controller``) or in v2 (None), from /proc/self/cgroup."""
    with open("/proc/self/cgroup") as f:
        for line in f:
            _, names, path = line.rstrip("\n").split(":", 2)
            if (controller is None and names == "") or (controller is not None and controller in names.split(",")):
                return path
    raise OSError(f"no {'v2' if controller is None else controller} line in /proc/self/cgroup")


def _write(path: Path, value: str) -> None:
    with open(path, "w") as f:
        f.write(value)


def _read_int(path: Path) -> int:
    return int(path.read_text().split()[0])


def _stat(path: Path) -> dict[str, int]:
    out: dict[str, int] = {}
    with contextlib.suppress(OSError):
        for line in path.read_text().splitlines():
            key, _, value = line.partition(" ")
            with contextlib.suppress(ValueError):
                out[key] = int(value)
    return out


class PayloadGroup:
    """One payload's group (all hierarchies). ``join_fds`` are opened before the fork, so the child joins with a
    single write each (pilot/payload.py does it between fork and exec)."""

    def __init__(self, version: int, dirs: dict[str, Path]) -> None:
        self.version, self.dirs = version, dirs
        self.join_fds: list[int] = []

    def open_for_join(self) -> list[int]:
        self.join_fds = [os.open(d / "cgroup.procs", os.O_WRONLY | os.O_CLOEXEC) for d in set(self.dirs.values())]
        return self.join_fds

    def close_join_fds(self) -> None:
        for fd in self.join_fds:
            with contextlib.suppress(OSError):
                os.close(fd)
        self.join_fds = []

    def pids(self) -> set[int]:
        found: set[int] = set()
        for d in set(self.dirs.values()):
            with contextlib.suppress(OSError):
                found.update(int(p) for p in (d / "cgroup.procs").read_text().split())
        return found

    def figures(self) -> GroupFigures:
        if self.version == 2:
            d = self.dirs["memory"]
            memory = _stat(d / "memory.stat")
            cpu = _stat(d / "cpu.stat")
            events = _stat(d / "memory.events")
            return GroupFigures(memory.get("anon", 0) + memory.get("shmem", 0),
                                cpu["user_usec"] / 1e6 if "user_usec" in cpu else None,
                                cpu["system_usec"] / 1e6 if "system_usec" in cpu else None,
                                events.get("oom_kill", 0))
        memory = _stat(self.dirs["memory"] / "memory.stat")
        oom = _stat(self.dirs["memory"] / "memory.oom_control")
        user = system = None
        with contextlib.suppress(OSError, ValueError):
            user = _read_int(self.dirs["cpuacct"] / "cpuacct.usage_user") / 1e9
            system = _read_int(self.dirs["cpuacct"] / "cpuacct.usage_sys") / 1e9
        return GroupFigures(memory.get("total_rss", 0) + memory.get("total_shmem", 0), user, system,
                            oom.get("oom_kill", 0))

    def kill_all(self) -> None:
        if self.version == 2:
            with contextlib.suppress(OSError):
                _write(self.dirs["memory"] / "cgroup.kill", "1")
        for pid in self.pids():
            with contextlib.suppress(OSError):
                os.kill(pid, 9)

    def remove(self) -> None:
        self.close_join_fds()
        for d in set(self.dirs.values()):
            with contextlib.suppress(OSError):
                d.rmdir()


class Cgroups:
    """Where this pilot makes its payloads' groups (a parent group of its own, under its own group)."""

    def __init__(self, version: int, parents: dict[str, Path]) -> None:
        self.version, self.parents = version, parents

    @property
    def description(self) -> str:
        return f"cgroup v{self.version}" if self.version else "none: /proc sampling"

    def create(self, name: str, memory_limit_bytes: int, max_processes: int) -> PayloadGroup | None:
        if not self.version:
            return None
        dirs = {c: p / name for c, p in self.parents.items()}
        try:
            for d in set(dirs.values()):
                d.mkdir(exist_ok=True)
            if self.version == 2:
                d = dirs["memory"]
                _write(d / "memory.max", str(memory_limit_bytes))
                with contextlib.suppress(OSError):  # no swap on the node: nothing to turn off
                    _write(d / "memory.swap.max", "0")
                _write(d / "pids.max", str(max_processes))
            else:
                _write(dirs["memory"] / "memory.limit_in_bytes", str(memory_limit_bytes))
                with contextlib.suppress(OSError):  # swap accounting off in the kernel: swappiness then
                    _write(dirs["memory"] / "memory.memsw.limit_in_bytes", str(memory_limit_bytes))
                with contextlib.suppress(OSError):
                    _write(dirs["memory"] / "memory.swappiness", "0")
                _write(dirs["pids"] / "pids.max", str(max_processes))
        except OSError as exc:
            log.warning("payload cgroup not made; sampling /proc instead", extra={"error": str(exc)})
            PayloadGroup(self.version, dirs).remove()
            return None
        return PayloadGroup(self.version, dirs)

    def remove(self) -> None:
        for p in set(self.parents.values()):
            with contextlib.suppress(OSError):
                p.rmdir()


def _v2_parent(label: str) -> Path | None:
    """A delegated v2 subtree: the pilot moves itself into a leaf of its group (no process may sit in a group
    that hands controllers to its children), then makes ``label`` beside it with memory, pids and cpu."""
    if not (ROOT / "cgroup.controllers").exists():
        return None
    own = ROOT / _own_path(None).lstrip("/")
    if not {"memory", "pids"} <= set((own / "cgroup.controllers").read_text().split()) or not os.access(own, os.W_OK):
        return None
    leaf = own / "pilot"
    leaf.mkdir(exist_ok=True)
    _write(leaf / "cgroup.procs", str(os.getpid()))
    controllers = [c for c in ("memory", "pids", "cpu") if c in (own / "cgroup.controllers").read_text().split()]
    _write(own / "cgroup.subtree_control", " ".join(f"+{c}" for c in controllers))
    parent = own / label
    parent.mkdir(exist_ok=True)
    _write(parent / "cgroup.subtree_control", " ".join(f"+{c}" for c in controllers))
    return parent


def _v1_parents(label: str) -> dict[str, Path] | None:
    parents: dict[str, Path] = {}
    for controller in V1_CONTROLLERS:
        mount = ROOT / controller
        if not (mount / "cgroup.procs").exists():
            return None
        parent = mount / _own_path(controller).lstrip("/") / label
        parent.mkdir(exist_ok=True)
        parents[controller] = parent
    return parents


def detect(label: str, wanted: bool = True) -> Cgroups:
    """The pilot's cgroups (``label``: its own parent group's name), or none where the node does not allow them."""
    if wanted:
        try:
            v2 = _v2_parent(label)
            if v2 is not None:
                return Cgroups(2, {c: v2 for c in ("memory", "cpu", "pids")})
            v1 = _v1_parents(label)
            if v1 is not None:
                return Cgroups(1, v1)
        except OSError as exc:
            log.info("no writable cgroups", extra={"error": str(exc)})
    return Cgroups(0, {})

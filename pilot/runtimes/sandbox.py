"""The ``sandbox`` runtime: every payload in a bubblewrap sandbox of its own (FIELD-NOTES: bubblewrap).

- Its own PID namespace with a fresh /proc: the payload sees only its own processes (never the pilot's, so
  never /proc/PPID/environ), and killing the sandbox's PID 1 makes the kernel kill every process in it (no escape
  by setsid or double fork). ``--die-with-parent`` is only a backup (it fires with the spawning thread, #692).
- A root of its own (a tmpfs) holding the node's top-level directories read-only, or those of the task's image
  (an unpacked root filesystem) instead; a private /tmp; the pilot's work area hidden; the attempt's directory
  at /wms/job the only writable place, its inputs read-only under /wms/job/inputs.
- An unprivileged payload: a pilot running as root starts bubblewrap as root (so it can bind what a 700
  directory holds) and the payload through setpriv as the site's payload user, all capabilities dropped (and
  no_new_privs, which bubblewrap sets); a pilot running as a normal user gets a user namespace mapping the
  payload to uid 65534 inside (outside it is still the pilot's uid: docs/security.md says what follows).
- The pilot's credential files are never bound in: the token file is masked with /dev/null.
- Optionally no network (a transformation that declares it needs none).
"""
from __future__ import annotations

import os
import shutil
import stat
from dataclasses import dataclass
from pathlib import Path

from common.pilot_protocol import PayloadRuntimeName
from pilot.runtimes import Command, Launch, RuntimeUnavailable, payload_view

SANDBOX_WORKDIR = Path("/wms/job")
HOST_TOOLS = Path("/.wms-host")  # the node's setpriv and its libraries, inside an image (root pilots only)
NOT_BOUND = {"proc", "dev", "tmp", "wms", ".wms-host", "lost+found"}


@dataclass(frozen=True)
class SandboxSettings:
    bwrap: str
    pilot_root: Path  # the pilot's work area: hidden, but for the attempt's own directory
    software: tuple[Path, ...]  # read-only paths the payloads need that may sit in hidden or closed directories
    masked: tuple[Path, ...]  # files that must read as empty (the pilot's token file)
    payload_user: tuple[int, int] | None  # when the pilot is root: who the payload runs as


def _depth(path: Path) -> int:
    return len(path.parts)


def _under(path: Path, parents: set[Path]) -> bool:
    return any(path == p or p in path.parents for p in parents)


def _traversable(path: Path, user: tuple[int, int] | None) -> bool:
    if user is None:  # the payload keeps the pilot's uid outside its user namespace
        return True
    st = path.stat()
    uid, gid = user
    bit = stat.S_IXUSR if st.st_uid == uid else stat.S_IXGRP if st.st_gid == gid else stat.S_IXOTH
    return bool(st.st_mode & bit)


def _parents(mounts: list[tuple[Path, list[str]]]) -> list[tuple[Path, list[str]]]:
    """The directories bubblewrap would make on its own (mode 0700: closed to the payload user) for mount points
    inside a tmpfs of the sandbox (its root, /tmp, a hidden directory), made explicitly with mode 0755 instead.
    A directory inside a bound one exists already and is left alone."""
    last: dict[Path, str] = {}  # what finally sits at each mount point (a tmpfs over a bound /root: the tmpfs)
    for dest, op in sorted(mounts, key=lambda m: _depth(m[0])):
        last[dest] = op[op.index("--tmpfs")] if "--tmpfs" in op else op[0]
    parents: dict[Path, list[str]] = {}
    for dest in last:
        for ancestor in dest.parents:
            if ancestor == Path("/") or ancestor in last or ancestor in parents:
                continue
            covering = next((a for a in ancestor.parents if a in last), Path("/"))
            if covering != Path("/") and last[covering] != "--tmpfs":
                continue  # inside a bound directory of the node or the image: it exists
            parents[ancestor] = ["--perms", "0755", "--dir", str(ancestor)]
    return list(parents.items())


def _elf_interpreter(binary: Path) -> Path:
    """The dynamic loader a binary names (PT_INTERP), to run the node's setpriv inside an image."""
    data = binary.read_bytes()
    if data[:4] != b"\x7fELF" or data[4] != 2:
        raise RuntimeUnavailable(f"{binary} is not a 64-bit ELF file")
    phoff = int.from_bytes(data[32:40], "little")
    phentsize, phnum = int.from_bytes(data[54:56], "little"), int.from_bytes(data[56:58], "little")
    for i in range(phnum):
        header = data[phoff + i * phentsize: phoff + (i + 1) * phentsize]
        if int.from_bytes(header[0:4], "little") == 3:  # PT_INTERP
            offset, size = int.from_bytes(header[8:16], "little"), int.from_bytes(header[32:40], "little")
            return Path(data[offset:offset + size].rstrip(b"\0").decode())
    raise RuntimeUnavailable(f"{binary} names no dynamic loader")


class Sandbox:
    name: PayloadRuntimeName = "sandbox"
    contained = True

    def __init__(self, settings: SandboxSettings) -> None:
        self.settings = settings
        if shutil.which(settings.bwrap) is None:
            raise RuntimeUnavailable(f"bubblewrap ({settings.bwrap}) is not installed: apt-get install bubblewrap, "
                                     "or choose WMS_PILOT_RUNTIME=plain explicitly")
        self.bwrap = str(shutil.which(settings.bwrap))
        self.setpriv = shutil.which("setpriv") if settings.payload_user else None
        if settings.payload_user and self.setpriv is None:
            raise RuntimeUnavailable("setpriv (util-linux) is needed to run payloads as the payload user")

    def owner(self) -> tuple[int, int] | None:
        return self.settings.payload_user

    def command(self, launch: Launch, info_fd: int | None) -> Command:
        args, env, inputs = payload_view(launch, SANDBOX_WORKDIR)
        env["HOME"] = str(SANDBOX_WORKDIR)
        env["TMPDIR"] = "/tmp"
        argv = [self.bwrap, "--unshare-pid", "--unshare-ipc", "--unshare-uts", "--new-session", "--die-with-parent"]
        if self.settings.payload_user is None:
            argv += ["--unshare-user", "--uid", "65534", "--gid", "65534", "--disable-userns"]
        if not launch.network:
            argv.append("--unshare-net")
        if info_fd is not None:
            argv += ["--info-fd", str(info_fd)]
        root = launch.image or Path("/")
        mounts = self._root(root) + [(Path("/tmp"), ["--perms", "1777", "--tmpfs", "/tmp"])]
        if launch.image is None:
            mounts += self._host_paths()
        elif self.setpriv is not None:
            interpreter = _elf_interpreter(Path(self.setpriv)).resolve()
            mounts += [(HOST_TOOLS / "setpriv", ["--ro-bind", self.setpriv, str(HOST_TOOLS / "setpriv")]),
                       (HOST_TOOLS / "lib", ["--ro-bind", str(interpreter.parent), str(HOST_TOOLS / "lib")])]
        mounts.append((SANDBOX_WORKDIR, ["--bind", str(launch.workdir), str(SANDBOX_WORKDIR)]))
        if launch.inputs:
            mounts.append((SANDBOX_WORKDIR / "inputs", ["--tmpfs", str(SANDBOX_WORKDIR / "inputs")]))
            mounts += [(p, ["--ro-bind", str(source), str(p)])
                       for (source, _), p in zip(launch.inputs, inputs, strict=True)]
        for _, mount in sorted(mounts + _parents(mounts), key=lambda m: _depth(m[0])):  # parents first (stable)
            argv += mount
        argv += ["--proc", "/proc", "--dev", "/dev", "--chdir", str(SANDBOX_WORKDIR), "--"]
        argv += self._as_payload_user(launch.image is not None) + [launch.command, *args]
        return Command(argv, env, launch.workdir, (info_fd,) if info_fd is not None else (), SANDBOX_WORKDIR,
                       inputs)

    @staticmethod
    def _root(root: Path) -> list[tuple[Path, list[str]]]:
        """The top-level entries of the node's (or the image's) root, read-only, on a root of the sandbox's own
        (so /wms can be made, and nothing of the node is writable)."""
        mounts = []
        for name in sorted(os.listdir(root)):
            if name in NOT_BOUND:
                continue
            path = root / name
            if path.is_symlink():
                mounts.append((Path("/") / name, ["--symlink", os.readlink(path), f"/{name}"]))
            elif path.is_dir() or path.is_file():
                mounts.append((Path("/") / name, ["--ro-bind", str(path), f"/{name}"]))
        return mounts

    def _host_paths(self) -> list[tuple[Path, list[str]]]:
        """The pilot's work area hidden; software in closed or hidden directories bound where it is; the masked
        files emptied."""
        user = self.settings.payload_user
        hidden: set[Path] = {Path("/tmp")}
        mounts: list[tuple[Path, list[str]]] = []

        def hide(path: Path) -> None:
            if not _under(path, hidden):
                hidden.add(path)
                mounts.append((path, ["--tmpfs", str(path)]))

        if self.settings.pilot_root.exists():
            hide(self.settings.pilot_root)
        for path in self.settings.software:
            if not path.exists():
                continue
            closed = next((a for a in reversed(path.parents) if a != Path("/") and not _traversable(a, user)), None)
            if closed is not None:
                hide(closed)
            if _under(path, hidden):
                mounts.append((path, ["--ro-bind", str(path), str(path)]))
        for path in self.settings.masked:
            if path.exists() and not _under(path, hidden):
                mounts.append((path, ["--ro-bind", "/dev/null", str(path)]))
        return mounts

    def _as_payload_user(self, in_image: bool) -> list[str]:
        if self.settings.payload_user is None or self.setpriv is None:
            return []
        uid, gid = self.settings.payload_user
        switch = [f"--reuid={uid}", f"--regid={gid}", "--clear-groups", "--inh-caps=-all", "--bounding-set=-all",
                  "--"]
        if not in_image:
            return [self.setpriv, *switch]
        interpreter = _elf_interpreter(Path(self.setpriv))
        return [str(HOST_TOOLS / "lib" / interpreter.name), "--library-path", str(HOST_TOOLS / "lib"),
                str(HOST_TOOLS / "setpriv"), *switch]

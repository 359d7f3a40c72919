"""Stage-in and stage-out on a shared filesystem (file:// URLs), with size and adler32. What a payload left is
staged only if it is a regular file of its own (open_regular): never through a link, a FIFO or a device.

These functions block (they read and copy whole files): the pilot runs them in a worker thread, so its event
loop keeps heartbeating however long staging takes. An optional bandwidth limit (bytes/s) protects shared
storage from a farm of pilots staging at once.
"""
from __future__ import annotations

import os
import time
from pathlib import Path
from typing import BinaryIO
from urllib.parse import unquote, urlsplit

from common.checksums import BLOCK, adler32_of
from common.pilot_protocol import InputFile, StagedFile
from common.storage import unsafe_kind


class StagingError(Exception):
    pass


class UnsafeFile(Exception):
    """What a payload left is not a regular file of its own: a symlink, a hard link, a FIFO, a device, a
    directory (category 'manifest'; nothing of it is copied)."""


def open_regular(name: str, dir_fd: int | None = None) -> int:
    """A read-only descriptor of ``name`` (in the directory ``dir_fd``), only if it is a regular file with one
    link: never following a link, never blocking on a FIFO, and checked again on the opened file (a swap between
    the look and the open is caught)."""
    looked = os.stat(name, dir_fd=dir_fd, follow_symlinks=False)
    why = unsafe_kind(looked)
    if why is not None:
        raise UnsafeFile(f"{os.path.basename(name)} is {why}")
    fd = os.open(name, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC, dir_fd=dir_fd)
    opened = os.fstat(fd)
    why = unsafe_kind(opened)
    if why is not None or (opened.st_dev, opened.st_ino) != (looked.st_dev, looked.st_ino):
        os.close(fd)
        raise UnsafeFile(f"{os.path.basename(name)} is {why or 'replaced while being opened'}")
    return fd


def open_directory(path: Path) -> int:
    """The payload's output directory, refused if it was replaced by a link."""
    try:
        return os.open(path, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC)
    except OSError as exc:
        raise UnsafeFile(f"{path.name} is not a directory of the attempt ({exc.strerror})") from exc


def read_small(name: str, dir_fd: int | None, limit: int) -> bytes:
    """A regular file's content (open_regular), at most ``limit`` bytes, else UnsafeFile."""
    fd = open_regular(name, dir_fd)
    with os.fdopen(fd, "rb") as f:
        data = f.read(limit + 1)
    if len(data) > limit:
        raise UnsafeFile(f"{name} is larger than {limit} bytes")
    return data


class Throttle:
    """Paces reads and writes to at most ``bytes_per_s`` (0: unlimited)."""

    def __init__(self, bytes_per_s: float = 0) -> None:
        self.bytes_per_s = bytes_per_s
        self._start = time.monotonic()
        self._moved = 0

    def moved(self, n: int) -> None:
        if self.bytes_per_s <= 0:
            return
        self._moved += n
        ahead = self._moved / self.bytes_per_s - (time.monotonic() - self._start)
        if ahead > 0:
            time.sleep(ahead)


UNLIMITED = Throttle()


def local_path(url: str) -> Path:
    parts = urlsplit(url)
    if parts.scheme != "file":
        raise StagingError(f"only file:// URLs are supported in this version, not {url}")
    return Path(unquote(parts.path))


def adler32(path: Path, throttle: Throttle = UNLIMITED) -> str:
    return adler32_of(path, throttle.moved)


def stage_in(inputs: list[InputFile], directory: Path, throttle: Throttle = UNLIMITED) -> list[tuple[Path, str]]:
    """Check each input's size and checksum and link it into ``directory`` (named as its lfn's last part);
    the (file, name) pairs, which a sandbox binds read-only under the same names."""
    directory.mkdir(parents=True, exist_ok=True)
    staged: list[tuple[Path, str]] = []
    for f in inputs:
        source = local_path(f.url)
        if not source.is_file():
            raise StagingError(f"input {f.lfn} missing at {f.url}")
        if f.size is not None and source.stat().st_size != f.size:
            raise StagingError(f"input {f.lfn}: size {source.stat().st_size}, catalogue says {f.size}")
        if f.adler32 is not None and adler32(source, throttle) != f.adler32:
            raise StagingError(f"input {f.lfn}: adler32 mismatch")
        name = Path(f.lfn).name
        if (directory / name).exists():
            name = f"{len(staged)}-{name}"
        os.symlink(source, directory / name)
        staged.append((source, name))
    return staged


def _copy(src: BinaryIO, target: Path, throttle: Throttle) -> None:
    with target.open("wb") as dst:
        while block := src.read(BLOCK):
            dst.write(block)
            throttle.moved(len(block))


def stage_out(source_fd: int, name: str, url_prefix: str, lfn: str, events: int | None = None,
              throttle: Throttle = UNLIMITED) -> StagedFile:
    """Copy the open file ``source_fd`` (from open_regular; closed here) to ``name`` under the storage URL prefix
    (atomically: copy then rename) and describe it."""
    target_dir = local_path(url_prefix)
    target = target_dir / name
    partial = target.with_name(target.name + ".part")
    try:
        with os.fdopen(source_fd, "rb") as src:
            target_dir.mkdir(parents=True, exist_ok=True)
            _copy(src, partial, throttle)
        os.replace(partial, target)
        size = target.stat().st_size
        checksum = adler32(target, throttle)
    except OSError as exc:
        # a full or failing storage: nothing of this file stays behind (the caller removes what came before)
        for leftover in (partial, target):
            try:
                leftover.unlink(missing_ok=True)
            except OSError:
                pass
        raise StagingError(f"cannot stage out {name}: {exc}") from exc
    return StagedFile(lfn=lfn, url=f"file://{target}", size=size, adler32=checksum, events=events)


def remove_staged(files: list[StagedFile]) -> None:
    """Delete what an attempt staged out that will never be registered (its report was refused)."""
    for f in files:
        try:
            local_path(f.url).unlink(missing_ok=True)
        except (OSError, StagingError):
            pass

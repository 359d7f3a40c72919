"""Reading a file under the storage root safely, for every reader of what pilots staged (explain, the monitor,
the quality plots, output verification).

A path that a pilot reported is resolved component by component from a descriptor of the storage root, each
directory opened with O_NOFOLLOW | O_DIRECTORY and the file itself with O_NOFOLLOW | O_NONBLOCK, so a symlink
anywhere in the path (swapped in while we look: realpath-then-open guards only the last component) is refused,
never followed; the opened file must be a regular file with one link. Reads are bounded. Removing what a lost
attempt left (remove_beneath) walks the same way.
"""
from __future__ import annotations

import os
import shutil
import stat
from collections.abc import Iterator
from contextlib import contextmanager


class UnsafeStoragePath(Exception):
    """Not a regular, single-link file under the storage root (a link on the way, a FIFO, a device, outside)."""


def relative_to_root(url: str, storage_root: str) -> list[str]:
    """The components of a file:// URL's path below ``storage_root``; UnsafeStoragePath if it is not below it."""
    if not url.startswith("file://"):
        raise UnsafeStoragePath(f"{url!r} is not a file:// URL")
    root = os.path.normpath(storage_root)
    path = url.removeprefix("file://")
    if not path.startswith(root.rstrip("/") + "/"):
        raise UnsafeStoragePath(f"{url!r} is not under the storage root")
    parts = path[len(root.rstrip("/")) + 1:].split("/")
    if any(p in ("", ".", "..") for p in parts) or "\0" in path:
        raise UnsafeStoragePath(f"{url!r} has an empty, '.' or '..' component")
    return parts


def unsafe_kind(st: os.stat_result) -> str | None:
    """Why a file may not be read as what a payload produced, or None for a regular file with one link (the pilot's
    staging and the services' readers share this one rule)."""
    if stat.S_ISLNK(st.st_mode):
        return "a symbolic link"
    if stat.S_ISDIR(st.st_mode):
        return "a directory"
    if stat.S_ISFIFO(st.st_mode):
        return "a FIFO"
    if stat.S_ISCHR(st.st_mode) or stat.S_ISBLK(st.st_mode):
        return "a device"
    if stat.S_ISSOCK(st.st_mode):
        return "a socket"
    if not stat.S_ISREG(st.st_mode):
        return "not a regular file"
    if st.st_nlink != 1:
        return f"a hard link ({st.st_nlink} links)"
    return None


def _open_parent(parts: list[str], storage_root: str) -> int:
    """A descriptor of the directory holding ``parts[-1]``, reached from the root one component at a time without
    following a link (a swapped component fails instead of leading elsewhere)."""
    try:
        current = os.open(storage_root, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    except OSError as exc:
        raise UnsafeStoragePath(f"storage root not readable: {exc.strerror}") from exc
    for part in parts[:-1]:
        try:
            following = os.open(part, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC, dir_fd=current)
        except OSError as exc:
            os.close(current)
            raise UnsafeStoragePath(f"{part!r}: not a directory of the storage ({exc.strerror})") from exc
        os.close(current)
        current = following
    return current


def remove_beneath(url: str, storage_root: str) -> None:
    """Delete the file or directory tree ``url`` names under the root (gone already: nothing to do), never
    through a link: neither on the way to it nor inside it."""
    parts = relative_to_root(url.rstrip("/"), storage_root)
    try:
        parent = _open_parent(parts, storage_root)
    except UnsafeStoragePath:
        return  # not there (or not ours to follow): nothing of it beneath the root to remove
    try:
        info = os.stat(parts[-1], dir_fd=parent, follow_symlinks=False)
        if stat.S_ISDIR(info.st_mode):
            shutil.rmtree(parts[-1], dir_fd=parent)
        else:
            os.unlink(parts[-1], dir_fd=parent)
    except FileNotFoundError:
        pass
    finally:
        os.close(parent)


@contextmanager
def open_beneath(url: str, storage_root: str) -> Iterator[tuple[int, os.stat_result]]:
    """A read-only descriptor (and its stat) of the regular single-link file ``url`` names under the root."""
    parts = relative_to_root(url, storage_root)
    current = _open_parent(parts, storage_root)
    try:
        try:
            fd = os.open(parts[-1], os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC, dir_fd=current)
        except OSError as exc:
            raise UnsafeStoragePath(f"{parts[-1]!r}: not readable ({exc.strerror})") from exc
    finally:
        os.close(current)
    try:
        info = os.fstat(fd)
        why = unsafe_kind(info)
        if why is not None:
            raise UnsafeStoragePath(f"{parts[-1]!r} is {why}")
        yield fd, info
    finally:
        os.close(fd)


def read_regular_tail(path: str, max_bytes: int) -> bytes:
    """The last ``max_bytes`` of a regular file at ``path`` (its own last component not a link), never blocking on a
    FIFO nor reading a device without end: for a client that has no storage root to check against. Blocking."""
    fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC)
    try:
        info = os.fstat(fd)
        if not stat.S_ISREG(info.st_mode):
            raise UnsafeStoragePath(f"{path} is not a regular file")
        os.lseek(fd, max(0, info.st_size - max_bytes), os.SEEK_SET)
        return os.read(fd, max_bytes)
    finally:
        os.close(fd)


def read_beneath(url: str, storage_root: str, max_bytes: int, from_end: bool = False) -> bytes:
    """At most ``max_bytes`` of the file (the first, or with ``from_end`` the last ones). Blocking."""
    with open_beneath(url, storage_root) as (fd, info):
        if from_end:
            os.lseek(fd, max(0, info.st_size - max_bytes), os.SEEK_SET)
        chunks, left = [], max_bytes
        while left > 0 and (chunk := os.read(fd, min(left, 1 << 20))):
            chunks.append(chunk)
            left -= len(chunk)
        return b"".join(chunks)

"""Stage-in and stage-out on a shared filesystem (file:// URLs), with size and adler32.

These functions block (they read and copy whole files): the pilot runs them in a worker thread, so its event
loop keeps heartbeating however long staging takes. An optional bandwidth limit (bytes/s) protects shared
storage from a farm of pilots staging at once.
"""
from __future__ import annotations

import os
import time
from pathlib import Path
from urllib.parse import unquote, urlsplit

from common.checksums import BLOCK, adler32_of
from common.pilot_protocol import InputFile, StagedFile


class StagingError(Exception):
    pass


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


def stage_in(inputs: list[InputFile], directory: Path, throttle: Throttle = UNLIMITED) -> list[Path]:
    """Link each input into ``directory`` (same name as its lfn's last part); check size and checksum."""
    directory.mkdir(parents=True, exist_ok=True)
    staged: list[Path] = []
    for f in inputs:
        source = local_path(f.url)
        if not source.is_file():
            raise StagingError(f"input {f.lfn} missing at {f.url}")
        if f.size is not None and source.stat().st_size != f.size:
            raise StagingError(f"input {f.lfn}: size {source.stat().st_size}, catalogue says {f.size}")
        if f.adler32 is not None and adler32(source, throttle) != f.adler32:
            raise StagingError(f"input {f.lfn}: adler32 mismatch")
        target = directory / Path(f.lfn).name
        if target.exists():
            target = directory / f"{len(staged)}-{Path(f.lfn).name}"
        os.symlink(source, target)
        staged.append(target)
    return staged


def _copy(source: Path, target: Path, throttle: Throttle) -> None:
    with source.open("rb") as src, target.open("wb") as dst:
        while block := src.read(BLOCK):
            dst.write(block)
            throttle.moved(len(block))


def stage_out(path: Path, url_prefix: str, lfn: str, events: int | None = None,
              throttle: Throttle = UNLIMITED) -> StagedFile:
    """Copy ``path`` under the storage URL prefix (atomically: copy then rename) and describe it."""
    target_dir = local_path(url_prefix)
    target = target_dir / path.name
    partial = target.with_name(target.name + ".part")
    try:
        target_dir.mkdir(parents=True, exist_ok=True)
        _copy(path, partial, throttle)
        os.replace(partial, target)
        size = target.stat().st_size
        checksum = adler32(target, throttle)
    except OSError as exc:
        raise StagingError(f"cannot stage out {path.name}: {exc}") from exc
    return StagedFile(lfn=lfn, url=f"file://{target}", size=size, adler32=checksum, events=events)


def remove_staged(files: list[StagedFile]) -> None:
    """Delete what an attempt staged out that will never be registered (its report was refused)."""
    for f in files:
        try:
            local_path(f.url).unlink(missing_ok=True)
        except (OSError, StagingError):
            pass

"""Stage-in and stage-out on a shared filesystem (file:// URLs), with size and adler32."""
from __future__ import annotations

import os
import shutil
import zlib
from pathlib import Path
from urllib.parse import unquote, urlsplit

from common.pilot_protocol import InputFile, StagedFile

BLOCK = 1 << 20


class StagingError(Exception):
    pass


def local_path(url: str) -> Path:
    parts = urlsplit(url)
    if parts.scheme != "file":
        raise StagingError(f"only file:// URLs are supported in this version, not {url}")
    return Path(unquote(parts.path))


def adler32(path: Path) -> str:
    value = 1
    with path.open("rb") as f:
        while block := f.read(BLOCK):
            value = zlib.adler32(block, value)
    return f"{value & 0xFFFFFFFF:08x}"


def stage_in(inputs: list[InputFile], directory: Path) -> list[Path]:
    """Link each input into ``directory`` (same name as its lfn's last part); check size and checksum."""
    directory.mkdir(parents=True, exist_ok=True)
    staged = []
    for f in inputs:
        source = local_path(f.url)
        if not source.is_file():
            raise StagingError(f"input {f.lfn} missing at {f.url}")
        if f.size is not None and source.stat().st_size != f.size:
            raise StagingError(f"input {f.lfn}: size {source.stat().st_size}, catalogue says {f.size}")
        if f.adler32 is not None and adler32(source) != f.adler32:
            raise StagingError(f"input {f.lfn}: adler32 mismatch")
        target = directory / Path(f.lfn).name
        if target.exists():
            target = directory / f"{len(staged)}-{Path(f.lfn).name}"
        os.symlink(source, target)
        staged.append(target)
    return staged


def stage_out(path: Path, url_prefix: str, lfn: str, events: int | None = None) -> StagedFile:
    """Copy ``path`` under the storage URL prefix (atomically: copy then rename) and describe it."""
    target_dir = local_path(url_prefix)
    target_dir.mkdir(parents=True, exist_ok=True)
    target = target_dir / path.name
    partial = target.with_name(target.name + ".part")
    try:
        shutil.copyfile(path, partial)
        os.replace(partial, target)
    except OSError as exc:
        raise StagingError(f"cannot stage out {path.name}: {exc}") from exc
    return StagedFile(lfn=lfn, url=f"file://{target}", size=target.stat().st_size, adler32=adler32(target),
                      events=events)

"""adler32 of a file, the checksum of every file in the WMS and the DSM: 8 lowercase hex digits (zlib's
adler32, starting value 1, read in 1 MiB blocks). Used by pilots when they stage and by the job-executor when it
verifies what a pilot staged."""
from __future__ import annotations

import os
import zlib
from collections.abc import Callable
from pathlib import Path

BLOCK = 1 << 20


def adler32_of(path: Path, on_block: Callable[[int], None] | None = None) -> str:
    """``on_block(n)`` is called after each block read (a throttle, for instance)."""
    with path.open("rb") as f:
        return adler32_of_file(f.fileno(), on_block)


def adler32_of_file(fd: int, on_block: Callable[[int], None] | None = None) -> str:
    """adler32 of an open file, read from where it stands to its end."""
    value = 1
    while block := os.read(fd, BLOCK):
        value = zlib.adler32(block, value)
        if on_block is not None:
            on_block(len(block))
    return f"{value & 0xFFFFFFFF:08x}"

"""Log files of the launcher's children, rotated by size: ``<name>.log`` moves to ``<name>.log.1`` (and on to
``.N``, the oldest dropped) once it would pass the limit, so a launch left running for weeks keeps a bounded
disk footprint. Each child's output (stdout and stderr) is pumped into its log by a thread."""
from __future__ import annotations

import threading
from pathlib import Path
from typing import IO, BinaryIO

READ_CHUNK = 1 << 16


class RotatingLog:
    def __init__(self, path: Path, max_bytes: int, backups: int) -> None:
        self.path, self.max_bytes, self.backups = path, max_bytes, backups
        self._file: BinaryIO = path.open("ab")
        self._size = path.stat().st_size

    def write(self, data: bytes) -> None:
        if self._size and self._size + len(data) > self.max_bytes:
            self._rotate()
        self._file.write(data)
        self._file.flush()
        self._size += len(data)

    def _rotate(self) -> None:
        self._file.close()
        for n in range(self.backups - 1, 0, -1):
            older = self.path.with_name(f"{self.path.name}.{n}")
            if older.exists():
                older.replace(self.path.with_name(f"{self.path.name}.{n + 1}"))
        if self.backups > 0:
            self.path.replace(self.path.with_name(f"{self.path.name}.1"))
        else:
            self.path.unlink(missing_ok=True)
        self._file, self._size = self.path.open("ab"), 0

    def close(self) -> None:
        self._file.close()


def pump(stream: IO[bytes], log: RotatingLog) -> threading.Thread:
    """Copy ``stream`` into ``log`` until it ends (the child exited), in a daemon thread."""

    def run() -> None:
        try:
            while chunk := stream.read1(READ_CHUNK):  # type: ignore[attr-defined]
                log.write(chunk)
        finally:
            log.close()
            stream.close()

    thread = threading.Thread(target=run, name=f"log:{log.path.name}", daemon=True)
    thread.start()
    return thread

"""The launcher's logs rotate by size and keep a bounded number of old files."""
from __future__ import annotations

import io
from pathlib import Path

from tools.launcher.logs import RotatingLog, pump


def test_log_rotates_and_keeps_n_backups(tmp_path: Path) -> None:
    log = RotatingLog(tmp_path / "svc.log", max_bytes=100, backups=2)
    for i in range(10):
        log.write(f"{i}".encode() * 60)  # 60 bytes a line: every second write rotates
    log.close()
    names = sorted(p.name for p in tmp_path.iterdir())
    assert names == ["svc.log", "svc.log.1", "svc.log.2"]
    assert (tmp_path / "svc.log").read_bytes() == b"9" * 60
    assert (tmp_path / "svc.log.1").read_bytes() == b"8" * 60
    assert all(p.stat().st_size <= 100 for p in tmp_path.iterdir())


def test_pump_copies_a_stream_until_it_ends(tmp_path: Path) -> None:
    stream = io.BufferedReader(io.BytesIO(b"line 1\nline 2\n" * 1000))
    pump(stream, RotatingLog(tmp_path / "child.log", max_bytes=1 << 20, backups=1)).join(timeout=10)
    assert (tmp_path / "child.log").read_bytes() == b"line 1\nline 2\n" * 1000

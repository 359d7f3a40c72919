"""Pure helpers of the wms CLI: ages for `wms purge`, the local log tail of `wms explain`."""
from __future__ import annotations

import os

import pytest
import typer

from tools.cli.main import LOG_TAIL_BYTES, local_log_tail, parse_age


def test_ages_take_units() -> None:
    assert parse_age("30d") == 30 * 86400
    assert parse_age("12h") == 12 * 3600
    assert parse_age("90m") == 5400
    assert parse_age("2w") == 14 * 86400
    assert parse_age("45") == parse_age("45s") == 45
    for bad in ("", "d", "ten days", "-1d"):
        with pytest.raises(typer.BadParameter):
            parse_age(bad)


def test_a_log_on_this_machine_is_read_from_its_end(tmp_path) -> None:
    log = tmp_path / "job.log"
    log.write_text("x" * 10_000 + "the last line\n")
    tail, where = local_log_tail(f"file://{log}")
    assert tail is not None and tail.endswith("the last line\n") and len(tail) == LOG_TAIL_BYTES
    assert str(log) in where
    assert local_log_tail(f"file://{tmp_path}/missing.log") == (
        None, "not readable from this machine: No such file or directory")
    tail, where = local_log_tail("root://eos.example.org//spd/log.txt")
    assert tail is None and "not a file on shared storage" in where


def test_the_local_log_fallback_is_bounded_and_never_blocks(tmp_path) -> None:
    """Issue 21 finding 1: /dev/zero read without bound (MemoryError), a FIFO hung the CLI."""
    fifo = tmp_path / "fifo.log"
    os.mkfifo(fifo)
    for url in ("file:///dev/zero", f"file://{fifo}"):
        tail, where = local_log_tail(url)
        assert tail is None and "not a regular file" in where, (url, where)

"""The payload's log keeps its head and its tail within the limit, and says how much of the middle it dropped."""
from __future__ import annotations

from pathlib import Path

from hypothesis import given, settings
from hypothesis import strategies as st

from pilot.payload import BoundedLog


@settings(max_examples=60, deadline=None)
@given(st.integers(2, 400), st.lists(st.binary(min_size=0, max_size=120), max_size=40))
def test_a_log_keeps_head_and_tail_within_its_limit(tmp_path_factory, limit, blocks) -> None:
    path = Path(tmp_path_factory.mktemp("log")) / "payload.log"
    log = BoundedLog(path, limit)
    for block in blocks:
        log.write(block)
    log.close()
    data, written = path.read_bytes(), b"".join(blocks)
    if len(written) <= limit:
        assert data == written
        assert not log.exceeded
    else:
        head, tail = limit // 2, limit - limit // 2
        assert log.exceeded
        assert data.startswith(written[:head]) and data.endswith(written[-tail:])
        dropped = len(written) - head - tail
        assert f"[... {dropped} bytes of payload output dropped".encode() in data

"""Progress figures from per-state job counts (pure)."""
from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from common.states import JobState
from services.task_manager.progress import compute_progress


def test_no_jobs_yet() -> None:
    p = compute_progress(None, 0, {}, 0, None)
    assert (p.percent, p.rate_files_per_s, p.eta_s) == (None, None, None)
    assert p.jobs["ready"] == 0


def test_counts_rate_and_eta() -> None:
    by_state = {"finished": (5, 50), "failed": (1, 10), "running": (2, 20), "ready": (2, 20)}
    p = compute_progress(100, 100, by_state, recent_files_done=50, recent_span_s=100.0)
    assert (p.files_done, p.files_failed, p.files_in_progress, p.files_pending) == (50, 10, 20, 20)
    assert p.percent == 60.0
    assert p.rate_files_per_s == pytest.approx(0.5)
    assert p.eta_s == pytest.approx(80.0)  # 40 files left at 0.5 files/s
    assert p.jobs["finished"] == 5


def test_open_dataset_uses_files_known_so_far() -> None:
    p = compute_progress(None, 40, {"finished": (2, 20), "ready": (2, 20)}, 0, None)
    assert p.percent == 50.0
    assert p.eta_s is None  # nothing finished within the window: no rate, no ETA


def test_cancelled_files_count_as_ended_not_done() -> None:
    p = compute_progress(20, 20, {"cancelled": (1, 10), "finished": (1, 10)}, 0, None)
    assert (p.files_done, p.files_failed, p.files_cancelled, p.percent) == (10, 0, 10, 100.0)


job_counts = st.dictionaries(st.sampled_from([s.value for s in JobState]),
                             st.tuples(st.integers(0, 1000), st.integers(0, 10_000)))


@given(job_counts, st.integers(0, 10_000), st.integers(0, 10_000), st.floats(0, 3600))
def test_progress_is_bounded_and_consistent(by_state, extra_files, recent_done, span) -> None:
    files = sum(f for _, f in by_state.values())
    total = files + extra_files
    p = compute_progress(total, files, by_state, recent_done, span or None)
    ended = p.files_done + p.files_failed + p.files_cancelled
    assert ended + p.files_in_progress + p.files_pending == files  # every file is in exactly one bucket
    if total:
        assert p.percent is not None and 0 <= p.percent <= 100
        assert p.percent == round(100.0 * ended / total, 2)
    else:
        assert p.percent is None
    if p.eta_s is not None:
        assert p.rate_files_per_s and p.eta_s >= 0
        assert p.eta_s == pytest.approx((total - ended) / p.rate_files_per_s)
    assert sum(p.jobs.values()) == sum(j for j, _ in by_state.values())

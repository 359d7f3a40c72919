"""The example SPD payloads' physics-like logic (pure parts)."""
from __future__ import annotations

from examples.spd.filter import is_hot
from examples.spd.generate import SLICE_NS, generate_slice
from examples.spd.unscramble import events_of


def test_slices_are_deterministic_sorted_and_inside_their_window() -> None:
    a, b = generate_slice(3, seed=7), generate_slice(3, seed=7)
    assert a == b and a != generate_slice(4, seed=7)
    assert [h["t"] for h in a] == sorted(h["t"] for h in a)
    assert all(3 * SLICE_NS <= h["t"] < 4 * SLICE_NS for h in a)


def test_unscramble_clusters_hits_by_time_gap() -> None:
    hits = [{"t": 0.0, "ch": 1, "adc": 10}, {"t": 20.0, "ch": 2, "adc": 5}, {"t": 500.0, "ch": 3, "adc": 7}]
    events = events_of(hits, "s")
    assert [(e["id"], e["nhits"], e["energy"], e["channels"]) for e in events] == [
        ("s:0", 2, 15, [1, 2]), ("s:1", 1, 7, [3])]


def test_filter_keeps_energetic_wide_events_only() -> None:
    assert is_hot({"energy": 50_000, "channels": list(range(30))})
    assert not is_hot({"energy": 50_000, "channels": [1, 2]})
    assert not is_hot({"energy": 100, "channels": list(range(30))})


def test_generated_data_has_both_kinds() -> None:
    events = [e for i in range(20) for e in events_of(generate_slice(i, 1), f"s{i}")]
    hot = [e for e in events if is_hot(e)]
    assert 0 < len(hot) < len(events)

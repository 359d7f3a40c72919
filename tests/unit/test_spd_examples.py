"""The example SPD payloads' physics-like logic (pure parts)."""
from __future__ import annotations

from examples.spd.filter import is_hot
from examples.spd.generate import SLICE_NS, generate_slice
from examples.spd.quality import histogram, quality_of
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


def test_histograms_fold_out_of_range_values_into_the_edge_bins() -> None:
    h = histogram("x", "x", "x", [-5, 0, 0.99, 1, 9.5, 10, 42], 0, 10, 10)
    assert h["counts"] == [3, 1, 0, 0, 0, 0, 0, 0, 0, 3] and h["entries"] == 7
    assert h["edges"][0] == 0 and h["edges"][-1] == 10 and len(h["edges"]) == 11


def test_quality_of_hot_files_by_hand() -> None:
    def event(nhits: int, energy: int, seen: int) -> dict:
        return {"nhits": nhits, "energy": energy, "slice_events": seen}

    files = {"a.hot.jsonl": [event(30, 25_000, 20), event(41, 55_000, 20)],
             "b.hot.jsonl": [event(22, 21_000, 10)],
             "c.hot.jsonl": []}  # a slice with nothing hot: no keep fraction to tell
    q = quality_of(files)
    assert (q["files"], q["events_in"], q["events_kept"]) == (3, 30, 3)
    by_name = {h["name"]: h for h in q["histograms"]}
    assert by_name["hot_per_slice"]["counts"][:3] == [1, 1, 1]  # 0, 1 and 2 hot events
    assert [i for i, n in enumerate(by_name["hit_multiplicity"]["counts"]) if n] == [4, 6, 8]  # 22, 30, 41 hits
    assert by_name["keep_fraction"]["entries"] == 2  # 2/20 = 0.1 and 1/10 = 0.1
    assert by_name["keep_fraction"]["counts"][1] == 2
    assert sum(by_name["energy"]["counts"]) == 3

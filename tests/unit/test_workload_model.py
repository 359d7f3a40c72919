"""The workload model's arithmetic against cases computed by hand, and its parameters."""
from __future__ import annotations

import pytest

from tools.model.model import Parameters, capacity, flow, load, scaled


def params(**stages_and_more) -> Parameters:
    """1 MHz, 1 GB/s, slices of 1 ms (1 MB, 1,000 events), files of 10 MB: 100 files/s of 10 slices."""
    return Parameters.model_validate({
        "detector": {"event_rate_hz": 1e6, "raw_rate_bytes_s": 1e9, "time_slice_s": 1e-3, "raw_file_bytes": 1e7},
        "stages": stages_and_more.get("stages", [
            {"name": "a", "cpu_s_per_event": 1e-3, "files_per_job": 2},
            {"name": "b", "cpu_s_per_event": 1e-2, "keep_fraction": 0.1, "output_ratio": 2.0},
            {"name": "c", "cpu_s_per_gb": 5.0, "files_per_job": 10},
        ]),
        "pilots": {"cores": 10, "cycle_s": 1.0},
        "wms": {"job_executor_jobs_per_s": 100, "headroom": 2},
    })


def test_a_three_stage_chain_by_hand() -> None:
    a, b, c = flow(params())
    # a: 100 files/s in, 2 a job -> 50 jobs/s, each writing one file; 1e6 events/s x 1 ms = 1,000 cores
    assert (a.files_in_per_s, a.jobs_per_s, a.events_in_per_s, a.cores) == pytest.approx((100, 50, 1e6, 1000))
    assert (a.bytes_in_per_s, a.bytes_out_per_s, a.pilots) == pytest.approx((1e9, 1e9, 100))
    assert a.wms_requests_per_s == pytest.approx(50)  # 100 pilots could ask 100/s; 50 jobs/s is less
    # b: 50 files/s, one a job; keeps 10% of the events, each twice as large: 1e9 x 0.1 x 2 = 2e8 B/s out
    assert (b.files_in_per_s, b.jobs_per_s, b.events_out_per_s) == pytest.approx((50, 50, 1e5))
    assert (b.bytes_out_per_s, b.cores, b.pilots) == pytest.approx((2e8, 1e4, 1000))
    # c: 50 files/s, 10 a job -> 5 jobs/s; 0.2 GB/s x 5 s/GB = 1 core; 0.1 pilot asks at most 0.1/s
    assert (c.files_in_per_s, c.jobs_per_s, c.cores) == pytest.approx((50, 5, 1))
    assert c.wms_requests_per_s == pytest.approx(0.1)


def test_capacity_with_headroom() -> None:
    p = params()
    total = capacity(p, flow(p))
    assert total.jobs_per_s == pytest.approx(105)
    assert total.cores == pytest.approx(11001)
    assert total.pilots == 1101  # ceil(11001 / 10)
    assert total.job_executor_replicas == 3  # ceil(105 x 2 / 100)


def test_the_detector_figures() -> None:
    d = params().detector
    assert (d.slice_bytes, d.events_per_slice, d.slices_per_file) == pytest.approx((1e6, 1000, 10))


def test_half_the_event_rate_halves_the_stream() -> None:
    half = flow(scaled(params(), 0.5e6))
    assert half[0].files_in_per_s == pytest.approx(50)  # files of a fixed size: half as many
    assert half[0].bytes_in_per_s == pytest.approx(0.5e9) and half[0].cores == pytest.approx(500)
    assert half[2].jobs_per_s == pytest.approx(2.5)


def test_the_spd_defaults_and_a_file_that_changes_some(tmp_path) -> None:
    spd = load()
    assert (spd.detector.event_rate_hz, spd.detector.raw_rate_bytes_s) == (3e6, 2e10)
    assert [s.name for s in spd.stages] == ["unscramble", "filter", "merge"]
    changes = tmp_path / "p.yaml"
    changes.write_text("detector: {event_rate_hz: 1.0e+6}\npilots: {cores: 32}\n")
    custom = load(changes)
    assert custom.detector.event_rate_hz == 1e6 and custom.detector.raw_rate_bytes_s == 2e10  # the rest kept
    assert custom.pilots.cores == 32 and custom.pilots.cycle_s == spd.pilots.cycle_s
    changes.write_text("detector: {event_rate: 1}\n")
    with pytest.raises(ValueError, match="event_rate"):
        load(changes)
    changes.write_text("stages: []\n")
    with pytest.raises(ValueError, match="stages"):
        load(changes)

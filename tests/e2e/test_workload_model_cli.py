"""`wms model` as a user runs it: the SPD defaults, a custom YAML, JSON, plots, and a broken file."""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

BIN = Path(sys.executable).parent


def wms(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([BIN / "wms", *args], capture_output=True, text=True, timeout=120,
                          env={"COLUMNS": "80", "PATH": "/usr/bin:/bin"})


def test_wms_model_defaults_custom_json_and_plots(tmp_path) -> None:
    default = wms("model")
    assert default.returncode == 0, default.stderr
    assert "SPD online filter at 3 MHz, 20 GB/s" in default.stdout and "unscramble" in default.stdout
    assert max(len(line) for line in default.stdout.splitlines()) <= 80
    custom = tmp_path / "half.yaml"
    custom.write_text("detector: {event_rate_hz: 1.5e+6, raw_rate_bytes_s: 1.0e+10}\n")
    answer = wms("--json", "model", str(custom), "--plots", str(tmp_path / "plots"))
    assert answer.returncode == 0, answer.stderr
    body = json.loads(answer.stdout)
    assert [s["stage"] for s in body["stages"]] == ["unscramble", "filter", "merge"]
    assert body["stages"][0]["events_in_per_s"] == 1.5e6 and body["totals"]["jobs_per_s"] > 0
    for name in ("jobs-vs-event-rate.png", "cores-vs-event-rate.png"):
        assert (tmp_path / "plots" / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    custom.write_text("detector: {event_rate_hz: -1}\n")
    broken = wms("model", str(custom))
    assert broken.returncode == 2 and "event_rate_hz" in broken.stderr

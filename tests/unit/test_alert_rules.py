"""The alert rules, unit-tested by Prometheus's own promtool against synthetic series
(deploy/monitoring/alerts.test.yml): each rule fires when it should and not before."""
from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

MONITORING = Path(__file__).resolve().parents[2] / "deploy" / "monitoring"


def test_the_alert_rules_pass_their_promtool_tests() -> None:
    promtool = shutil.which("promtool")
    assert promtool, "Debian's prometheus (promtool) is needed for this test (scripts/setup installs it)"
    checked = subprocess.run([promtool, "check", "rules", "alerts.yml"], cwd=MONITORING, capture_output=True,
                             text=True, timeout=60)
    assert checked.returncode == 0, checked.stdout + checked.stderr
    tested = subprocess.run([promtool, "test", "rules", "alerts.test.yml"], cwd=MONITORING, capture_output=True,
                            text=True, timeout=60)
    assert tested.returncode == 0, tested.stdout + tested.stderr

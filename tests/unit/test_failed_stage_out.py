"""A failed stage-out leaves nothing on storage (issue 22, finding 10: after one disk-full run, 167 `.part` files
and the attempt's earlier outputs stayed on storage for good). The storage filling up is played by a file size
limit (RLIMIT_FSIZE) in a child process: its writes fail with EFBIG as they would with ENOSPC."""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

CHILD = r"""
import json, os, resource, signal, sys
from pathlib import Path
from common.pilot_protocol import JobSpec
from pilot.outputs import stage_outputs
from pilot.staging import StagingError, Throttle

workdir, storage = Path(sys.argv[1]), Path(sys.argv[2])
signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # a write past the limit fails (EFBIG) instead of killing us
resource.setrlimit(resource.RLIMIT_FSIZE, (1 << 20, 1 << 20))  # "the disk is full" after 1 MiB per file
job = JobSpec.model_validate(json.loads(sys.argv[3]))
try:
    stage_outputs(job, workdir, 1 << 30, Throttle())
except StagingError as exc:
    print("StagingError", exc)
"""


def test_a_stage_out_that_fails_midway_removes_its_partial_and_earlier_files(tmp_path: Path) -> None:
    workdir, storage = tmp_path / "attempt", tmp_path / "storage" / "out" / "7" / "1"
    (workdir / "outputs").mkdir(parents=True)
    (workdir / "outputs" / "a.small").write_bytes(b"a" * 1000)  # staged first (sorted), fits
    (workdir / "outputs" / "b.large").write_bytes(b"b" * (2 << 20))  # over the limit: fails midway
    spec = {"job_id": 7, "attempt": 1, "task_id": 1, "command": "true", "args": [], "env": {},
            "container_image": None, "inputs": [], "output_dataset": "out", "log_dataset": "out.log",
            "output_url_prefix": f"file://{storage}/", "wall_time_s": 60}
    root = Path(__file__).resolve().parents[2]
    done = subprocess.run([sys.executable, "-c", CHILD, str(workdir), str(storage), json.dumps(spec)],
                          capture_output=True, text=True, timeout=60, cwd=root)
    assert done.returncode == 0, done.stderr
    assert done.stdout.startswith("StagingError cannot stage out b.large"), done.stdout
    assert sorted(p.name for p in storage.rglob("*")) == []  # no .part, no a.small

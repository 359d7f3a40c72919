"""Prefetch end to end: a single-slot pilot holds several short jobs at once (one exchange claims them), and still
runs one at a time."""
from __future__ import annotations

import sys

import pytest
import sqlalchemy as sa

from common.db.models import job_attempts
from tests.conftest import wait_for
from tests.e2e.stack import wms_stack

pytestmark = pytest.mark.e2e

STAMP = """
import os, pathlib, sys, time
mark = pathlib.Path(os.environ["STAMP_DIR"])
start = time.time()
time.sleep(0.3)
(mark / f"{os.environ['WMS_JOB_ID']}.{os.environ['WMS_ATTEMPT']}").write_text(f"{start} {time.time()}")
(pathlib.Path(os.environ["WMS_OUTPUT_DIR"]) / "done.out").write_text("ok")
"""


async def test_a_single_slot_pilot_prefetches_and_runs_one_job_at_a_time(settings, db, tmp_path) -> None:
    jobs = 8
    stamps = tmp_path / "stamps"
    stamps.mkdir()
    async with wms_stack(settings, db, tmp_path, pilot_prefetch={"cpu": 3, "gpu": 0}) as stack:
        await stack.make_dataset("raw.p", jobs)
        task_id = await stack.submit(input_dataset="raw.p", output_dataset="out.p",
                                     payload={"command": sys.executable, "args": ["-c", STAMP],
                                              "env": {"STAMP_DIR": str(stamps)}},
                                     split={"by": "files", "size": 1})
        await wait_for(lambda: _ready_jobs(db, jobs), timeout=30)  # all ready before the pilot comes
        stack.start_pilot(WMS_PILOT_SLOTS="1", WMS_PILOT_RUNTIME="plain")
        await wait_for(lambda: stack.ended(task_id), timeout=120)
        assert (await stack.task(task_id)).status == "done"
        async with db.connect() as conn:
            # the attempts a claim opens share its transaction's time: one value per claiming exchange
            claims = (await conn.execute(sa.select(sa.func.count(sa.distinct(job_attempts.c.started_at))))
                      ).scalar_one()
    assert claims < jobs, f"{claims} claims for {jobs} jobs: nothing was prefetched"
    runs = sorted(tuple(map(float, p.read_text().split())) for p in stamps.iterdir())
    assert len(runs) == jobs
    for (_, end), (start, _) in zip(runs, runs[1:], strict=False):
        assert start >= end - 0.01, "two jobs ran at once on a single-slot pilot"


async def _ready_jobs(db, n: int) -> bool:
    from common.db.models import jobs

    async with db.connect() as conn:
        return (await conn.execute(sa.select(sa.func.count()).select_from(jobs).where(
            jobs.c.status == "ready"))).scalar_one() >= n

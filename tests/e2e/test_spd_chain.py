"""The SPD chain through the whole WMS: 200 raw time slices -> unscramble -> filter, the filter task reading the
unscramble output dataset while it grows; 4 pilots (2 CPU over REST, 1 GPU, 1 over RabbitMQ)."""
from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest
import sqlalchemy as sa

from common.db.models import files, jobs, pilots
from common.dsm import DsmFile
from examples.spd.filter import is_hot
from examples.spd.generate import generate_slice, write_slices
from examples.spd.unscramble import events_of
from tests.conftest import wait_for
from tests.e2e.stack import WFMS, wms_stack

pytestmark = pytest.mark.e2e
SPD = Path(__file__).resolve().parents[2] / "examples" / "spd"
N_SLICES = 200


def step(script: str) -> dict:
    return {"command": sys.executable, "args": [str(SPD / script), "{inputs}"], "env": {}}


async def test_unscramble_then_filter_on_a_growing_dataset(settings, db, tmp_path) -> None:
    async with wms_stack(settings, db, tmp_path) as stack:
        entries = write_slices(tmp_path / "raw", N_SLICES, seed=42)
        await stack.dsm.create_dataset("spd.raw.run1")
        await stack.dsm.register_files("spd.raw.run1", [DsmFile(**e) for e in entries])
        await stack.dsm.close_dataset("spd.raw.run1")

        unscramble = await stack.submit(name="unscramble run1", type="unscramble", input_dataset="spd.raw.run1",
                                        output_dataset="spd.events.run1", payload=step("unscramble.py"),
                                        split={"by": "files", "size": 5}, resource_type="cpu")
        # The filter reads what unscramble produces, as it is produced (the dataset is open until unscramble ends).
        hot = await stack.submit(name="filter run1", type="filter", input_dataset="spd.events.run1",
                                 output_dataset="spd.hot.run1", payload=step("filter.py"),
                                 split={"by": "files", "size": 4}, resource_type="gpu")
        stack.start_pilot("rest")
        stack.start_pilot("rest")
        stack.start_pilot("rest", resource_type="gpu")
        stack.start_pilot("mq")
        await wait_for(lambda: stack.ended(unscramble), timeout=180)
        await wait_for(lambda: stack.ended(hot), timeout=180)

        assert (await stack.task(unscramble)).status == "done"
        assert (await stack.task(hot)).status == "done"
        async with db.connect() as conn:
            outputs = {t: (await conn.execute(sa.select(files).where(
                files.c.task_id == t, files.c.role == "output"))).all() for t in (unscramble, hot)}
            inputs = {t: (await conn.execute(sa.select(files.c.lfn, files.c.status).where(
                files.c.task_id == t, files.c.role == "input"))).all() for t in (unscramble, hot)}
            workers = set((await conn.execute(sa.select(pilots.c.channel, pilots.c.resource_type).join(
                jobs, jobs.c.pilot_id == pilots.c.id))).all())
            filter_started_before_unscramble_ended = (await conn.execute(sa.text(
                "SELECT min(j.started_at) < (SELECT finished_at FROM task_dat WHERE id = :u) "
                "FROM job_dat j WHERE j.task_id = :h"), {"u": unscramble, "h": hot})).scalar()

        # every raw slice was unscrambled exactly once, every events file filtered exactly once
        assert sorted(lfn for lfn, _ in inputs[unscramble]) == sorted(e["lfn"] for e in entries)
        assert {s for _, s in inputs[unscramble]} == {"done"}
        assert sorted(lfn for lfn, _ in inputs[hot]) == sorted(f.lfn for f in outputs[unscramble])
        assert len(outputs[unscramble]) == N_SLICES and len(outputs[hot]) == N_SLICES
        assert filter_started_before_unscramble_ended  # the filter followed the growing dataset

        # the physics is right: the hot events are exactly those of the generated slices
        expected_events = [events_of(generate_slice(i, 42), f"slice-{i:06d}") for i in range(N_SLICES)]
        expected_hot = sorted(e["id"] for evs in expected_events for e in evs if is_hot(e))
        got_hot = sorted(json.loads(line)["id"] for f in outputs[hot]
                         for line in Path(f.url.removeprefix("file://")).read_text().splitlines())
        assert got_hot == expected_hot and got_hot
        assert sum(f.events for f in outputs[unscramble]) == sum(len(evs) for evs in expected_events)
        assert sum(f.events for f in outputs[hot]) == len(expected_hot)

        assert {"rest", "mq"} <= {c for c, _ in workers} and ("rest", "gpu") in workers
        for name in ("spd.events.run1", "spd.hot.run1"):
            dataset = await stack.dsm.dataset(name)
            assert dataset.status == "closed" and dataset.n_files == N_SLICES
        for task_id, n_jobs in ((unscramble, 40), (hot, 50)):
            report = (await stack.task_manager.get(f"/api/v1/tasks/{task_id}/report", headers=WFMS)).json()
            assert report["final"] and report["status"] == "done"
            assert report["files"]["done"] == N_SLICES and report["jobs"]["finished"] == n_jobs
            assert report["outputs"]["files"] == N_SLICES and report["failures"] == []

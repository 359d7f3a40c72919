"""Dispatch end to end: real pilot processes (REST and RabbitMQ, CPU and GPU) running real payloads."""
from __future__ import annotations

import sys

import pytest
import sqlalchemy as sa

from common.db.models import files, job_attempts, jobs, pilots
from tests.conftest import wait_for
from tests.e2e.stack import WFMS, wms_stack

pytestmark = pytest.mark.e2e

# Copies each input to the output directory, upper-cased; writes an events manifest.
COPY = """
import json, os, pathlib, sys
out = pathlib.Path(os.environ["WMS_OUTPUT_DIR"])
manifest = {}
for name in sys.argv[1:]:
    data = pathlib.Path(name).read_bytes().upper()
    target = out / (pathlib.Path(name).stem + ".out")
    target.write_bytes(data)
    manifest[target.name] = {"events": 1}
pathlib.Path(os.environ["WMS_WORKDIR"], "outputs.json").write_text(json.dumps(manifest))
print("copied", len(sys.argv) - 1)
"""


def copy_payload() -> dict:
    return {"command": sys.executable, "args": ["-c", COPY, "{inputs}"], "env": {}}


async def test_task_runs_to_done_on_rest_mq_and_gpu_pilots(settings, db, tmp_path) -> None:
    async with wms_stack(settings, db, tmp_path) as stack:
        await stack.make_dataset("raw.a", 30)
        task_id = await stack.submit(input_dataset="raw.a", output_dataset="out.a", payload=copy_payload(),
                                     split={"by": "files", "size": 2})
        stack.start_pilot("rest")
        stack.start_pilot("mq")
        stack.start_pilot("rest", resource_type="gpu")
        await wait_for(lambda: stack.ended(task_id), timeout=60)

        t = await stack.task(task_id)
        assert t.status == "done"
        async with db.connect() as conn:
            outputs = (await conn.execute(sa.select(files).where(files.c.task_id == task_id,
                                                                 files.c.role == "output"))).all()
            logs = (await conn.execute(sa.select(sa.func.count()).where(files.c.task_id == task_id,
                                                                        files.c.role == "log"))).scalar()
            inputs_done = (await conn.execute(sa.select(files.c.status).where(
                files.c.task_id == task_id, files.c.role == "input"))).scalars().all()
            channels = set((await conn.execute(sa.select(pilots.c.channel, pilots.c.resource_type).join(
                jobs, jobs.c.pilot_id == pilots.c.id).where(jobs.c.task_id == task_id))).all())
        assert sorted(f.lfn.rsplit("/", 1)[1] for f in outputs) == [f"f{i:05d}.out" for i in range(30)]
        assert all(f.status == "registered" for f in outputs) and logs == 15
        assert set(inputs_done) == {"done"}
        assert {c for c, _ in channels} == {"rest", "mq"}  # both channels did work
        # the outputs are really the payload's work, with their checksums
        first = next(f for f in outputs if f.lfn.endswith("f00000.out"))
        assert open(first.url.removeprefix("file://"), "rb").read() == b"FILE 0 OF RAW.A\n"

        dataset = await stack.dsm.dataset("out.a")
        assert dataset.status == "closed" and dataset.n_files == 45  # 30 outputs + 15 logs
        report = (await stack.task_manager.get(f"/api/v1/tasks/{task_id}/report", headers=WFMS)).json()
        assert report["final"] and report["files"]["done"] == 30 and report["outputs"]["files"] == 30
        assert report["jobs"]["finished"] == 15 and report["failures"] == []

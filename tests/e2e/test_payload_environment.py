"""A payload runs in a clean environment: the task's variables and the job's coordinates, a few harmless ones of
the node, and never the pilot's credentials or broker URL."""
from __future__ import annotations

import json
import sys

import pytest
import sqlalchemy as sa

from common.db.models import files
from tests.conftest import PILOT_TOKEN, wait_for
from tests.e2e.stack import wms_stack

pytestmark = pytest.mark.e2e

# Writes its whole environment as an output file.
PRINT_ENV = """
import json, os, pathlib
pathlib.Path(os.environ["WMS_OUTPUT_DIR"], "env.json").write_text(json.dumps(dict(os.environ)))
"""


async def test_a_payload_sees_no_credential(settings, db, tmp_path, monkeypatch) -> None:
    monkeypatch.setenv("SOME_NODE_SECRET", "not for payloads")
    async with wms_stack(settings, db, tmp_path) as stack:
        await stack.make_dataset("raw.env", 1)
        task_id = await stack.submit(input_dataset="raw.env", output_dataset="out.env",
                                     payload={"command": sys.executable, "args": ["-c", PRINT_ENV, "{inputs}"],
                                              "env": {"SPD_MODE": "online"}},
                                     split={"by": "files", "size": 1})
        stack.start_pilot("rest")
        await wait_for(lambda: stack.ended(task_id), timeout=60)
        async with db.connect() as conn:
            url = (await conn.execute(sa.select(files.c.url).where(files.c.task_id == task_id,
                                                                   files.c.role == "output"))).scalar_one()
    env = json.loads(open(url.removeprefix("file://")).read())
    text = json.dumps(env)
    assert PILOT_TOKEN not in text and settings.amqp_url not in text and "not for payloads" not in text
    assert not [name for name in env if name.startswith("WMS_PILOT_")]
    assert env["SPD_MODE"] == "online" and env["WMS_JOB_ID"] and env["WMS_ATTEMPT"] == "1"
    assert set(env) <= {"PATH", "HOME", "USER", "LOGNAME", "LANG", "LC_ALL", "TZ", "TMPDIR", "SPD_MODE",
                        "WMS_JOB_ID", "WMS_ATTEMPT", "WMS_OUTPUT_DIR", "WMS_WORKDIR", "WMS_PAYLOAD_TAG",
                        "LC_CTYPE", "PWD"}, sorted(env)

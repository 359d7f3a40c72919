"""Per-pilot credentials end to end: an operator issues one with the CLI, real pilot processes (REST and
RabbitMQ) run jobs with it, a pilot asking for more than it allows is refused (exit 5, reason in its log), and a
revocation stops the pilots that hold it."""
from __future__ import annotations

import asyncio
import json
import sys

import pytest

from pilot.exit_codes import EXIT_REFUSED
from tests.conftest import wait_for
from tests.e2e.stack import wms_stack
from tests.e2e.test_cli import wms

pytestmark = pytest.mark.e2e
COPY = {"command": sys.executable, "args": ["-c", "print('ok')"], "env": {}}


async def test_issued_credentials_run_pilots_and_revocation_stops_them(settings, db, tmp_path) -> None:
    async with wms_stack(settings, db, tmp_path, credential_cache_s=0) as stack:
        url = str(stack.task_manager.base_url).rstrip("/")
        issued = await wms(url, "--json", "credentials", "issue", "rack-1", "--type", "cpu", "--max-cores", "2",
                           "--hosts", "wn*")
        assert issued.returncode == 0, issued.stderr
        credential = json.loads(issued.stdout)
        token = credential["token"]

        await stack.make_dataset("raw.cred", 4)
        task_id = await stack.submit(input_dataset="raw.cred", output_dataset="out.cred", payload=COPY,
                                     split={"by": "files", "size": 1})
        rest = stack.start_pilot("rest", WMS_PILOT_TOKEN=token)
        mq = stack.start_pilot("mq", WMS_PILOT_TOKEN=token)
        await wait_for(lambda: stack.ended(task_id), timeout=90)
        assert (await stack.task(task_id)).status == "done"

        # a GPU pilot with this CPU credential: refused at registration, the pilot says why and exits 5
        gpu = stack.start_pilot("rest", resource_type="gpu", WMS_PILOT_TOKEN=token)
        assert await asyncio.to_thread(gpu.wait, 60) == EXIT_REFUSED
        log = (tmp_path / f"pilot{len(stack.pilots) - 1}.log").read_text()
        assert "registers cpu pilots only, not gpu" in log

        listed = await wms(url, "credentials", "list")
        assert listed.returncode == 0 and "rack-1" in listed.stdout and token not in listed.stdout
        revoked = await wms(url, "credentials", "revoke", str(credential["id"]))
        assert revoked.returncode == 0, revoked.stderr
        assert f"credential {credential['id']} (rack-1) revoked" in revoked.stdout
        # both idle pilots hear 401 at their next claim and end, without relaunch value
        for pilot in (rest, mq):
            assert await asyncio.to_thread(pilot.wait, 60) == EXIT_REFUSED
        unknown = await wms(url, "credentials", "revoke", "999999")
        assert unknown.returncode == 1 and "not found" in unknown.stderr

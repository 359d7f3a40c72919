"""A final report the job-executor applied but whose reply never reached the pilot (found when a RabbitMQ node
stopped mid-run: the reply queue went with it), followed by the pilot's refusal (declared dead meanwhile): the
pilot must not remove outputs that may have been registered. A proxy between a real pilot and the job-executor
forwards the report, drops the reply, and the pilot is declared dead before its retry."""
from __future__ import annotations

import asyncio
import json
from pathlib import Path

import aiohttp
import pytest
import sqlalchemy as sa
from aiohttp import web

from common.db.models import files, jobs, pilots
from tests.conftest import free_port, wait_for
from tests.e2e.stack import wms_stack
from tests.e2e.test_dispatch import copy_payload

pytestmark = pytest.mark.e2e


async def test_outputs_of_a_report_applied_without_reply_are_kept(settings, db, tmp_path) -> None:
    async with wms_stack(settings, db, tmp_path, pilot_timeout_s=60.0) as stack:
        await stack.make_dataset("raw.lost", 1)
        task_id = await stack.submit(input_dataset="raw.lost", output_dataset="out.lost", payload=copy_payload(),
                                     split={"by": "files", "size": 1})
        dropped: list[int] = []

        async def forward(request: web.Request) -> web.StreamResponse:
            body = await request.read()
            headers = {k: v for k, v in request.headers.items()
                       if k.lower() not in ("host", "content-length", "transfer-encoding", "connection")}
            async with aiohttp.ClientSession() as http, http.request(
                    request.method, stack.job_executor_url.rstrip("/") + request.path_qs, data=body,
                    headers=headers) as upstream:
                answer = await upstream.read()
                status = upstream.status
            finished = request.path.endswith("/exchange") and any(
                r.get("state") == "finished" for r in json.loads(body or b"{}").get("reports", []))
            if finished and not dropped and status == 200:
                # applied by the job-executor; the pilot is declared dead meanwhile and never hears the answer
                pilot_id = int(request.path.split("/")[-2])
                async with db.begin() as conn:
                    await conn.execute(sa.update(pilots).where(pilots.c.id == pilot_id)
                                       .values(status="dead", ended_at=sa.func.now()))
                dropped.append(pilot_id)
                assert request.transport is not None
                request.transport.close()
                raise ConnectionResetError("reply dropped by the test")
            return web.Response(body=answer, status=status, content_type="application/json")

        app = web.Application()
        app.router.add_route("*", "/{tail:.*}", forward)
        runner = web.AppRunner(app)
        await runner.setup()
        port = free_port()
        await web.TCPSite(runner, "127.0.0.1", port).start()
        try:
            stack.job_executor_url, real = f"http://127.0.0.1:{port}", stack.job_executor_url
            pilot = stack.start_pilot("rest")
            stack.job_executor_url = real
            assert await asyncio.to_thread(pilot.wait, 120) == 4  # refused as dead on its retry: exit 4
        finally:
            await runner.cleanup()
        assert dropped, "the finished report never went through the proxy"

        async with db.connect() as conn:
            job = (await conn.execute(sa.select(jobs).where(jobs.c.task_id == task_id))).one()
            outputs = (await conn.execute(sa.select(files).where(files.c.task_id == task_id,
                                                                 files.c.role == "output"))).all()
        assert job.status == "finished" and len(outputs) == 1
        await wait_for(lambda: stack.ended(task_id), timeout=60)
        for output in outputs:  # what the WMS registered is still on storage
            path = Path(output.url.removeprefix("file://"))
            assert path.exists() and path.stat().st_size == output.size, path
        log = (tmp_path / "pilot0.log").read_text()
        assert "report unanswered and possibly accepted: its staged outputs are kept" in log

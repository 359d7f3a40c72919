"""Faults of the infrastructure under a running task: a RabbitMQ restart and a PostgreSQL restart (each on a
private server this test starts, never the machine's), and a DSM that answers 500 for a while, then 409 for one
task (a fault-injecting proxy in front of the reference DSM)."""
from __future__ import annotations

import asyncio
import os
import subprocess
import sys
from pathlib import Path

import aiohttp
import httpx
import pytest
from aiohttp import web

from tests.conftest import free_port, wait_for
from tests.faults.conftest import SCRIPTS
from tests.faults.harness import fault_run, now_utc, record

pytestmark = pytest.mark.e2e


async def test_rabbitmq_restart_mid_run(postgres_server_url, private_rabbitmq, tmp_path) -> None:
    amqp_url, directory, port = private_rabbitmq
    async with fault_run(postgres_server_url, amqp_url, tmp_path) as run:
        task_id = await run.task_under_way("mq")
        await asyncio.to_thread(subprocess.run, [SCRIPTS / "private-rabbitmq", "stop-app", directory, str(port)],
                                check=True, capture_output=True, timeout=120)
        # services whose consumers are gone say so (they answered 200 "broker ok" here before)
        outage_readiness = await wait_for(_broker_users_not_ready(run), timeout=10)
        await asyncio.sleep(5.0)  # longer than a pilot timeout (3 s) and many heartbeats
        await asyncio.to_thread(subprocess.run, [SCRIPTS / "private-rabbitmq", "start-app", directory, str(port)],
                                check=True, capture_output=True, timeout=120)
        fault_end = now_utc()
        # a task submitted after the restart is generated and run too (consumers came back)
        after_id = await run.submit("raw.mq", "out.mq.after")
        await run.wait_ended(task_id)
        await run.wait_ended(after_id)
        await run.audit(task_id)
        await run.audit(after_id)
        await run.audit_system()
        assert run.pilots_alive() == []
        assert set(outage_readiness.values()) == {503}
        mq_recovery = await run.recovery_s(fault_end, channel="mq")
        record("RabbitMQ restart mid-run", "rabbitmqctl stop_app, 5 s (pilot timeout 3 s), start_app",
               "both tasks done (one submitted after the restart); /readyz 503 during the outage; MQ pilots "
               f"waited and went on (first MQ job {mq_recovery:.1f} s after)",
               await run.recovery_s(fault_end))


def _broker_users_not_ready(run):
    """Every service but the DSM (which uses no broker) answers 503."""
    async def check() -> dict[str, int] | None:
        codes = {name: code for name, code in (await run.readiness()).items() if name != "wms-dsm"}
        return codes if set(codes.values()) == {503} else None
    return check


async def test_postgresql_restart_mid_run(private_postgres, amqp_url, tmp_path) -> None:
    server_url, directory, port = private_postgres
    async with fault_run(server_url, amqp_url, tmp_path) as run:
        task_id = await run.task_under_way("pg")
        await asyncio.to_thread(subprocess.run, [SCRIPTS / "private-postgres", "stop", directory],
                                check=True, capture_output=True, timeout=120)
        await asyncio.sleep(2.0)
        await asyncio.to_thread(subprocess.run, [SCRIPTS / "private-postgres", "start", directory, str(port)],
                                check=True, capture_output=True, timeout=120)
        fault_end = now_utc()
        await run.wait_ended(task_id)
        await run.audit(task_id)
        await run.audit_system()
        assert run.pilots_alive() == []
        record("PostgreSQL restart mid-run", "pg_ctl stop -m fast, 2 s, start (services, DSM and pilots running)",
               "done; no message dead-lettered, no pilot lost", await run.recovery_s(fault_end))


class FaultyDsm:
    """A proxy in front of the reference DSM that answers 500 to everything while ``failing``, and 409 to file
    registrations in the datasets of ``refuse``."""

    def __init__(self, upstream: str) -> None:
        self.upstream = upstream.rstrip("/")
        self.failing = False
        self.refuse: set[str] = set()
        self.answered_500 = 0
        self.answered_409 = 0

    async def handle(self, request: web.Request) -> web.StreamResponse:
        if self.failing:
            self.answered_500 += 1
            return web.json_response({"detail": "injected fault"}, status=500)
        parts = request.path.split("/")
        if request.method == "POST" and len(parts) == 6 and parts[5] == "files" and parts[4] in self.refuse:
            self.answered_409 += 1
            return web.json_response({"detail": f"dataset {parts[4]} refuses these files (injected)"}, status=409)
        async with aiohttp.ClientSession() as session:
            async with session.request(request.method, self.upstream + request.path_qs, data=await request.read(),
                                       headers={k: v for k, v in request.headers.items()
                                                if k.lower() in ("authorization", "content-type")}) as answer:
                return web.Response(body=await answer.read(), status=answer.status,
                                    content_type=answer.content_type)


async def test_dsm_errors_are_retried_and_a_conflict_fails_only_its_task(postgres_server_url, amqp_url,
                                                                        tmp_path) -> None:
    async with fault_run(postgres_server_url, amqp_url, tmp_path) as run:
        await run.start_services("wms-dsm")
        proxy = FaultyDsm(run.deployment.url("wms-dsm"))
        app = web.Application()
        app.router.add_route("*", "/{tail:.*}", proxy.handle)
        runner = web.AppRunner(app)
        await runner.setup()
        port = free_port()
        await web.TCPSite(runner, "127.0.0.1", port).start()
        try:
            await run.start_services("wms-task-manager", "wms-job-manager", "wms-task-executor", "wms-job-executor",
                                     WMS_DSM_URL=f"http://127.0.0.1:{port}")
            await run.make_dataset("raw.dsm")
            good = await run.submit("raw.dsm", "out.good")
            bad = await run.submit("raw.dsm", "out.bad")
            for channel in ("rest", "rest", "mq"):
                run.start_pilot(channel)
            await run.wait_finished_jobs(good, 10)
            proxy.failing = True
            await asyncio.sleep(4.0)
            proxy.failing = False
            proxy.refuse.add("out.bad")
            fault_end = now_utc()
            await run.wait_ended(good)
            failed = await run.wait_ended(bad)
            await run.audit(good)
            await run.audit_system()
            assert proxy.answered_500 > 0 and proxy.answered_409 > 0
            assert failed.status == "failed" and "refused" in failed.error and "out.bad" in failed.error
            # the report and explain show the reason
            report = await run.report(bad)
            assert report["status"] == "failed" and "refused" in (report.get("error") or "")
            explained = await run.explain_a_job(bad)
            assert "refused" in explained
            assert run.pilots_alive() == []
            registration = await run.registration_recovery_s(fault_end)
            record("DSM 500 for 4 s, then 409 for one task", "fault proxy: every call 500 for 4 s, then 409 to "
                   "one task's output registrations", "healthy task done; refused task failed with the DSM's "
                   f"reason in its report and explain; nothing else blocked (first registration {registration:.1f}"
                   " s after)", await run.recovery_s(fault_end),
                   lost="none (the refused task's outputs stay on storage, marked rejected)")
        finally:
            await runner.cleanup()


async def test_no_request_fails_once_postgresql_is_back(private_postgres, amqp_url, tmp_path) -> None:
    """Issue 22, finding 1: after a PostgreSQL restart every service said ready, yet the DSM answered 503
    "database unavailable" ~30 s later (a pooled connection the restart had closed: InterfaceError) and the demo
    gave up. Now: pools full of connections, a restart, and once the server is back every request succeeds, on
    every service, the task-manager's and the DSM's writes included."""
    from tests.conftest import OPERATOR_TOKEN, SERVICE_TOKEN

    server_url, directory, port = private_postgres
    async with fault_run(server_url, amqp_url, tmp_path) as run:
        await run.start_services()
        d = run.deployment
        requests = [(d.url("wms-task-manager"), "/api/v1/tasks", OPERATOR_TOKEN),
                    (d.url("wms-task-manager"), "/api/v1/pilots", OPERATOR_TOKEN),
                    (d.url("wms-dsm"), "/dsm/v1/datasets", SERVICE_TOKEN)]

        async def burst(client: httpx.AsyncClient, n: int) -> list[int]:
            """``n`` concurrent reads of each kind (enough to open every pooled connection)."""
            answers = await asyncio.gather(*(
                client.get(base + path, headers={"Authorization": f"Bearer {token}"})
                for base, path, token in requests for _ in range(n)))
            return [a.status_code for a in answers]

        async with httpx.AsyncClient(timeout=30) as client:
            assert set(await burst(client, 15)) == {200}
            # restart returns once the server accepts connections (pg_ctl -w); nobody has asked /readyz since
            await asyncio.to_thread(subprocess.run, [SCRIPTS / "private-postgres", "restart", directory, str(port)],
                                    check=True, capture_output=True, timeout=120)
            await asyncio.sleep(0.5)
            codes = await burst(client, 15) + await burst(client, 15)
            assert set((await run.readiness()).values()) == {200}
        assert [c for c in codes if c != 200] == []
        await run.make_dataset("raw.after", 8)  # DSM writes
        task_id = await run.submit("raw.after", "out.after")  # a task-manager write (201)
        assert task_id > 0

        # and the demo as a user runs it, at once after another restart: it goes to the end without a word of
        # waiting (nothing failed that it would have had to wait out)
        await asyncio.to_thread(subprocess.run, [SCRIPTS / "private-postgres", "restart", directory, str(port)],
                                check=True, capture_output=True, timeout=120)
        for _ in range(2):  # the SPD programs (spd-unscramble, ...) are the project's console scripts
            run.start_pilot("rest", PATH=f"{Path(sys.executable).parent}:{os.environ['PATH']}")
        cli = {**os.environ, "WMS_CLI_URL": d.url("wms-task-manager"), "WMS_CLI_TOKEN": OPERATOR_TOKEN,
               "WMS_CLI_DSM_URL": d.url("wms-dsm"), "WMS_CLI_DSM_TOKEN": SERVICE_TOKEN, "COLUMNS": "120",
               "WMS_STORAGE_ROOT": d.env["WMS_STORAGE_ROOT"]}
        demo = await asyncio.to_thread(subprocess.run, [Path(sys.executable).parent / "wms", "demo", "--slices", "4",
                                                        "--run", "after-restart"], env=cli, capture_output=True,
                                       text=True, timeout=300)
        assert demo.returncode == 0, demo.stdout[-3000:] + demo.stderr[-3000:]
        assert "answered 503" not in demo.stderr and demo.stdout.count(": done,") == 4, demo.stdout + demo.stderr

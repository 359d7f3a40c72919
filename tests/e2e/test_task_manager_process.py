"""The README's run commands as real processes: wms-migrate creates and migrates the database, wms-task-manager
serves the API over HTTP, publishes events, and stops cleanly on SIGTERM."""
from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
import uuid
from pathlib import Path

import httpx
import pytest
from sqlalchemy.engine import make_url

from common.messages import decode
from tests.conftest import drop_database, free_port, get_message
from tests.factories import task_description

pytestmark = pytest.mark.e2e
BIN = Path(sys.executable).parent


async def test_migrate_then_serve_over_http(postgres_server_url, amqp_url, amqp, broker_namespace, tmp_path) -> None:
    name = f"wms_e2e_{uuid.uuid4().hex[:8]}"
    port = free_port()
    env = {
        **os.environ,
        "WMS_DATABASE_URL": make_url(postgres_server_url).set(database=name).render_as_string(hide_password=False),
        "WMS_AMQP_URL": amqp_url,
        "WMS_BROKER_NAMESPACE": broker_namespace,
        "WMS_TASK_MANAGER_PORT": str(port),
        "WMS_API_TOKENS": json.dumps({"e2e-token": "wfms", "e2e-service-token": "service"}),
        "WMS_SERVICE_TOKEN": "e2e-service-token",
        "WMS_ALLOW_ARBITRARY_COMMANDS": "1",
    }
    try:
        migrate = subprocess.run([BIN / "wms-migrate"], env=env, capture_output=True, text=True, timeout=120)
        assert migrate.returncode == 0, migrate.stderr
        assert f"created database {name}" in migrate.stderr

        log = (tmp_path / "task-manager.log").open("w")
        server = subprocess.Popen([BIN / "wms-task-manager"], env=env, stdout=log, stderr=subprocess.STDOUT)
        try:
            async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}", timeout=5) as client:
                for _ in range(100):
                    try:
                        if (await client.get("/readyz")).status_code == 200:
                            break
                    except httpx.TransportError:
                        pass
                    await asyncio.sleep(0.1)
                else:
                    pytest.fail("task-manager never became ready: " + (tmp_path / "task-manager.log").read_text())

                response = await client.post(
                    "/api/v1/tasks", json=task_description(), headers={"Authorization": "Bearer e2e-token"}
                )
                assert response.status_code == 201, response.text
                task_id = response.json()["id"]

            queue = await (await amqp.channel()).get_queue(f"{broker_namespace}.task-executor.task-events")
            envelope, payload = decode((await get_message(queue)).body)
            assert (envelope.type, payload.task_id) == ("task.registered", task_id)
        finally:
            server.send_signal(signal.SIGTERM)
            # uvicorn shuts down gracefully, then re-raises the signal so the exit status tells why it ended
            assert server.wait(timeout=20) in (0, -signal.SIGTERM)
            log.close()
        lines = [json.loads(line) for line in (tmp_path / "task-manager.log").read_text().splitlines()
                 if line.startswith("{")]
        assert lines and all(line["service"] == "task-manager" for line in lines)  # structured logs
        assert "task-manager stopped" in [line["msg"] for line in lines]  # the lifespan ran to its end
    finally:
        await drop_database(postgres_server_url, name)

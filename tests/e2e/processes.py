"""Running WMS services as OS processes for end-to-end tests (started and killed by pid only)."""
from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path

import httpx
from sqlalchemy.engine import make_url

from tests.conftest import OPERATOR_TOKEN, PILOT_TOKEN, SERVICE_TOKEN, WFMS_TOKEN, free_ports

BIN = Path(sys.executable).parent
PORT_VARS = {
    "wms-task-manager": "WMS_TASK_MANAGER_PORT",
    "wms-job-manager": "WMS_JOB_MANAGER_PORT",
    "wms-task-executor": "WMS_TASK_EXECUTOR_PORT",
    "wms-dsm": "WMS_DSM_PORT",
    "wms-job-executor": "WMS_JOB_EXECUTOR_PORT",
    "wms-pilot-factory": "WMS_FACTORY_PORT",
}


@dataclass
class Deployment:
    """One WMS deployment (its own database and broker namespace) whose services run as processes."""

    env: dict[str, str]
    logs: Path
    ports: dict[str, int] = field(default_factory=dict)
    processes: dict[str, subprocess.Popen] = field(default_factory=dict)

    @classmethod
    def create(cls, server_url: str, database: str, amqp_url: str, namespace: str, logs: Path, **extra: str):
        ports = dict(zip(PORT_VARS, free_ports(len(PORT_VARS)), strict=True))
        env = {
            **os.environ,
            "WMS_DATABASE_URL": make_url(server_url).set(database=database).render_as_string(hide_password=False),
            "WMS_AMQP_URL": amqp_url,
            "WMS_BROKER_NAMESPACE": namespace,
            "WMS_API_TOKENS": json.dumps({WFMS_TOKEN: "wfms", OPERATOR_TOKEN: "operator", SERVICE_TOKEN: "service",
                                          PILOT_TOKEN: "pilot"}),
            "WMS_SERVICE_TOKEN": SERVICE_TOKEN,
            "WMS_ALLOW_ARBITRARY_COMMANDS": "1",
            "WMS_DSM_URL": f"http://127.0.0.1:{ports['wms-dsm']}",
            "WMS_OUTBOX_POLL_INTERVAL_S": "0.2",
            **{var: str(ports[name]) for name, var in PORT_VARS.items()},
            **extra,
        }
        return cls(env=env, logs=logs, ports=ports)

    def url(self, service: str) -> str:
        return f"http://127.0.0.1:{self.ports[service]}"

    def migrate(self) -> None:
        done = subprocess.run([BIN / "wms-migrate"], env=self.env, capture_output=True, text=True, timeout=120)
        assert done.returncode == 0, done.stderr

    async def start(self, service: str, replica: str | None = None, **env: str) -> None:
        """Start ``service``; ``replica``: a second process of it under that name, on a port of its own."""
        name = replica or service
        if replica is not None:
            self.ports[name] = free_ports(1)[0]
            env = {**env, PORT_VARS[service]: str(self.ports[name])}
        log = (self.logs / f"{name}.log").open("a")
        self.processes[name] = subprocess.Popen(
            [BIN / service], env={**self.env, **env}, stdout=log, stderr=subprocess.STDOUT
        )
        log.close()
        service = name
        async with httpx.AsyncClient(timeout=2) as client:
            for _ in range(200):
                if self.processes[service].poll() is not None:
                    raise AssertionError(f"{service} exited: {(self.logs / f'{service}.log').read_text()[-3000:]}")
                try:
                    if (await client.get(self.url(service) + "/readyz")).status_code == 200:
                        return
                except httpx.TransportError:
                    pass
                await asyncio.sleep(0.05)
        raise AssertionError(f"{service} never became ready")

    def kill(self, service: str, sig: int = signal.SIGKILL) -> None:
        process = self.processes.pop(service)
        process.send_signal(sig)
        process.wait(timeout=30)

    def stop_all(self) -> None:
        for service in list(self.processes):
            self.kill(service, signal.SIGTERM)

"""Container smoke test: build the image offline from the wheelhouse, start the services and two pilots from it
with docker-compose (this machine's PostgreSQL and RabbitMQ through tests/containers/compose.host-infra.yml),
run the SPD demo chain through the containers (the CLI itself in a container, as the README says), tear
everything down.

Needs a Docker engine and docker-compose (../shared/tools/container-engine installs both here). CI sets
WMS_CONTAINER_SMOKE=1, which makes a missing engine a failure; elsewhere the test is skipped without one.
"""
from __future__ import annotations

import asyncio
import os
import shutil
import subprocess
import uuid
from pathlib import Path

import httpx
import pytest
import sqlalchemy as sa
import yaml
from sqlalchemy.engine import make_url
from sqlalchemy.ext.asyncio import create_async_engine

from tests.conftest import create_database, delete_namespace, drop_database, free_ports

ROOT = Path(__file__).resolve().parents[2]
OVERRIDE = Path(__file__).with_name("compose.host-infra.yml")
SERVICES = ["dsm", "task-manager", "job-manager", "task-executor", "job-executor"]


def compose_command() -> list[str]:
    if shutil.which("docker") and subprocess.run(["docker", "info"], capture_output=True).returncode == 0:
        if subprocess.run(["docker", "compose", "version"], capture_output=True).returncode == 0:
            return ["docker", "compose"]
        if shutil.which("docker-compose"):
            return ["docker-compose"]
    message = "no Docker engine with compose (../shared/tools/container-engine installs one)"
    if os.environ.get("WMS_CONTAINER_SMOKE") == "1":
        pytest.fail(message)
    pytest.skip(message)


def run(command: list, env: dict[str, str], timeout: float = 600) -> subprocess.CompletedProcess:
    done = subprocess.run(command, env=env, cwd=ROOT, capture_output=True, text=True, timeout=timeout)
    assert done.returncode == 0, f"{command}: {done.stdout[-3000:]}\n{done.stderr[-3000:]}"
    return done


@pytest.mark.containers
async def test_demo_chain_through_the_containers(postgres_server_url, amqp_url, tmp_path) -> None:
    compose = compose_command()
    project = f"wmssmoke{uuid.uuid4().hex[:8]}"
    database = f"wms_smoke_{uuid.uuid4().hex[:8]}"
    namespace = f"smoke-{uuid.uuid4().hex[:8]}"
    data = tmp_path / "data"
    (data / "storage").mkdir(parents=True)
    for path in (tmp_path, data, data / "storage"):
        path.chmod(0o777)  # the containers run as an unprivileged user
    names = ["TASK_MANAGER", "JOB_MANAGER", "TASK_EXECUTOR", "DSM", "JOB_EXECUTOR"]
    ports = dict(zip(names, free_ports(len(names)), strict=True))
    database_url = await create_database(postgres_server_url, database)
    url = make_url(database_url)
    env = {
        **os.environ,
        "SMOKE_DATABASE_URL": url.set(host="127.0.0.1").render_as_string(hide_password=False),
        "SMOKE_AMQP_URL": amqp_url, "SMOKE_NAMESPACE": namespace, "SMOKE_DATA": str(data),
        "WMS_DEV_MODE": "1",  # the development tokens, as a first `docker compose up` on a laptop uses them
        **{f"SMOKE_{name}_PORT": str(port) for name, port in ports.items()},
    }
    # Host networking cannot publish ports nor join networks, and a v1 override cannot remove the base file's
    # `ports` and `networks`: the test takes the base configuration (as `config` prints it) without them, then
    # merges the override into it (test_compose_networks.py tests the networks).
    base = yaml.safe_load(run([*compose, "-f", "docker-compose.yml", "config"], env).stdout)
    for service in base["services"].values():
        service.pop("ports", None)
        service.pop("networks", None)
    base.pop("networks", None)
    (tmp_path / "compose.base.yml").write_text(yaml.safe_dump(base))
    merged = run([*compose, "-f", str(tmp_path / "compose.base.yml"), "-f", str(OVERRIDE), "config"], env).stdout
    (tmp_path / "compose.smoke.yml").write_text(merged)
    stack = [*compose, "-p", project, "-f", str(tmp_path / "compose.smoke.yml")]
    try:
        run([ROOT / "scripts" / "wheelhouse"], env)
        run([*stack, "build", "migrate"], env, timeout=900)
        run([*stack, "run", "--rm", "--no-deps", "migrate"], env)
        run([*stack, "up", "-d", "--no-deps", *SERVICES], env)
        run([*stack, "up", "-d", "--no-deps", "--scale", "pilot=2", "pilot"], env)
        tm = f"http://127.0.0.1:{ports['TASK_MANAGER']}"
        async with httpx.AsyncClient(timeout=2) as client:
            for _ in range(300):
                try:
                    if (await client.get(f"{tm}/readyz")).status_code == 200:
                        break
                except httpx.TransportError:
                    pass
                await asyncio.sleep(0.2)

        # The demo as the README runs it on compose: the wms CLI inside a container of the image.
        demo = await asyncio.to_thread(subprocess.run, [
            *stack, "exec", "-T", "-e", f"WMS_CLI_URL={tm}",
            "-e", f"WMS_CLI_DSM_URL=http://127.0.0.1:{ports['DSM']}", "-e", f"WMS_STORAGE_ROOT={data / 'storage'}",
            "pilot", "wms", "demo", "--slices", "8", "--run", "smoke"],
            env=env, cwd=ROOT, capture_output=True, text=True, timeout=300)
        logs = subprocess.run([*stack, "logs", "--tail", "40"], env=env, cwd=ROOT, capture_output=True, text=True)
        assert demo.returncode == 0, demo.stdout + demo.stderr + logs.stdout[-5000:]
        assert demo.stdout.count(": done, 8 input files done") == 4, demo.stdout  # with the quality stage

        engine = create_async_engine(database_url)
        async with engine.connect() as conn:
            hosts = (await conn.execute(sa.text("SELECT DISTINCT p.host FROM job_dat j JOIN pilot_dat p "
                                                "ON p.id = j.pilot_id"))).scalars().all()
        await engine.dispose()
        assert hosts == ["pilot-container"]  # the jobs ran in the pilot containers
        merged = list((data / "storage").glob("spd.merged.smoke/**/*.jsonl"))
        assert merged and sum(len(p.read_text().splitlines()) for p in merged) > 0

        states = run(["docker", "inspect", "-f", "{{.Name}} {{.State.Health.Status}}",
                      *run([*stack, "ps", "-q", *SERVICES], env).stdout.split()], env).stdout.split("\n")
        assert all(line.endswith("healthy") for line in states if line), states
    finally:
        subprocess.run([*stack, "down", "-v", "--remove-orphans", "-t", "20"], env=env, cwd=ROOT,
                       capture_output=True, timeout=300)
        await drop_database(postgres_server_url, database)
        await delete_namespace(amqp_url, namespace)

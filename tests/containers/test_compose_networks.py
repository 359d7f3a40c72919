"""The compose file's networks, with real containers and connections (issue 21, finding 7): a pilot container
(which runs payloads) reaches the job-executor, and nothing else: not PostgreSQL (by name or by address),
RabbitMQ's AMQP or management port, the DSM or the other services; a service reaches PostgreSQL.

No official image can be pulled here, so every service of docker-compose.yml runs as a stand-in from the local
base image that listens on that service's ports; what is under test is the networks each service is on, taken
unchanged from `docker-compose config`. Needs a Docker engine (see test_compose_smoke.py).
"""
from __future__ import annotations

import json
import subprocess
import uuid

import pytest
import yaml

from tests.containers.test_compose_smoke import ROOT, compose_command, run

BASE_IMAGE = "python:3.11-slim"
PORTS = {"postgres": [5432], "rabbitmq": [5672, 15672], "dsm": [8084], "task-manager": [8081],
         "job-manager": [8082], "task-executor": [8083], "job-executor": [8085], "pilot": []}
LISTEN = """
import socket, sys, threading, time
def serve(port):
    server = socket.create_server(("0.0.0.0", port))
    while True:
        server.accept()[0].close()
for port in sys.argv[1:]:
    threading.Thread(target=serve, args=(int(port),), daemon=True).start()
while True:
    time.sleep(60)
"""
PROBE = """
import json, socket, sys
result = {}
for target in sys.argv[1:]:
    host, port = target.rsplit(":", 1)
    try:
        socket.create_connection((host, int(port)), timeout=3).close()
        result[target] = "connected"
    except OSError as exc:
        result[target] = type(exc).__name__
print(json.dumps(result))
"""


def _probe(stack: list, env: dict, service: str, targets: list[str]) -> dict[str, str]:
    done = run([*stack, "exec", "-T", service, "python3", "-c", PROBE, *targets], env, timeout=120)
    return json.loads(done.stdout.strip().splitlines()[-1])


@pytest.mark.containers
def test_a_pilot_container_reaches_the_job_executor_and_nothing_else(tmp_path) -> None:
    compose = compose_command()
    env = {"PATH": "/usr/sbin:/usr/bin:/sbin:/bin", "WMS_DEV_MODE": "1"}
    config = yaml.safe_load(run([*compose, "-f", "docker-compose.yml", "config"], env).stdout)
    services = {}
    for name, ports in PORTS.items():
        original = config["services"][name]
        services[name] = {"image": BASE_IMAGE, "networks": original["networks"],
                          "command": ["python3", "-c", LISTEN, *map(str, ports)]}
    (tmp_path / "compose.networks.yml").write_text(yaml.safe_dump(
        {"version": config.get("version", "3.8"), "services": services, "networks": config["networks"]}))
    stack = [*compose, "-p", f"wmsnet{uuid.uuid4().hex[:8]}", "-f", str(tmp_path / "compose.networks.yml")]
    try:
        run([*stack, "up", "-d"], env, timeout=300)
        ids = run([*stack, "ps", "-q", "postgres"], env).stdout.split()
        addresses = json.loads(run(["docker", "inspect", "-f", "{{json .NetworkSettings.Networks}}", *ids], env)
                               .stdout)
        postgres_ips = [n["IPAddress"] for n in addresses.values()]
        assert postgres_ips
        forbidden = ["postgres:5432", "rabbitmq:5672", "rabbitmq:15672", "dsm:8084", "task-manager:8081",
                     "job-manager:8082", "task-executor:8083", *(f"{ip}:5432" for ip in postgres_ips)]
        reached = {}
        for _ in range(30):  # the stand-ins listen a moment after their containers start
            reached = _probe(stack, env, "pilot", ["job-executor:8085", *forbidden])
            if reached["job-executor:8085"] == "connected":
                break
        assert reached["job-executor:8085"] == "connected", reached
        assert not [t for t in forbidden if reached[t] == "connected"], reached
        # the services' side is connected: what stops the pilot is its network, not a dead stand-in
        assert set(_probe(stack, env, "job-executor", ["postgres:5432", "rabbitmq:5672", "dsm:8084"]).values()) \
            == {"connected"}
    finally:
        subprocess.run([*stack, "down", "-v", "--remove-orphans", "-t", "5"], env=env, cwd=ROOT,
                       capture_output=True, timeout=300)

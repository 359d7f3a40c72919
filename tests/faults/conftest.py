"""Private servers for fault tests: a RabbitMQ node and a PostgreSQL cluster of the test's own (the machine's
are never stopped nor reconfigured)."""
from __future__ import annotations

import contextlib
import os
import subprocess
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.conftest import free_port

SCRIPTS = Path(__file__).resolve().parents[2] / "scripts"


def free_port_pair() -> int:
    """A port p with p + 20000 free too (a RabbitMQ node's AMQP and distribution ports)."""
    import socket

    for _ in range(50):
        port = free_port()
        if port + 20000 > 65535:
            continue
        with socket.socket() as s:
            try:
                s.bind(("127.0.0.1", port + 20000))
            except OSError:
                continue
        return port
    raise AssertionError("no free port pair")


@contextlib.contextmanager
def private_server(script: str, port: int, stop: str, **env: str) -> Iterator[tuple[str, Path, int]]:
    """Start ``scripts/<script>`` in a directory of its own on ``port``; ``stop`` it (and its data) after."""
    directory = Path(tempfile.mkdtemp(prefix=f"wms-fault-{script}."))
    url = subprocess.run([SCRIPTS / script, "start", directory, str(port)], check=True, capture_output=True,
                         text=True, timeout=180, env={**os.environ, **env}).stdout.strip()
    try:
        yield url, directory, port
    finally:
        subprocess.run([SCRIPTS / script, stop, directory, str(port)], capture_output=True, timeout=180)


@pytest.fixture
def private_rabbitmq() -> Iterator[tuple[str, Path, int]]:
    with private_server("private-rabbitmq", free_port_pair(), "stop") as server:
        yield server


@pytest.fixture
def private_postgres() -> Iterator[tuple[str, Path, int]]:
    with private_server("private-postgres", free_port(), "remove") as server:
        yield server



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


def free_port_with(*offsets: int) -> int:
    """A free port p with p + each offset free too (several listeners of one server, on ports derived from p)."""
    import socket

    for _ in range(100):
        port = free_port()
        if port + max(offsets) > 65535:
            continue
        with contextlib.ExitStack() as stack:
            try:
                for offset in offsets:
                    stack.enter_context(socket.socket()).bind(("127.0.0.1", port + offset))
            except OSError:
                continue
        return port
    raise AssertionError(f"no free port p with p + {offsets} free")


def free_port_pair() -> int:
    """A port p with p + 20000 free too (a RabbitMQ node's AMQP and distribution ports)."""
    return free_port_with(20000)


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




@pytest.fixture
def slurm_cluster() -> Iterator[Path]:
    """A single-node Slurm cluster of the test's own (scripts/slurm-cluster): the node offers 2 CPUs, so 1-core
    pilots beyond two wait in the queue. Yields its SLURM_CONF. Without Slurm installed the test is skipped, unless
    WMS_REQUIRE_SLURM=1 (CI installs it: then a missing Slurm fails)."""
    import shutil

    if not all(shutil.which(tool) for tool in ("slurmctld", "slurmd", "munged", "sbatch")):
        if os.environ.get("WMS_REQUIRE_SLURM") == "1":
            pytest.fail("Slurm is not installed (scripts/slurm-cluster install)")
        pytest.skip("Slurm is not installed (scripts/slurm-cluster install)")
    with private_server("slurm-cluster", free_port_with(1), "stop", SLURM_CPUS="2",
                        SLURM_MEMORY_MB="8000") as (conf, _, _):
        yield Path(conf)


@pytest.fixture
def rabbitmq_cluster() -> Iterator[tuple[str, Path, int]]:
    """Three RabbitMQ nodes of the test's own, clustered (scripts/rabbitmq-cluster): (the AMQP URLs of all three,
    comma-separated; its directory; the first node's port)."""
    # three nodes: AMQP on p..p+2, distribution on p+20000..p+20002
    with private_server("rabbitmq-cluster", free_port_with(1, 2, 20000, 20001, 20002), "stop") as server:
        yield server

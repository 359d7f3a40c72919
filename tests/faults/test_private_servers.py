"""The private servers' scripts leave nothing running (issue 22, finding 4: Ctrl-C on wms-launch left the private
RabbitMQ's `epmd -daemon` listening). The machine's own epmd (port 4369, the machine's RabbitMQ) must never be
touched, so the node here uses a port mapper on a port of its own (ERL_EPMD_PORT), which no one else uses."""
from __future__ import annotations

import os
import subprocess
import tempfile
from pathlib import Path

import pytest

from tests.conftest import free_port
from tests.faults.conftest import SCRIPTS, free_port_pair
from tools.launcher.servers import answers

pytestmark = pytest.mark.e2e


def test_the_private_rabbitmq_stops_the_port_mapper_it_started() -> None:
    epmd_port, port = free_port(), free_port_pair()
    env = {**os.environ, "ERL_EPMD_PORT": str(epmd_port)}
    directory = Path(tempfile.mkdtemp(prefix="wms-epmd."))
    directory.chmod(0o755)
    script = SCRIPTS / "private-rabbitmq"
    machines = answers("127.0.0.1", 4369)
    try:
        assert not answers("127.0.0.1", epmd_port)
        subprocess.run([script, "start", directory / "node", str(port)], check=True, capture_output=True,
                       timeout=180, env=env)
        assert answers("127.0.0.1", epmd_port) and answers("127.0.0.1", port)  # it started one
        subprocess.run([script, "halt", directory / "node", str(port)], check=True, capture_output=True,
                       timeout=180, env=env)
        assert not answers("127.0.0.1", port)
        assert not answers("127.0.0.1", epmd_port)  # and stopped it with the node
        assert answers("127.0.0.1", 4369) == machines  # the machine's port mapper, if any, still runs
    finally:
        subprocess.run([script, "stop", directory / "node", str(port)], capture_output=True, timeout=180, env=env)
        subprocess.run(["rm", "-rf", str(directory)], capture_output=True)

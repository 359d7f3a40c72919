"""The development tokens are refused at start-up unless development mode is set explicitly."""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import free_port

pytestmark = pytest.mark.e2e
BIN = Path(sys.executable).parent


def test_a_service_refuses_to_start_with_the_development_tokens(tmp_path) -> None:
    env = {k: v for k, v in os.environ.items() if k not in ("WMS_API_TOKENS", "WMS_SERVICE_TOKEN", "WMS_DEV_MODE")}
    env["WMS_DSM_PORT"] = str(free_port())
    done = subprocess.run([BIN / "wms-dsm"], env=env, capture_output=True, text=True, timeout=60)
    assert done.returncode == 2
    assert "refusing to start with well-known secrets: the development tokens" in done.stderr


def test_development_mode_allows_them_and_says_so(tmp_path) -> None:
    env = {k: v for k, v in os.environ.items() if k not in ("WMS_API_TOKENS", "WMS_SERVICE_TOKEN")}
    env.update(WMS_DEV_MODE="1", WMS_DSM_PORT=str(free_port()),
               WMS_DATABASE_URL="postgresql+asyncpg://postgres@127.0.0.1:1/none")  # it need not get further
    process = subprocess.Popen([BIN / "wms-dsm"], env=env, stderr=subprocess.PIPE, text=True)
    try:
        assert process.stderr is not None
        first = process.stderr.readline()
        assert "development mode" in first and "well-known secrets are live: the development tokens" in first
    finally:
        process.kill()
        process.wait()


@pytest.mark.parametrize("variable, value, named", [
    ("WMS_DATABASE_URL", "postgresql+asyncpg://postgres:dev-db-password@127.0.0.1:5432/wms", "database"),
    ("WMS_AMQP_URL", "amqp://wms:dev-broker-password@127.0.0.1:5672/", "broker"),
    ("WMS_AMQP_URL", "amqp://guest:guest@10.1.2.3:5672/", "broker"),
])
def test_the_well_known_deployment_secrets_are_refused_too(variable, value, named) -> None:
    """Issue 21, finding 7: compose's broker password defaulted to dev-broker-password whatever WMS_DEV_MODE said
    (and PostgreSQL trusted every connection). Now the services and the migration refuse compose's well-known
    database and broker passwords (and guest beyond loopback) unless development mode says so."""
    env = {k: v for k, v in os.environ.items() if k != "WMS_DEV_MODE"}
    env.update(WMS_API_TOKENS='{"a-real-wfms-token-0123456789": "wfms", "a-real-operator-token-0123456789": '
               '"operator"}', WMS_SERVICE_TOKEN="a-real-service-token-0123456789", WMS_DSM_PORT=str(free_port()))
    env[variable] = value
    for command in ("wms-dsm", "wms-migrate"):
        done = subprocess.run([BIN / command], env=env, capture_output=True, text=True, timeout=60)
        assert done.returncode == 2, (command, done.stderr[-2000:])
        assert "refusing to start with well-known secrets" in done.stderr and named in done.stderr, done.stderr
        assert value.split("//")[1].split("@")[0].split(":")[1] not in done.stderr  # never echoed

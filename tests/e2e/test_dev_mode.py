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
    assert "refusing to start with the development tokens" in done.stderr


def test_development_mode_allows_them_and_says_so(tmp_path) -> None:
    env = {k: v for k, v in os.environ.items() if k not in ("WMS_API_TOKENS", "WMS_SERVICE_TOKEN")}
    env.update(WMS_DEV_MODE="1", WMS_DSM_PORT=str(free_port()),
               WMS_DATABASE_URL="postgresql+asyncpg://postgres@127.0.0.1:1/none")  # it need not get further
    process = subprocess.Popen([BIN / "wms-dsm"], env=env, stderr=subprocess.PIPE, text=True)
    try:
        assert process.stderr is not None
        first = process.stderr.readline()
        assert "development mode" in first and "development tokens are live" in first
    finally:
        process.kill()
        process.wait()

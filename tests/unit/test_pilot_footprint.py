"""The pilot installs and imports alone on a worker node: only aiohttp, aio-pika and pydantic(-settings), never
the server stack (FastAPI, uvicorn, SQLAlchemy, asyncpg, alembic, prometheus, the CLI's typer and rich)."""
from __future__ import annotations

import subprocess
import sys
import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
SERVER_PACKAGES = ("fastapi", "starlette", "uvicorn", "sqlalchemy", "asyncpg", "alembic", "prometheus_client",
                   "typer", "rich", "yaml", "httpx")
PILOT_MODULES = ("pilot.app", "pilot.daemon", "pilot.channels.rest", "pilot.channels.mq", "pilot.staging",
                 "pilot.payload", "pilot.resources", "pilot.config", "pilot.outputs", "pilot.usage", "pilot.cgroups",
                 "pilot.credentials", "pilot.runtimes", "pilot.runtimes.sandbox", "pilot.runtimes.plain",
                 "pilot.runtimes.select")

# Imports every pilot module in a fresh interpreter where any server package fails to import, as if absent.
PROBE = """
import importlib, importlib.abc, sys
BLOCKED = set(sys.argv[1].split(","))
class Absent(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in BLOCKED:
            raise ModuleNotFoundError(f"No module named {name!r} (server package, absent on a worker node)")
sys.meta_path.insert(0, Absent())
for module in sys.argv[2].split(","):
    importlib.import_module(module)
loaded = sorted(m for m in sys.modules if m.split(".")[0] in BLOCKED)
assert not loaded, loaded
print("ok")
"""


def test_pilot_imports_with_server_packages_absent() -> None:
    done = subprocess.run([sys.executable, "-c", PROBE, ",".join(SERVER_PACKAGES), ",".join(PILOT_MODULES)],
                          capture_output=True, text=True, cwd=ROOT, timeout=60)
    assert done.returncode == 0 and done.stdout.strip() == "ok", done.stderr


def test_the_pilot_extra_installs_only_what_a_worker_node_needs() -> None:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    names = {dep.split("[")[0].split(">")[0].split("=")[0].strip() for dep in project["dependencies"]}
    assert names == {"aio-pika", "aiohttp", "pydantic", "pydantic-settings"}
    assert project["optional-dependencies"]["pilot"] == []
    server = " ".join(project["optional-dependencies"]["server"])
    assert all(name in server for name in ("fastapi", "sqlalchemy", "asyncpg", "uvicorn"))

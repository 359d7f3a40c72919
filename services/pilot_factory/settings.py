"""The factory's own settings (the WMS_ prefix, like every service's): its queues, its cycle, what its pilots get."""
from __future__ import annotations

import shutil
import sys
from pathlib import Path

from pydantic import Field

from common.settings import Settings


def _pilot_command() -> str:
    beside = Path(sys.executable).parent / "wms-pilot"  # the pilot installed with the factory
    return str(beside) if beside.exists() else (shutil.which("wms-pilot") or "wms-pilot")


class FactorySettings(Settings):
    factory_port: int = Field(8086, ge=1, le=65535)
    factory_queues_file: str | None = None  # JSON list of site queues (services/pilot_factory/queues.py)
    factory_interval_s: float = Field(5.0, gt=0)  # one cycle: follow the batch jobs, then submit or withdraw
    factory_log_dir: str = "/var/tmp/spd-wms/factory"  # the pilots' batch logs
    factory_pilot_command: str = Field(default_factory=_pilot_command)
    # What the pilots are told: the job-executor's URLs (comma-separated, tried in turn), the broker and the
    # pilot credential (an operator-issued one: `wms credentials issue`).
    factory_pilot_server_urls: str = "http://127.0.0.1:8085"
    factory_pilot_amqp_url: str = "amqp://guest:guest@127.0.0.1:5672/"
    factory_pilot_token: str = "dev-pilot-token"
    # An intended submission without a batch job id, older than this, that the batch system does not know by
    # name, was never submitted (the factory died before sbatch answered or before it asked).
    factory_intent_grace_s: float = Field(30.0, gt=0)

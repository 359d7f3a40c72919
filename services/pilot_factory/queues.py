"""The factory's site queues: where pilots are submitted and how many (WMS_FACTORY_QUEUES_FILE, a JSON list)."""
from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

from pydantic import BaseModel, ConfigDict, Field, StringConstraints, TypeAdapter, model_validator

from common.policies import ResourceType

Name = Annotated[str, StringConstraints(min_length=1, max_length=40, pattern=r"^[a-z0-9][a-z0-9_-]*$")]


class SiteQueue(BaseModel):
    """One site queue: a batch system, the size of its pilots, and the factory's limits on it."""

    model_config = ConfigDict(extra="forbid")

    name: Name
    batch_system: Name = Field(description="a module of services/pilot_factory/batch: slurm, local")
    resource_type: ResourceType = "cpu"
    cores: int = Field(1, ge=1, le=4096)
    memory_mb: int = Field(2000, ge=1)
    gpus: int = Field(0, ge=0, le=64)
    slots: int | None = Field(None, ge=1, le=1024, description="jobs a pilot runs at once (default: its cores)")
    max_running: int = Field(10, ge=0, description="pilots of this queue running at once, at most")
    max_queued: int = Field(4, ge=0, description="pilots waiting in the batch system, at most")
    max_submit_per_cycle: int = Field(5, ge=0, description="submissions per factory cycle, at most (the rate)")
    pilot_idle_limit_s: float = Field(60.0, gt=0, description="a pilot without work ends after this")
    pilot_lifetime_s: float = Field(3600.0, gt=0, description="a pilot takes no new job after this")
    channel: str = Field("rest", pattern=r"^(rest|mq)$")
    # batch-system specific options (slurm: partition, time_limit_min, account)
    options: dict[str, str | int] = Field(default_factory=dict)
    # more WMS_PILOT_* variables for its pilots (e.g. WMS_PILOT_WORKDIR)
    pilot_env: dict[str, str] = Field(default_factory=dict)

    @model_validator(mode="after")
    def _gpu_queue_has_gpus(self) -> SiteQueue:
        if self.resource_type == "gpu" and self.gpus < 1:
            raise ValueError(f"queue {self.name}: a gpu queue needs gpus >= 1")
        if any(not k.startswith("WMS_PILOT_") for k in self.pilot_env):
            raise ValueError(f"queue {self.name}: pilot_env may only set WMS_PILOT_* variables")
        return self

    @property
    def pilot_slots(self) -> int:
        return self.slots or self.cores


def load_queues(path: str | None) -> list[SiteQueue]:
    """The queues of the file at ``path`` (none without one); ValueError with the reason for a broken file."""
    if not path:
        return []
    try:
        queues = TypeAdapter(list[SiteQueue]).validate_python(json.loads(Path(path).read_text()))
    except (OSError, ValueError) as exc:
        raise ValueError(f"factory queues {path}: {exc}") from exc
    names = [q.name for q in queues]
    if len(set(names)) != len(names):
        raise ValueError(f"factory queues {path}: queue names must be unique")
    return queues

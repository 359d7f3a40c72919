"""Batch systems behind one small interface: submit a pilot, the state of many batch jobs, cancel some.

A batch system is a module of this package named as queues name it (``slurm``, ``local``) with a function
``create(settings: FactorySettings) -> BatchSystem``: adding one (HTCondor, Kubernetes Jobs) takes one file.
"""
from __future__ import annotations

import dataclasses
import enum
import importlib
from typing import TYPE_CHECKING, Protocol

if TYPE_CHECKING:
    from services.pilot_factory.settings import FactorySettings


class BatchState(enum.StrEnum):
    PENDING = "pending"  # waiting for a node
    RUNNING = "running"
    ENDED = "ended"  # over: ``detail`` says how (COMPLETED, CANCELLED, FAILED, exit 3, ...)


@dataclasses.dataclass(frozen=True)
class BatchJob:
    job_id: str
    name: str
    state: BatchState
    detail: str = ""


@dataclasses.dataclass(frozen=True)
class PilotJob:
    """What to run: a pilot with these resources and this environment (its WMS_PILOT_* settings)."""

    name: str  # unique: a restarted factory finds the job by it
    cores: int
    memory_mb: int
    gpus: int
    env: dict[str, str]
    log_dir: str
    options: dict[str, str | int]


class BatchError(Exception):
    """The batch system refused or could not be reached; the message says what it answered."""


class BatchSystem(Protocol):
    name: str

    async def submit(self, job: PilotJob) -> str:
        """Submit; the batch job id. BatchError if not submitted."""

    async def jobs(self, names_prefix: str) -> list[BatchJob]:
        """The batch jobs whose name starts with ``names_prefix`` that the batch system still knows (ended ones
        for as long as it keeps them). BatchError if it cannot be asked."""

    async def cancel(self, job_ids: list[str]) -> None:
        """Cancel these batch jobs (those already over are ignored)."""


def load(name: str, settings: FactorySettings) -> BatchSystem:
    try:
        module = importlib.import_module(f"{__name__}.{name}")
    except ModuleNotFoundError as exc:
        raise ValueError(f"no batch system {name!r} (a module of {__name__})") from exc
    system: BatchSystem = module.create(settings)
    return system

"""The arithmetic (pure): the detector's stream through the chain, stage by stage.

The DAQ cuts the stream into time slices (``time_slice_s``: ``raw_rate x time_slice`` bytes and ``event_rate x
time_slice`` events each) and writes them into raw files of ``raw_file_bytes``: stage 1 reads ``raw_rate /
raw_file_bytes`` files per second. Each stage
turns its input files into jobs (``files_per_job`` each) and writes one output file per job; its output events are
its input events x ``keep_fraction``, its output bytes its input bytes x ``keep_fraction x output_ratio``. The next
stage reads those. CPU: ``cpu_s_per_event`` x events/s, plus ``cpu_s_per_gb`` x GB/s in, is the cores the stage
keeps busy; pilots of ``cores`` cores each. The WMS sees one exchange per pilot cycle at most: requests/s =
min(jobs/s, pilots / cycle_s).
"""
from __future__ import annotations

import dataclasses
import math
from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel, ConfigDict, Field

DEFAULTS = Path(__file__).with_name("spd.yaml")


class Detector(BaseModel):
    model_config = ConfigDict(extra="forbid")
    event_rate_hz: float = Field(gt=0)
    raw_rate_bytes_s: float = Field(gt=0)
    time_slice_s: float = Field(gt=0)
    raw_file_bytes: float = Field(gt=0)

    @property
    def slice_bytes(self) -> float:
        return self.raw_rate_bytes_s * self.time_slice_s

    @property
    def events_per_slice(self) -> float:
        return self.event_rate_hz * self.time_slice_s

    @property
    def slices_per_file(self) -> float:
        return self.raw_file_bytes / self.slice_bytes


class Stage(BaseModel):
    model_config = ConfigDict(extra="forbid")
    name: str
    cpu_s_per_event: float = Field(0.0, ge=0)
    cpu_s_per_gb: float = Field(0.0, ge=0)
    keep_fraction: float = Field(1.0, gt=0, le=1)
    output_ratio: float = Field(1.0, gt=0)
    files_per_job: int = Field(1, ge=1)


class Pilots(BaseModel):
    model_config = ConfigDict(extra="forbid")
    cores: int = Field(ge=1)
    cycle_s: float = Field(gt=0)


class Wms(BaseModel):
    model_config = ConfigDict(extra="forbid")
    job_executor_jobs_per_s: float = Field(gt=0)
    headroom: float = Field(1.0, ge=1)


class Parameters(BaseModel):
    model_config = ConfigDict(extra="forbid")
    detector: Detector
    stages: list[Stage] = Field(min_length=1)
    pilots: Pilots
    wms: Wms


def load(path: Path | None = None) -> Parameters:
    """The defaults (SPD, nominal), with what the YAML at ``path`` changes (a section at a time; ``stages`` as a
    whole)."""
    merged: dict[str, Any] = yaml.safe_load(DEFAULTS.read_text())
    if path is not None:
        changes = yaml.safe_load(path.read_text()) or {}
        if not isinstance(changes, dict):
            raise ValueError(f"{path}: a mapping of sections is expected")
        for section, value in changes.items():
            if isinstance(value, dict) and isinstance(merged.get(section), dict):
                merged[section] = {**merged[section], **value}
            else:
                merged[section] = value
    return Parameters.model_validate(merged)


@dataclasses.dataclass(frozen=True)
class StageFlow:
    name: str
    files_in_per_s: float
    jobs_per_s: float
    bytes_in_per_s: float
    bytes_out_per_s: float
    events_in_per_s: float
    events_out_per_s: float
    cores: float
    pilots: float
    wms_requests_per_s: float


@dataclasses.dataclass(frozen=True)
class Capacity:
    jobs_per_s: float  # all stages
    wms_requests_per_s: float
    cores: float
    pilots: int
    job_executor_replicas: int  # with the headroom


def flow(p: Parameters) -> list[StageFlow]:
    d = p.detector
    files_in = d.raw_rate_bytes_s / d.raw_file_bytes
    bytes_in, events_in = d.raw_rate_bytes_s, d.event_rate_hz
    flows = []
    for stage in p.stages:
        jobs = files_in / stage.files_per_job
        events_out = events_in * stage.keep_fraction
        bytes_out = bytes_in * stage.keep_fraction * stage.output_ratio
        cores = stage.cpu_s_per_event * events_in + stage.cpu_s_per_gb * bytes_in / 1e9
        pilots = cores / p.pilots.cores
        flows.append(StageFlow(stage.name, files_in, jobs, bytes_in, bytes_out, events_in, events_out, cores,
                               pilots, min(jobs, pilots / p.pilots.cycle_s)))
        files_in, bytes_in, events_in = jobs, bytes_out, events_out  # one output file per job
    return flows


def capacity(p: Parameters, flows: list[StageFlow]) -> Capacity:
    jobs = sum(f.jobs_per_s for f in flows)
    cores = sum(f.cores for f in flows)
    return Capacity(jobs_per_s=jobs, wms_requests_per_s=sum(f.wms_requests_per_s for f in flows), cores=cores,
                    pilots=math.ceil(cores / p.pilots.cores),
                    job_executor_replicas=max(1, math.ceil(jobs * p.wms.headroom / p.wms.job_executor_jobs_per_s)))


def scaled(p: Parameters, event_rate_hz: float) -> Parameters:
    """The same run at another event rate (the raw rate scales with it: bytes per event fixed)."""
    factor = event_rate_hz / p.detector.event_rate_hz
    detector = p.detector.model_copy(update={"event_rate_hz": event_rate_hz,
                                             "raw_rate_bytes_s": p.detector.raw_rate_bytes_s * factor})
    return p.model_copy(update={"detector": detector})

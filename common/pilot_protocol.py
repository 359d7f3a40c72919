"""The conversation between pilots and the job-executor, the same over REST and over RabbitMQ.

Every report names (job id, attempt): a pilot whose attempt was superseded (it was declared dead, the job was
retried elsewhere) is refused with 409 and must stop its payload.
"""
from __future__ import annotations

import uuid
from typing import Annotated, Literal

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, StringConstraints

from common.dsm import Count, FileUrl, check_lfn
from common.policies import ResourceType

# 'manifest': the payload's outputs.json could not be read (not JSON, or not {name: {"events": n}}).
ErrorCategory = Literal["stage-in", "payload", "timeout", "stage-out", "manifest", "lost", "cancelled", "pilot"]


class PilotRegistration(BaseModel):
    model_config = ConfigDict(extra="forbid")

    host: Annotated[str, StringConstraints(min_length=1, max_length=256, pattern=r"^[!-~]+$")]
    resource_type: ResourceType
    cores: int = Field(ge=1, le=4096, strict=True)
    memory_mb: int = Field(ge=1, le=2**24, strict=True)
    gpus: int = Field(0, ge=0, le=64, strict=True)
    version: Annotated[str, StringConstraints(min_length=1, max_length=64, pattern=r"^[!-~]+$")]


class PilotSession(BaseModel):
    pilot_id: int
    session: str = Field(description="secret to present with every later call (X-Pilot-Session)")
    heartbeat_interval_s: float


class ClaimRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    request_id: uuid.UUID | None = Field(
        None, description="chosen by the pilot, the same for every retry of one claim: a retried claim gets the "
        "job the first one produced instead of a second job")


class InputFile(BaseModel):
    lfn: str
    url: str
    size: int | None
    adler32: str | None


class JobSpec(BaseModel):
    """What a pilot needs to run one attempt of a job."""

    job_id: int
    attempt: int
    task_id: int
    command: str
    args: list[str]
    env: dict[str, str]
    container_image: str | None
    inputs: list[InputFile]
    output_dataset: str
    log_dataset: str = Field(description="where the job's log goes: <output_dataset>.log, so the output dataset "
                             "holds only outputs and a following task can read it")
    output_url_prefix: str = Field(description="file:// URL of the directory the outputs are staged to")
    wall_time_s: int


class Heartbeat(BaseModel):
    model_config = ConfigDict(extra="forbid")

    job_id: int | None = None
    attempt: int | None = None


class HeartbeatReply(BaseModel):
    abort: bool = Field(description="stop the payload now (job cancelled or attempt superseded)")
    reason: str | None = None


class StagedFile(BaseModel):
    model_config = ConfigDict(extra="forbid")

    lfn: Annotated[str, StringConstraints(min_length=1, max_length=1024, pattern=r"^[A-Za-z0-9_.:/+=-]+$"),
                   AfterValidator(check_lfn)]
    url: FileUrl
    size: Count
    adler32: Annotated[str, StringConstraints(pattern=r"^[0-9a-f]{8}$")]
    events: Count | None = None


class JobReport(BaseModel):
    model_config = ConfigDict(extra="forbid")

    attempt: int = Field(ge=1, strict=True)
    state: Literal["running", "finished", "failed"]
    exit_code: int | None = Field(None, strict=True, ge=-(2**31), le=2**31 - 1)
    error_category: ErrorCategory | None = None
    error_message: Annotated[str, StringConstraints(max_length=4000, pattern=r"^[^\x00]*$")] | None = None
    outputs: list[StagedFile] = Field(default_factory=list, max_length=10_000)
    log: StagedFile | None = None

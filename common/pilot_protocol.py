"""The conversation between pilots and the job-executor, the same over REST and over RabbitMQ.

Every report names (job id, attempt): a pilot whose attempt was superseded (it was declared dead, the job was
retried elsewhere) is refused with 409 and must stop its payload.

Protocol 2 (``exchange``): one call per pilot cycle carries the reports of its jobs, the heartbeat of those in
flight and a request for up to ``want`` jobs for its free slots; the answer says which reports were accepted,
which jobs to abort, and gives the new jobs. Protocol 1 (one call per claim, heartbeat and report) stays, as
adapters over the exchange (services/job_executor/single_calls.py), for
single-job clients.
"""
from __future__ import annotations

import hashlib
import re
import uuid
from typing import Annotated, Literal

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, StringConstraints

from common.dsm import Count, FileUrl, check_lfn
from common.policies import ResourceType

# 'manifest': the payload's outputs.json could not be read (not JSON, or not {name: {"events": n}}), or it left
# something in its output directory that is not a regular file of its own (a link, a FIFO, a device).
# 'memory': the payload went over its memory limit; 'output_too_large': over the output volume or log size limit.
REPLY_DIGEST_CHARS = 24


def reply_queue_prefix(namespace: str, credential: str | None) -> str:
    """The names of the reply queues of the pilots holding ``credential`` (over RabbitMQ) start with this: the job-
    executor answers a request only on a queue named after the credential the request carries, so a pilot cannot
    have an answer sent to the reply queue of a pilot of another credential. The digest (domain-separated sha256
    of a 256-bit token) reveals nothing of the token."""
    digest = hashlib.sha256(b"wms-pilot-reply-queue\0" + (credential or "").encode()).hexdigest()
    return f"{namespace}.reply.{digest[:REPLY_DIGEST_CHARS]}."


def new_reply_queue_name(namespace: str, credential: str | None) -> str:
    return reply_queue_prefix(namespace, credential) + uuid.uuid4().hex


def is_reply_queue_of(name: str, namespace: str, credential: str | None) -> bool:
    return re.fullmatch(re.escape(reply_queue_prefix(namespace, credential)) + "[0-9a-f]{32}", name) is not None


def reply_queue_pattern(namespace: str) -> str:
    """Every pilot's reply queue, as a regular expression (the pilots' broker permissions)."""
    return rf"^{re.escape(namespace)}\.reply\.[0-9a-f]{{{REPLY_DIGEST_CHARS}}}\.[0-9a-f]{{32}}$"


ErrorCategory = Literal["stage-in", "payload", "timeout", "stage-out", "manifest", "lost", "cancelled", "pilot",
                        "memory", "output_too_large"]
PayloadRuntimeName = Literal["sandbox", "plain"]
Figure = Annotated[float, Field(ge=0, le=1e12, allow_inf_nan=False, strict=True)]


class Usage(BaseModel):
    """What a payload used (job monitoring data, measured by the pilot: pilot/usage.py)."""

    model_config = ConfigDict(extra="forbid")

    wall_s: Figure
    cpu_s: Figure = Field(description="user + system CPU seconds of all its processes")
    max_rss_mb: Figure = Field(description="largest resident memory of all its processes together (anon + shmem "
                               "where a control group counts it)")
    max_pss_mb: Figure = Field(description="largest proportional set size of all its processes together")
    read_mb: Figure
    written_mb: Figure
    max_processes: int = Field(ge=0, le=2**31 - 1, strict=True)


class PilotRegistration(BaseModel):
    model_config = ConfigDict(extra="forbid")

    host: Annotated[str, StringConstraints(min_length=1, max_length=256, pattern=r"^[!-~]+$")]
    resource_type: ResourceType
    cores: int = Field(ge=1, le=4096, strict=True)
    memory_mb: int = Field(ge=1, le=2**24, strict=True)
    gpus: int = Field(0, ge=0, le=64, strict=True)
    slots: int = Field(1, ge=1, le=1024, strict=True, description="jobs it runs at once (within its cores, "
                       "memory and GPUs: each job takes its task's cores and memory, a GPU job one GPU)")
    version: Annotated[str, StringConstraints(min_length=1, max_length=64, pattern=r"^[!-~]+$")]
    batch_system: Annotated[str, StringConstraints(min_length=1, max_length=32, pattern=r"^[a-z][a-z0-9_-]*$")] | None \
        = Field(None, description="the batch system whose job the pilot runs in (a pilot the factory submitted)")
    batch_job_id: Annotated[str, StringConstraints(min_length=1, max_length=64, pattern=r"^[!-~]+$")] | None = Field(
        None, description="that batch job's id")
    runtime: PayloadRuntimeName = Field("plain", description="how it runs payloads: sandbox (bubblewrap) or plain")


class PilotSession(BaseModel):
    pilot_id: int
    session: str = Field(description="secret to present with every later call (X-Pilot-Session)")
    heartbeat_interval_s: float
    prefetch: int = Field(0, description="jobs it may hold beyond its slots (they wait on the node for a slot; "
                          "the job-executor's setting for its queue)")


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
    container_image: str | None = Field(description="the unpacked root filesystem (a directory on the node) "
                                       "the payload runs in, from the site's image registry; null: the node's own")
    network: bool = True
    memory_mb: int = Field(2000, description="the memory this attempt may use (the task's, more after a memory "
                           "failure); the pilot's limit is this times its site factor")
    cores: int = Field(1, description="the cores it takes (its task's)")
    gpus: int = Field(0, description="the GPUs it takes (a GPU job one)")
    inputs: list[InputFile]
    output_dataset: str
    log_dataset: str = Field(description="where the job's log goes: <output_dataset>.log, so the output dataset "
                             "holds only outputs and a following task can read it")
    output_url_prefix: str = Field(description="file:// URL of the directory the outputs are staged to")
    wall_time_s: int


class Heartbeat(BaseModel):
    model_config = ConfigDict(extra="forbid")

    job_id: int | None = Field(None, ge=1, le=2**63 - 1, strict=True)
    attempt: int | None = Field(None, ge=1, le=2**31 - 1, strict=True)


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

    attempt: int = Field(ge=1, le=2**31 - 1, strict=True)
    state: Literal["running", "finished", "failed"]
    exit_code: int | None = Field(None, strict=True, ge=-(2**31), le=2**31 - 1)
    error_category: ErrorCategory | None = None
    error_message: Annotated[str, StringConstraints(max_length=4000, pattern=r"^[^\x00]*$")] | None = None
    outputs: list[StagedFile] = Field(default_factory=list, max_length=10_000)
    log: StagedFile | None = None
    usage: Usage | None = None


class ExchangeReport(JobReport):
    """A report of one of the pilot's jobs, inside an exchange."""

    job_id: int = Field(ge=1, le=2**63 - 1, strict=True)


class JobBeat(BaseModel):
    model_config = ConfigDict(extra="forbid")

    job_id: int = Field(ge=1, le=2**63 - 1, strict=True)
    attempt: int = Field(ge=1, le=2**31 - 1, strict=True)
    usage: Usage | None = Field(None, description="the latest figures of a running payload (sent now and then)")


class ExchangeRequest(BaseModel):
    """One pilot cycle: reports, heartbeats of the jobs in flight, and how many more jobs it would take."""

    model_config = ConfigDict(extra="forbid")

    reports: list[ExchangeReport] = Field(default_factory=list, max_length=1024)
    running: list[JobBeat] = Field(default_factory=list, max_length=1024,
                                   description="the jobs in flight on the pilot (their heartbeat)")
    want: int = Field(0, ge=0, le=256, strict=True, description="jobs it would take now (its free slots)")
    request_id: uuid.UUID | None = Field(
        None, description="the same for every retry of one exchange: a retried exchange gets the jobs the first "
        "one claimed instead of more")
    wait_s: float = Field(0.0, ge=0, le=30, strict=True, description="if no job is ready, wait up to this long for one "
                          "(long poll)")


class ReportOutcome(BaseModel):
    job_id: int
    attempt: int
    status: int = Field(description="200 accepted (or a repeat), 409 no longer this pilot's attempt, 422 invalid")
    detail: str | None = None
    current_state: str | None = Field(None, description="409: the job's state now (null: no such job)")


class PilotLost(BaseModel):
    """A pilot daemon's word that its pilot application died (killed, crashed) holding jobs."""

    model_config = ConfigDict(extra="forbid")

    reason: Annotated[str, StringConstraints(min_length=1, max_length=500)] = Field(
        description="what the daemon saw, e.g. 'killed by signal 9'")


class AbortOrder(BaseModel):
    job_id: int
    attempt: int
    reason: str


class ExchangeReply(BaseModel):
    reports: list[ReportOutcome]
    abort: list[AbortOrder] = Field(description="jobs in flight on the pilot that it must stop now")
    jobs: list[JobSpec]

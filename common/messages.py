"""Every message on RabbitMQ: a versioned envelope around a typed payload.

A consumer decodes with :func:`decode`; anything that does not decode is a :class:`BadMessage` and must be
dead-lettered, never retried.
"""
from __future__ import annotations

import datetime as dt
import enum
import uuid
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, StringConstraints, ValidationError, model_validator

from common.pilot_protocol import ExchangeRequest, Heartbeat, JobReport, PilotLost, PilotRegistration
from common.policies import ResourceType
from common.states import TaskState

ENVELOPE_VERSION: Literal[1] = 1


class Envelope(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")

    version: Literal[1] = ENVELOPE_VERSION
    message_id: uuid.UUID = Field(default_factory=uuid.uuid4)
    type: str
    created_at: dt.datetime = Field(default_factory=lambda: dt.datetime.now(dt.UTC))
    payload: dict[str, Any]


class TaskEventType(enum.StrEnum):
    REGISTERED = "task.registered"
    FAILED = "task.failed"
    CANCELLED = "task.cancelled"
    REPRIORITISED = "task.reprioritised"
    PAUSED = "task.paused"
    RESUMED = "task.resumed"
    DONE = "task.done"
    FINISHED = "task.finished"


class TaskEvent(BaseModel):
    """A change of a task made through the task-manager; consumers read the task's row for the rest."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    task_id: int
    status: TaskState
    priority: int
    resource_type: ResourceType

    @classmethod
    def of(cls, task: Any) -> TaskEvent:
        """The event announcing ``task``'s current state (any object with id, status, priority, resource_type,
        such as a task row)."""
        return cls(task_id=task.id, status=task.status, priority=task.priority, resource_type=task.resource_type)


class JobChunk(BaseModel):
    """Jobs the task-executor generated from one stretch of a task's dataset, for the job-manager to register.

    Columnar: the files of all jobs in dataset order, and how many of them each job takes. Thousands of files
    per message cost a few flat arrays instead of thousands of nested objects to build and to validate.
    """

    model_config = ConfigDict(frozen=True, extra="forbid")

    task_id: int
    dataset: str
    resource_type: ResourceType
    priority: int
    cursor_after: int = Field(description="DSM seq of the last file in this chunk")
    files_per_job: list[Annotated[int, Field(ge=1)]] = Field(min_length=1)
    lfns: list[str]
    urls: list[str]
    sizes: list[int]
    adler32s: list[str]
    events: list[int | None]

    @model_validator(mode="after")
    def _columns_agree(self) -> JobChunk:
        n = sum(self.files_per_job)
        lengths = {len(self.lfns), len(self.urls), len(self.sizes), len(self.adler32s), len(self.events)}
        if lengths != {n}:
            raise ValueError(f"file columns must all hold the {n} files of the jobs, got lengths {sorted(lengths)}")
        return self

    def job_slices(self) -> list[slice]:
        """The files of each job, as slices of the file columns."""
        out, start = [], 0
        for n in self.files_per_job:
            out.append(slice(start, start + n))
            start += n
        return out


class PilotCall(BaseModel):
    """A pilot's request over RabbitMQ (the operation is the envelope's type, e.g. pilot.claim.gpu)."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    # the pilot's credential (its bearer token over REST): every call is authenticated, as over REST
    credential: Annotated[str, StringConstraints(min_length=1, max_length=512)] | None = None
    pilot_id: int | None = None
    session: str | None = None
    job_id: int | None = None
    request_id: uuid.UUID | None = None  # claims: the pilot's idempotency key (see ClaimRequest)
    registration: PilotRegistration | None = None
    heartbeat: Heartbeat | None = None
    report: JobReport | None = None
    exchange: ExchangeRequest | None = None
    lost: PilotLost | None = None


class PilotReply(BaseModel):
    """The job-executor's answer: the REST API's status code and body."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    status: int
    detail: str | None = None
    body: dict[str, Any] | None = None


PILOT_OPERATIONS = ("pilot.register", "pilot.claim.cpu", "pilot.claim.gpu", "pilot.heartbeat", "pilot.report",
                    "pilot.exit", "pilot.exchange", "pilot.lost")

JOB_CHUNK = "jobs.chunk"

PAYLOAD_TYPES: dict[str, type[BaseModel]] = {
    **{t.value: TaskEvent for t in TaskEventType},
    JOB_CHUNK: JobChunk,
    **{op: PilotCall for op in PILOT_OPERATIONS},
    "pilot.reply": PilotReply,
}


class BadMessage(ValueError):
    """A message that can never be processed: wrong JSON, unknown type or version, invalid payload."""


def wrap(message_type: str, payload: BaseModel) -> Envelope:
    if PAYLOAD_TYPES.get(message_type) is not type(payload):
        raise ValueError(f"{message_type!r} does not carry a {type(payload).__name__}")
    return Envelope(type=message_type, payload=payload.model_dump(mode="json"))


def decode(body: bytes) -> tuple[Envelope, BaseModel]:
    try:
        envelope = Envelope.model_validate_json(body)
    except ValidationError as exc:
        raise BadMessage(f"not a v{ENVELOPE_VERSION} envelope: {exc.errors(include_url=False)}") from exc
    payload_type = PAYLOAD_TYPES.get(envelope.type)
    if payload_type is None:
        raise BadMessage(f"unknown message type {envelope.type!r}")
    try:
        return envelope, payload_type.model_validate(envelope.payload)
    except ValidationError as exc:
        raise BadMessage(f"invalid {envelope.type} payload: {exc.errors(include_url=False)}") from exc

"""The exchange on the wire, decoded and encoded with msgspec: the job-executor's hottest request.

The pilots' protocol is defined once, as pydantic models in common.pilot_protocol: what pilots send and read, and
what the OpenAPI document shows. These structs are the same messages for the job-executor's hot path, where
pydantic's validation and FastAPI's serialization cost a large share of the service's CPU per exchange: msgspec
decodes straight from the request's bytes into typed structs, as strictly (no extra field, no string for a number,
the same bounds and patterns), and encodes the reply in one call. tests/unit/test_exchange_codec.py holds the two
to the same verdicts on valid and hostile requests, and to the same fields.

Patterns end in ``\\Z``: pydantic matches with Rust's regex, where ``$`` is the end of the text; in Python's ``re``
(msgspec) ``$`` also matches before a final newline.
"""
from __future__ import annotations

import re
import uuid
from typing import Annotated, Any, Literal

import msgspec
from msgspec import Meta, Struct, field

from common.dsm import check_lfn

Id = Annotated[int, Meta(ge=1, le=2**63 - 1)]
AttemptNo = Annotated[int, Meta(ge=1, le=2**31 - 1)]
Figure = Annotated[float, Meta(ge=0, le=1e12)]
Count = Annotated[int, Meta(ge=0, le=2**62)]
Lfn = Annotated[str, Meta(min_length=1, max_length=1024, pattern=r"^[A-Za-z0-9_.:/+=-]+\Z")]
Url = Annotated[str, Meta(min_length=1, max_length=4096, pattern=r"^[a-z][a-z0-9+.-]*://[!-~]+\Z")]
Adler32 = Annotated[str, Meta(pattern=r"^[0-9a-f]{8}\Z")]
ErrorMessage = Annotated[str, Meta(max_length=4000, pattern=r"^[^\x00]*\Z")]
ErrorCategory = Literal["stage-in", "payload", "timeout", "stage-out", "manifest", "lost", "cancelled", "pilot",
                        "memory", "output_too_large"]


class Usage(Struct, forbid_unknown_fields=True):
    wall_s: Figure
    cpu_s: Figure
    max_rss_mb: Figure
    max_pss_mb: Figure
    read_mb: Figure
    written_mb: Figure
    max_processes: Annotated[int, Meta(ge=0, le=2**31 - 1)]


class StagedFile(Struct, forbid_unknown_fields=True):
    lfn: Lfn
    url: Url
    size: Count
    adler32: Adler32
    events: Count | None = None

    def __post_init__(self) -> None:
        check_lfn(self.lfn)  # a ValueError: the request is refused (422), as pydantic's validator does


class ExchangeReport(Struct, forbid_unknown_fields=True):
    job_id: Id
    attempt: AttemptNo
    state: Literal["running", "finished", "failed"]
    exit_code: Annotated[int, Meta(ge=-(2**31), le=2**31 - 1)] | None = None
    error_category: ErrorCategory | None = None
    error_message: ErrorMessage | None = None
    outputs: Annotated[list[StagedFile], Meta(max_length=10_000)] = field(default_factory=list)
    log: StagedFile | None = None
    usage: Usage | None = None


class JobBeat(Struct, forbid_unknown_fields=True):
    job_id: Id
    attempt: AttemptNo
    usage: Usage | None = None


class ExchangeRequest(Struct, forbid_unknown_fields=True):
    reports: Annotated[list[ExchangeReport], Meta(max_length=1024)] = field(default_factory=list)
    running: Annotated[list[JobBeat], Meta(max_length=1024)] = field(default_factory=list)
    want: Annotated[int, Meta(ge=0, le=256)] = 0
    request_id: uuid.UUID | None = None
    wait_s: Annotated[float, Meta(ge=0, le=30)] = 0.0


class ReportOutcome(Struct, omit_defaults=False):
    job_id: int
    attempt: int
    status: int
    detail: str | None = None
    current_state: str | None = None


class AbortOrder(Struct):
    job_id: int
    attempt: int
    reason: str


class InputFile(Struct):
    lfn: str
    url: str
    size: int | None
    adler32: str | None


class JobSpec(Struct):
    job_id: int
    attempt: int
    task_id: int
    command: str
    args: list[str]
    env: dict[str, str]
    container_image: str | None
    network: bool
    memory_mb: int
    cores: int
    gpus: int
    inputs: list[InputFile]
    output_dataset: str
    log_dataset: str
    output_url_prefix: str
    wall_time_s: int


class ExchangeReply(Struct):
    reports: list[ReportOutcome]
    abort: list[AbortOrder]
    jobs: list[JobSpec]


_request = msgspec.json.Decoder(ExchangeRequest)
_encoder = msgspec.json.Encoder()


class InvalidRequest(ValueError):
    """The request is not an exchange request (422), with msgspec's reason and where in the body it is (``loc``,
    as FastAPI gives it: ``["body", "reports", 0, "attempt"]``)."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        found = re.search(r" - at `\$(.*)`$", reason)
        path = found.group(1) if found else ""
        self.loc: list[str | int] = ["body", *(int(part[1:-1]) if part.startswith("[") else part.lstrip(".")
                                             for part in re.findall(r"\.[^.\[]+|\[\d+\]", path))]


def decode_request(body: bytes) -> ExchangeRequest:
    try:
        return _request.decode(body)
    except (msgspec.ValidationError, msgspec.DecodeError) as exc:
        raise InvalidRequest(str(exc)) from exc


def request_of(model: Any) -> ExchangeRequest:
    """The struct of a request that came as a pydantic model (over RabbitMQ: validated already)."""
    return msgspec.convert(model.model_dump(mode="json"), ExchangeRequest)


def encode_reply(reply: ExchangeReply) -> bytes:
    return _encoder.encode(reply)


def reply_as_builtins(reply: ExchangeReply) -> dict[str, Any]:
    built: dict[str, Any] = msgspec.to_builtins(reply)
    return built

"""The exchange's msgspec codec (the job-executor's hot path) and the protocol's pydantic models (what pilots send
and the OpenAPI document shows) give the same verdict on every request, and have the same fields."""
from __future__ import annotations

import json
import uuid
from typing import Any

import msgspec
import pytest
from pydantic import BaseModel, ValidationError

from common import pilot_protocol as protocol
from services.job_executor import exchange_codec as codec

PAIRS: list[tuple[type[BaseModel], type[msgspec.Struct]]] = [
    (protocol.ExchangeRequest, codec.ExchangeRequest), (protocol.ExchangeReport, codec.ExchangeReport),
    (protocol.JobBeat, codec.JobBeat), (protocol.StagedFile, codec.StagedFile), (protocol.Usage, codec.Usage),
    (protocol.ExchangeReply, codec.ExchangeReply), (protocol.ReportOutcome, codec.ReportOutcome),
    (protocol.AbortOrder, codec.AbortOrder), (protocol.JobSpec, codec.JobSpec), (protocol.InputFile, codec.InputFile),
]


@pytest.mark.parametrize(("model", "struct"), PAIRS, ids=[m.__name__ for m, _ in PAIRS])
def test_the_same_fields(model: type[BaseModel], struct: type[msgspec.Struct]) -> None:
    assert set(model.model_fields) == set(struct.__struct_fields__)


USAGE = {"wall_s": 1.5, "cpu_s": 1.0, "max_rss_mb": 10, "max_pss_mb": 9.5, "read_mb": 0, "written_mb": 0.1,
         "max_processes": 2}
OUTPUT = {"lfn": "out/7/a.out", "url": "file:///s/out/7/1/a.out", "size": 3, "adler32": "0000000a", "events": 2}
REPORT = {"job_id": 7, "attempt": 1, "state": "finished", "exit_code": 0, "outputs": [OUTPUT], "usage": USAGE,
          "log": {**OUTPUT, "lfn": "out.log/7.1.log"}}
VALID = {"reports": [REPORT, {"job_id": 8, "attempt": 2, "state": "failed", "error_category": "memory",
                              "error_message": "over", "exit_code": -9}],
         "running": [{"job_id": 9, "attempt": 1, "usage": USAGE}], "want": 8, "request_id": str(uuid.uuid4()),
         "wait_s": 1.5}


def with_report(**change: Any) -> dict[str, Any]:
    return {"reports": [{**REPORT, **change}]}


def with_output(**change: Any) -> dict[str, Any]:
    return with_report(outputs=[{**OUTPUT, **change}])


CASES: list[Any] = [
    VALID, {}, {"want": 0}, {"wait_s": 0}, {"wait_s": 30}, {"request_id": None},
    # extra or missing fields, wrong types
    {**VALID, "extra": 1}, with_report(extra=1), {"running": [{"job_id": 1}]}, with_output(extra=1),
    {"want": "1"}, {"want": 1.0}, {"want": True}, {"want": None}, {"want": -1}, {"want": 257}, {"want": 256},
    {"wait_s": "1"}, {"wait_s": 31}, {"wait_s": -0.1}, {"request_id": "not-a-uuid"}, {"request_id": 5},
    with_report(attempt=0), with_report(attempt=2**31), with_report(job_id=0), with_report(job_id=2**63),
    with_report(job_id="7"), with_report(state="done"), with_report(error_category="oops"),
    with_report(exit_code=2**31), with_report(exit_code=-(2**31)), with_report(exit_code=1.5),
    with_report(error_message="a\x00b"), with_report(error_message="x" * 4000), with_report(error_message="x" * 4001),
    with_report(error_message=None), with_report(usage={**USAGE, "cpu_s": -1}),
    with_report(usage={**USAGE, "cpu_s": 1e13}), with_report(usage={**USAGE, "max_processes": 1.0}),
    with_report(usage={**USAGE, "extra": 1}),
    # staged files: names, URLs, checksums
    with_output(lfn="out/7/../8/a.out"), with_output(lfn="/abs/a.out"), with_output(lfn="out//a.out"),
    with_output(lfn="./a.out"), with_output(lfn="out/7/a.out\n"), with_output(lfn="out/7/a b"), with_output(lfn=""),
    with_output(lfn="x" * 1025), with_output(url="file:///s/a.out\n"), with_output(url="/s/a.out"),
    with_output(url="file:///s/a out"), with_output(url=""), with_output(adler32="0000000A"),
    with_output(adler32="0000000a\n"), with_output(adler32="000000a"), with_output(size=-1), with_output(size=2**62),
    with_output(size=2**62 + 1), with_output(size="3"), with_output(events=None), with_output(events=-1),
    {"reports": [REPORT] * 1024}, {"reports": [REPORT] * 1025}, {"running": [{"job_id": 1, "attempt": 1}] * 1025},
    [], "text", 5, None,
]


def pydantic_accepts(body: bytes) -> bool:
    try:
        protocol.ExchangeRequest.model_validate_json(body)
    except ValidationError:
        return False
    return True


def codec_accepts(body: bytes) -> bool:
    try:
        codec.decode_request(body)
    except codec.InvalidRequest:
        return False
    return True


@pytest.mark.parametrize("request_body", CASES, ids=range(len(CASES)))
def test_the_same_verdict_on_every_request(request_body: Any) -> None:
    body = json.dumps(request_body).encode()
    assert codec_accepts(body) == pydantic_accepts(body)


@pytest.mark.parametrize("raw", [b"{", b"", b'{"want": NaN}', b'{"wait_s": Infinity}', b"\xff", b'{"want": 1} x'])
def test_the_same_verdict_on_what_is_not_json(raw: bytes) -> None:
    assert codec_accepts(raw) == pydantic_accepts(raw) is False


def test_a_valid_request_decodes_to_the_same_values() -> None:
    body = json.dumps(VALID).encode()
    assert msgspec.to_builtins(codec.decode_request(body)) == \
        protocol.ExchangeRequest.model_validate_json(body).model_dump(mode="json", exclude_none=False)


def test_a_reply_encodes_as_the_protocols_reply() -> None:
    reply = codec.ExchangeReply(
        reports=[codec.ReportOutcome(job_id=7, attempt=1, status=409, detail="no", current_state="running")],
        abort=[codec.AbortOrder(job_id=8, attempt=2, reason="cancelled")],
        jobs=[codec.JobSpec(job_id=9, attempt=1, task_id=3, command="true", args=["a"], env={"K": "v"},
                            container_image=None, network=True, memory_mb=500, cores=1, gpus=0,
                            inputs=[codec.InputFile(lfn="in/1", url="file:///in/1", size=1, adler32="00000001")],
                            output_dataset="o", log_dataset="o.log", output_url_prefix="file:///s/o/9/1/",
                            wall_time_s=60)])
    decoded = protocol.ExchangeReply.model_validate_json(codec.encode_reply(reply))  # what a pilot reads
    assert decoded.model_dump(mode="json") == msgspec.to_builtins(reply)


@pytest.mark.parametrize(("body", "loc"), [
    ({"reports": [{**REPORT, "attempt": True}]}, ["body", "reports", 0, "attempt"]),
    ({"running": [{"job_id": 1, "attempt": 1}, {"job_id": "2", "attempt": 1}]}, ["body", "running", 1, "job_id"]),
    (with_output(size=-1), ["body", "reports", 0, "outputs", 0, "size"]),
    ({"want": 300}, ["body", "want"]),
])
def test_a_refusal_says_where_in_the_body(body: Any, loc: list[Any]) -> None:
    with pytest.raises(codec.InvalidRequest) as refused:
        codec.decode_request(json.dumps(body).encode())
    assert refused.value.loc == loc

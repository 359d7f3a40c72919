"""Message envelope: round trip, and every kind of bad message is a BadMessage (dead-lettered, never retried)."""
from __future__ import annotations

import json

import pytest

from common.messages import JOB_CHUNK, BadMessage, Envelope, JobChunk, TaskEvent, TaskEventType, decode, wrap


def _event() -> TaskEvent:
    return TaskEvent(task_id=7, status="registered", priority=3, resource_type="gpu")


def test_round_trip() -> None:
    envelope = wrap(TaskEventType.REGISTERED, _event())
    decoded, payload = decode(envelope.model_dump_json().encode())
    assert decoded == envelope
    assert payload == _event()


def test_wrap_refuses_a_payload_of_another_type() -> None:
    with pytest.raises(ValueError):
        wrap("task.unknown", _event())


@pytest.mark.parametrize(
    "body",
    [
        b"not json",
        b"[]",
        json.dumps({"type": "task.registered", "payload": {}}).encode(),  # payload invalid
        json.dumps({"version": 2, "type": "task.registered", "payload": {}}).encode(),
        json.dumps({"type": "job.exploded", "payload": {}}).encode(),
        json.dumps({"type": "task.registered", "payload": {"task_id": 1, "status": "weird", "priority": 1,
                                                           "resource_type": "cpu"}}).encode(),
        json.dumps({"type": "task.registered", "payload": {"task_id": 1}, "surprise": 1}).encode(),
    ],
)
def test_bad_messages(body: bytes) -> None:
    with pytest.raises(BadMessage):
        decode(body)


def test_envelope_has_identity_and_version() -> None:
    a, b = wrap(TaskEventType.PAUSED, _event()), wrap(TaskEventType.PAUSED, _event())
    assert a.message_id != b.message_id
    assert Envelope.model_validate_json(a.model_dump_json()).version == 1


def _chunk(**overrides):
    body = dict(task_id=1, dataset="d", resource_type="cpu", priority=1, cursor_after=3, files_per_job=[2, 1],
                lfns=["a", "b", "c"], urls=["u1", "u2", "u3"], sizes=[1, 2, 3], adler32s=["0"] * 3,
                events=[None, 5, 6])
    body.update(overrides)
    return JobChunk(**body)


def test_job_chunk_columns_and_slices() -> None:
    chunk = _chunk()
    assert [chunk.lfns[s] for s in chunk.job_slices()] == [["a", "b"], ["c"]]
    with pytest.raises(ValueError, match="columns"):
        _chunk(urls=["u1"])
    with pytest.raises(ValueError):
        _chunk(files_per_job=[0, 3])
    envelope = wrap(JOB_CHUNK, chunk)
    assert decode(envelope.model_dump_json().encode())[1] == chunk

"""Dead letters through the task-manager API: browsing leaves them in place, replay moves one back to its queue."""
from __future__ import annotations

import uuid

import aio_pika

from tests.conftest import OPERATOR_TOKEN, WFMS_TOKEN, get_message

OPERATOR = {"Authorization": f"Bearer {OPERATOR_TOKEN}"}


async def _dead_letter(amqp, namespace: str, queue: str, body: bytes) -> str:
    """Put a message on ``queue`` and reject it the way a consumer rejects poison: it is dead-lettered."""
    message_id = str(uuid.uuid4())
    channel = await amqp.channel()
    await channel.default_exchange.publish(
        aio_pika.Message(body=body, message_id=message_id, delivery_mode=aio_pika.DeliveryMode.PERSISTENT),
        routing_key=f"{namespace}.{queue}")
    message = await get_message(await channel.get_queue(f"{namespace}.{queue}"), no_ack=False)
    await message.reject(requeue=False)
    await channel.close()
    return message_id


async def test_browse_and_replay(task_manager, amqp, settings) -> None:
    ns = settings.broker_namespace
    kept = await _dead_letter(amqp, ns, "job-manager.job-chunks", b"not json")
    replayed = await _dead_letter(amqp, ns, "job-manager.job-chunks", b'{"also": "bad"}')

    for _ in range(2):  # browsing twice shows the same: nothing is consumed
        listed = (await task_manager.get("/api/v1/dead-letters", headers=OPERATOR)).json()
        assert [(d["queue"], d["message_id"], d["reason"]) for d in listed] == [
            ("job-manager.job-chunks", kept, "rejected"), ("job-manager.job-chunks", replayed, "rejected")]
    assert listed[0]["body"] == "not json" and listed[0]["routing_key"] == f"{ns}.job-manager.job-chunks"

    answer = await task_manager.post(f"/api/v1/dead-letters/job-manager.job-chunks/{replayed}/replay",
                                     headers=OPERATOR)
    assert answer.status_code == 200, answer.text
    assert answer.json()["republished_to"] == f"{ns}.job-manager.job-chunks"
    channel = await amqp.channel()
    back = await get_message(await channel.get_queue(f"{ns}.job-manager.job-chunks"))
    assert back.message_id == replayed and back.body == b'{"also": "bad"}'
    listed = (await task_manager.get("/api/v1/dead-letters?queue=job-manager.job-chunks", headers=OPERATOR)).json()
    assert [d["message_id"] for d in listed] == [kept]


async def test_dead_letter_errors(task_manager) -> None:
    unknown_queue = await task_manager.get("/api/v1/dead-letters?queue=nope", headers=OPERATOR)
    assert unknown_queue.status_code == 404 and "job-manager.job-chunks" in unknown_queue.json()["detail"]
    missing = await task_manager.post("/api/v1/dead-letters/job-manager.job-chunks/123/replay", headers=OPERATOR)
    assert missing.status_code == 404 and "123" in missing.json()["detail"]
    wfms = await task_manager.get("/api/v1/dead-letters", headers={"Authorization": f"Bearer {WFMS_TOKEN}"})
    assert wfms.status_code == 403

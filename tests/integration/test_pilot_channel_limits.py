"""The pilots' broker channel bounds what it takes (issue 21, finding 8): a 10 MiB junk message was written whole
into the job-executor's log (21 MB after two messages). Now a message over WMS_PILOT_MAX_MESSAGE_BYTES is
dead-lettered unread, a smaller junk one dead-lettered as before, and the log says of either only a digest
(size, sha256, first bytes)."""
from __future__ import annotations

import asyncio
import logging
import os

import aio_pika

from tests.conftest import get_message, running_app, wait_for

LOGGED_MAX = 4000  # characters of one log record (message and fields): a digest, never the body


async def test_junk_on_the_pilots_channel_is_dead_lettered_and_logged_as_a_digest(settings, amqp, tmp_path,
                                                                                 caplog) -> None:
    from services.job_executor.app import create_app

    tuned = settings.model_copy(update={"storage_root": str(tmp_path), "oversight_interval_s": 60,
                                        "pilot_max_message_bytes": 1 << 20})
    queue = f"{settings.broker_namespace}.job-executor.pilot-events"
    huge, junk = os.urandom(10 << 20), b"{" + b"x" * (512 << 10)
    caplog.set_level(logging.INFO)
    async with running_app(create_app(tuned)):
        channel = await amqp.channel()
        for body in (huge, junk):
            await channel.default_exchange.publish(
                aio_pika.Message(body=body, reply_to="amq.gen-someone", delivery_mode=aio_pika.DeliveryMode.PERSISTENT),
                routing_key=queue)
        dead = await channel.get_queue(f"{queue}.dlq")

        async def both_dead_lettered() -> bool:
            return sum(r.getMessage().startswith("dead-lettering") for r in caplog.records) >= 2

        await wait_for(both_dead_lettered, timeout=30)
        sizes = sorted([len((await get_message(dead, no_ack=True)).body) for _ in range(2)])
        await channel.close()
    assert sizes == sorted([len(huge), len(junk)])
    refused = [r for r in caplog.records if r.getMessage().startswith("dead-lettering")]
    assert {r.getMessage() for r in refused} == {"dead-lettering oversized message", "dead-lettering bad message"}
    for record in caplog.records:
        assert len(str(record.__dict__)) < LOGGED_MAX, record.getMessage()
    oversized = next(r for r in refused if "oversized" in r.getMessage())
    assert oversized.bytes == len(huge) and len(oversized.sha256) == 64


async def test_a_pilot_cannot_have_its_answer_sent_to_another_pilots_reply_queue(settings, amqp, tmp_path) -> None:
    """Finding 8: a pilot that set ``reply_to`` to another pilot's reply queue had the answer delivered there. Now a
    reply queue is named after the credential of the pilot that declared it and the job-executor answers only a
    queue of the credential the request carries: the redirected request is dead-lettered, the other pilot's queue
    gets nothing, and the pilot's own conversation goes on."""
    from common.messages import PilotCall, wrap
    from common.pilot_protocol import PilotRegistration
    from pilot.channels.mq import MqChannel
    from services.job_executor.app import create_app as job_executor_app
    from services.task_manager.app import create_app as task_manager_app
    from tests.conftest import OPERATOR_TOKEN

    tuned = settings.model_copy(update={"storage_root": str(tmp_path), "oversight_interval_s": 60,
                                        "credential_cache_s": 0})
    ns = settings.broker_namespace
    node = {"resource_type": "cpu", "max_cores": 8}
    registration = PilotRegistration(host="wn-1", resource_type="cpu", cores=2, memory_mb=2000, version="t")
    async with running_app(task_manager_app(tuned)) as tm, running_app(job_executor_app(tuned)):
        tokens = []
        for name in ("rack-a", "rack-b"):
            issued = await tm.post("/api/v1/pilot-credentials", json={"name": name, **node},
                                   headers={"Authorization": f"Bearer {OPERATOR_TOKEN}"})
            assert issued.status_code == 201, issued.text
            tokens.append(issued.json()["token"])
        attacker, victim = (MqChannel(settings.amqp_url, ns, token, 10.0) for token in tokens)
        received: list[str | None] = []
        original = victim._on_reply

        async def recording(message):  # every message the victim's reply queue gets
            received.append(message.correlation_id)
            await original(message)

        victim._on_reply = recording  # type: ignore[method-assign]
        try:
            await victim.register(registration)  # the victim's reply queue exists, and works
            await attacker.register(registration)
            victims_queue = victim._replies.name
            assert victims_queue != attacker._replies.name

            channel = await amqp.channel()
            redirected = wrap("pilot.register", PilotCall(credential=tokens[0], registration=registration))
            pilots = await channel.get_exchange(f"{ns}.pilots", ensure=False)
            await pilots.publish(aio_pika.Message(redirected.model_dump_json().encode(), type="pilot.register",
                                                  reply_to=victims_queue, correlation_id="stolen",
                                                  delivery_mode=aio_pika.DeliveryMode.PERSISTENT),
                                 routing_key="pilot.register")
            dead = await channel.get_queue(f"{ns}.job-executor.pilot-events.dlq")
            message = await get_message(dead, timeout=20, no_ack=True)
            assert message.correlation_id == "stolen"
            await asyncio.sleep(1)  # a reply, had one been sent before the dead-lettering, has arrived by now
            assert "stolen" not in received
            await channel.close()
            await attacker.register(registration)  # the attacker's own conversation is unharmed
            await victim.register(registration)
        finally:
            await attacker.close()
            await victim.close()

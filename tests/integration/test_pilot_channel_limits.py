"""The pilots' broker channel bounds what it takes (issue 21, finding 8): a 10 MiB junk message was written whole
into the job-executor's log (21 MB after two messages). Now a message over WMS_PILOT_MAX_MESSAGE_BYTES is
dead-lettered unread, a smaller junk one dead-lettered as before, and the log says of either only a digest
(size, sha256, first bytes)."""
from __future__ import annotations

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

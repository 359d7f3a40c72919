"""Dead-lettered messages: list them without consuming them, and replay one into the queue it came from.

Browsing takes messages unacknowledged on a channel of its own and closes it, which puts them back. Replay
publishes a copy (with confirms, same message id) to the original queue through the default exchange, so only
that queue's consumer sees it again, and acknowledges the dead letter only after the confirm: a crash between
the two leaves a duplicate, which consumers drop by message id, never a loss.
"""
from __future__ import annotations

import asyncio
import datetime as dt
from typing import Any

import aio_pika
from aio_pika.abc import AbstractIncomingMessage

from common.broker import QUEUES, Broker
from services.task_manager.schemas import DeadLetter, ReplayResult

BODY_PREVIEW = 2000
QUEUE_NAMES = tuple(spec.name for spec in QUEUES)


class UnknownQueue(Exception):
    def __init__(self, queue: str) -> None:
        super().__init__(f"no queue {queue!r}; queues: {', '.join(QUEUE_NAMES)}")


class DeadLetterNotFound(Exception):
    def __init__(self, queue: str, message_id: str) -> None:
        super().__init__(f"no dead-lettered message {message_id!r} in {queue}")


def _death(message: AbstractIncomingMessage) -> dict[str, Any]:
    deaths = (message.headers or {}).get("x-death") or [{}]
    return deaths[0] if isinstance(deaths, list) and deaths and isinstance(deaths[0], dict) else {}


def _view(queue: str, message: AbstractIncomingMessage) -> DeadLetter:
    death = _death(message)
    keys = death.get("routing-keys") or []
    at = death.get("time")
    return DeadLetter(
        queue=queue,
        message_id=message.message_id,
        routing_key=str(keys[0]) if keys else None,
        exchange=death.get("exchange"),
        reason=death.get("reason"),
        dead_lettered_at=at if isinstance(at, dt.datetime) else None,
        body=message.body[:BODY_PREVIEW].decode(errors="replace"),
    )


async def browse(broker: Broker, queue: str | None, limit: int) -> list[DeadLetter]:
    names = QUEUE_NAMES if queue is None else (_checked(queue),)
    channel = await broker.open_channel()
    try:
        found: list[DeadLetter] = []
        for name in names:
            dlq = await channel.declare_queue(broker.topology.dead_letter_queue(name), passive=True)
            while len(found) < limit and (message := await dlq.get(no_ack=False, fail=False)) is not None:
                found.append(_view(name, message))
        return found
    finally:
        await channel.close()  # everything browsed goes back to its queue


async def replay(broker: Broker, queue: str, message_id: str) -> ReplayResult:
    target = broker.topology.queue(_checked(queue))
    channel = await broker.open_channel(publisher_confirms=True)
    try:
        dlq = await channel.declare_queue(broker.topology.dead_letter_queue(queue), passive=True)
        while (message := await dlq.get(no_ack=False, fail=False)) is not None:
            if message.message_id != message_id:
                continue
            headers = {k: v for k, v in (message.headers or {}).items() if not k.startswith("x-")}
            copy = aio_pika.Message(
                body=message.body, headers=headers, content_type=message.content_type,
                delivery_mode=aio_pika.DeliveryMode.PERSISTENT, message_id=message.message_id,
                type=message.type, timestamp=message.timestamp,
            )
            await asyncio.wait_for(channel.default_exchange.publish(copy, routing_key=target, mandatory=True),
                                   timeout=broker.settings.publish_timeout_s)
            await message.ack()
            return ReplayResult(queue=queue, message_id=message_id, republished_to=target)
        raise DeadLetterNotFound(queue, message_id)
    finally:
        await channel.close()


def _checked(queue: str) -> str:
    if queue not in QUEUE_NAMES:
        raise UnknownQueue(queue)
    return queue

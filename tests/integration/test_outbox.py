"""Transactional outbox: an event leaves only with its committed change, and survives a broker failure."""
from __future__ import annotations

import asyncio

import aio_pika
import pytest
import sqlalchemy as sa

from common.broker import Broker
from common.db.models import outbox, tasks
from common.messages import TaskEvent, TaskEventType, decode, wrap
from common.outbox import OutboxRelay, add_event, unpublished_count
from tests.conftest import get_message
from tests.factories import insert_task


def _event(task_id: int):
    return wrap(TaskEventType.REGISTERED,
                TaskEvent(task_id=task_id, status="registered", priority=1, resource_type="cpu"))


@pytest.fixture
async def broker(settings):
    b = Broker(settings)
    await b.connect()
    yield b
    await b.close()


async def test_rolled_back_change_publishes_nothing_committed_one_publishes_once(db, broker, amqp) -> None:
    relay = OutboxRelay(db, broker, batch_size=10, poll_interval_s=0.1)
    exchange = broker.topology.exchange("tasks")

    with pytest.raises(RuntimeError):
        async with db.begin() as conn:
            task_id = await insert_task(conn)
            await add_event(conn, exchange, "task.registered", _event(task_id))
            raise RuntimeError("the business transaction fails after writing its event")
    async with db.connect() as conn:
        assert await unpublished_count(conn) == 0
        assert (await conn.execute(sa.select(sa.func.count()).select_from(tasks))).scalar_one() == 0

    async with db.begin() as conn:
        task_id = await insert_task(conn)
        await add_event(conn, exchange, "task.registered", _event(task_id))
    assert await relay.publish_pending() == 1
    assert await relay.publish_pending() == 0  # marked published: never sent twice

    queue = await (await amqp.channel()).get_queue(broker.topology.queue("task-executor.task-events"))
    message = await get_message(queue)
    assert decode(message.body)[1].task_id == task_id
    assert await queue.get(no_ack=True, fail=False) is None


async def test_failed_publish_keeps_the_event_until_it_can_be_delivered(db, broker, amqp, settings) -> None:
    relay = OutboxRelay(db, broker, batch_size=10, poll_interval_s=0.1)
    # an exchange that does not exist yet: publishing fails (the broker closes the channel)
    missing = f"{settings.broker_namespace}.later"
    async with db.begin() as conn:
        await add_event(conn, missing, "task.registered", _event(1))
    assert await relay.publish_pending() == 0
    async with db.connect() as conn:
        row = (await conn.execute(sa.select(outbox))).one()
    assert row.published_at is None and row.publish_attempts == 1 and row.last_error

    channel = await amqp.channel()
    exchange = await channel.declare_exchange(missing, aio_pika.ExchangeType.TOPIC, auto_delete=True)
    queue = await channel.declare_queue("", exclusive=True)
    await queue.bind(exchange, "#")
    # the publishing channel was closed by the failure; the robust connection reopens it
    for _ in range(50):
        if await relay.publish_pending() == 1:
            break
        await asyncio.sleep(0.1)
    async with db.connect() as conn:
        assert await unpublished_count(conn) == 0
    assert decode((await get_message(queue)).body)[1].task_id == 1

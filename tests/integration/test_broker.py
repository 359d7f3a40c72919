"""RabbitMQ topology, publisher confirms, manual acks and dead-lettering, against the real broker."""
from __future__ import annotations

import asyncio

import aio_pika
import pytest

from common.broker import QUEUES, Broker
from common.messages import Envelope, TaskEvent, TaskEventType, wrap
from common.settings import Settings
from tests.conftest import get_message

QUEUE = QUEUES[0].name  # task-executor.task-events


def _event(task_id: int = 1) -> Envelope:
    return wrap(TaskEventType.REGISTERED,
                TaskEvent(task_id=task_id, status="registered", priority=1, resource_type="cpu"))


@pytest.fixture
async def broker(settings: Settings) -> Broker:
    b = Broker(settings)
    await b.connect()
    yield b
    await b.close()


async def test_topology_is_durable_quorum_with_dead_letter(broker: Broker,
                                                          amqp: aio_pika.abc.AbstractConnection) -> None:
    """RabbitMQ accepts a redeclaration only with the very same arguments (else 406 PRECONDITION_FAILED): the
    arguments every queue really has are proven by what it accepts and refuses."""
    limit = broker.settings.delivery_limit
    for spec in QUEUES:
        name = broker.topology.queue(spec.name)
        expected = {"x-queue-type": "quorum", "x-delivery-limit": limit,
                    "x-dead-letter-exchange": broker.topology.dead_letter_exchange,
                    "x-dead-letter-routing-key": name}
        channel = await amqp.channel()
        await channel.declare_queue(name, durable=True, arguments=expected)  # accepted: exactly these
        for wrong in ({"x-delivery-limit": limit + 1}, {"x-dead-letter-exchange": "elsewhere"},
                      {"x-queue-type": "classic"}):
            channel = await amqp.channel()
            with pytest.raises(aio_pika.exceptions.ChannelPreconditionFailed):
                await channel.declare_queue(name, durable=True, arguments={**expected, **wrong})
        channel = await amqp.channel()
        await channel.declare_queue(broker.topology.dead_letter_queue(spec.name), durable=True,
                                    arguments={"x-queue-type": "quorum",
                                               "x-max-length": broker.settings.dead_letter_max_messages,
                                               "x-max-length-bytes": broker.settings.dead_letter_max_bytes,
                                               "x-overflow": "drop-head"})
        await channel.declare_queue(broker.topology.retry_queue(name), durable=True,
                                    arguments={"x-queue-type": "quorum", "x-dead-letter-exchange": "",
                                               "x-dead-letter-routing-key": name})
    channel = await amqp.channel()
    for name in broker.topology.all_exchanges():
        await channel.declare_exchange(name, passive=True)
    # a second process declaring the same topology is accepted (idempotent)
    second = Broker(broker.settings)
    await second.connect()
    assert second.is_connected
    await second.close()


async def test_published_event_is_persistent_and_routed(broker: Broker, amqp: aio_pika.abc.AbstractConnection) -> None:
    envelope = _event(42)
    await broker.publish(broker.topology.exchange("tasks"), TaskEventType.REGISTERED, envelope)
    queue = await (await amqp.channel()).get_queue(broker.topology.queue(QUEUE))
    message = await get_message(queue)
    assert message.delivery_mode == aio_pika.DeliveryMode.PERSISTENT
    assert message.message_id == str(envelope.message_id)
    assert Envelope.model_validate_json(message.body) == envelope


async def test_unroutable_publish_raises_instead_of_vanishing(broker: Broker) -> None:
    with pytest.raises(aio_pika.exceptions.DeliveryError):
        await broker.publish(broker.topology.exchange("tasks"), "nobody.listens", _event())


async def test_consumer_acks_good_dead_letters_poison_and_repeated_failures(
    broker: Broker, amqp: aio_pika.abc.AbstractConnection
) -> None:
    handled: list[int] = []
    attempts: dict[int, int] = {}
    done = asyncio.Event()

    async def handler(envelope: Envelope, payload: object, message: object) -> None:
        assert isinstance(payload, TaskEvent)
        attempts[payload.task_id] = attempts.get(payload.task_id, 0) + 1
        if payload.task_id == 13:
            raise RuntimeError("this task always breaks its handler")
        handled.append(payload.task_id)
        if payload.task_id == 2:
            done.set()

    channel = await amqp.channel()
    exchange = await channel.get_exchange(broker.topology.exchange("tasks"))
    await exchange.publish(aio_pika.Message(b"{not json"), routing_key="task.registered")
    await broker.publish(exchange.name, "task.registered", _event(13))
    await broker.publish(exchange.name, "task.registered", _event(1))
    await broker.publish(exchange.name, "task.registered", _event(2))

    await broker.consume(broker.topology.queue(QUEUE), handler)
    await asyncio.wait_for(done.wait(), timeout=10)

    dlq = await channel.get_queue(broker.topology.dead_letter_queue(QUEUE))
    dead = {m.body for m in [await get_message(dlq), await get_message(dlq)]}
    assert b"{not json" in dead
    (poison,) = dead - {b"{not json"}
    assert Envelope.model_validate_json(poison).payload["task_id"] == 13
    assert handled == [1, 2]
    # delivery limit 2 in the test settings: the failing message was tried, retried, then dead-lettered
    assert attempts[13] == 3
    main_queue = await channel.declare_queue(broker.topology.queue(QUEUE), passive=True)
    assert main_queue.declaration_result.message_count == 0


async def test_dead_letter_queues_are_bounded(settings: Settings, amqp: aio_pika.abc.AbstractConnection) -> None:
    """Issue 21, finding 8: dead-letter queues had no length limit (a flood of junk grew one without bound). Now
    each holds at most WMS_DEAD_LETTER_MAX_MESSAGES (and _BYTES): beyond, the oldest are dropped, and the
    limit is a metric the alert rule compares the depth with."""
    from common.broker import DEAD_LETTER_LIMIT
    from common.messages import BadMessage

    bounded = settings.model_copy(update={"dead_letter_max_messages": 3})
    broker = Broker(bounded)
    await broker.connect()
    seen: list[int] = []

    async def poison(envelope: Envelope, payload: object, message: object) -> None:
        assert isinstance(payload, TaskEvent)
        seen.append(payload.task_id)
        raise BadMessage("never processable")

    try:
        await broker.consume(broker.topology.queue(QUEUE), poison)
        for task_id in range(1, 7):
            await broker.publish(broker.topology.exchange("tasks"), "task.registered", _event(task_id))
        for _ in range(200):
            if len(seen) == 6:
                break
            await asyncio.sleep(0.05)
        assert sorted(seen) == [1, 2, 3, 4, 5, 6]
        channel = await amqp.channel()
        dlq = await channel.declare_queue(broker.topology.dead_letter_queue(QUEUE), passive=True)
        for _ in range(40):  # dead-lettering is asynchronous
            if dlq.declaration_result.message_count >= 3:
                break
            await asyncio.sleep(0.05)
            dlq = await channel.declare_queue(broker.topology.dead_letter_queue(QUEUE), passive=True)
        await asyncio.sleep(0.5)
        dlq = await channel.declare_queue(broker.topology.dead_letter_queue(QUEUE), passive=True)
        assert dlq.declaration_result.message_count == 3
        kept = sorted([Envelope.model_validate_json((await get_message(dlq, no_ack=True)).body).payload["task_id"]
                       for _ in range(3)])
        assert kept == [4, 5, 6]  # the oldest went first (quorum queues drop the head: see common.broker)
        assert DEAD_LETTER_LIMIT.labels(queue=broker.topology.dead_letter_queue(QUEUE))._value.get() == 3
    finally:
        await broker.close()


async def test_a_dead_letter_queue_declared_before_its_bound_is_kept(
    settings: Settings, amqp: aio_pika.abc.AbstractConnection, amqp_url: str, caplog: pytest.LogCaptureFixture
) -> None:
    """A deployment whose dead-letter queues were declared without a bound (an older version) still connects: the
    queue is kept as it is (RabbitMQ cannot change a queue's arguments) and a warning names the policy that bounds
    it (wms-broker-setup --apply sets it)."""
    import logging
    import uuid

    from common.broker import Topology
    from tests.conftest import delete_namespace

    namespace = f"t-{uuid.uuid4().hex[:10]}"
    old = Topology(namespace)
    channel = await amqp.channel()
    await channel.declare_queue(old.dead_letter_queue(QUEUE), durable=True, arguments={"x-queue-type": "quorum"})
    caplog.set_level(logging.WARNING)
    broker = Broker(settings.model_copy(update={"broker_namespace": namespace}))
    try:
        await broker.connect()
        assert broker.is_connected
        assert any("dead-letter queue without this bound" in r.getMessage() for r in caplog.records)
    finally:
        await broker.close()
        await delete_namespace(amqp_url, namespace)

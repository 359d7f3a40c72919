"""RabbitMQ: the whole topology in one place, publishing with confirms, consuming with manual acks.

Every queue is a durable quorum queue with a delivery limit and a dead-letter queue, so a poison message ends
in ``<queue>.dlq`` instead of a retry loop. Each queue is declared here and nowhere else (redeclaring with other
arguments kills the channel).
"""
from __future__ import annotations

import asyncio
import datetime as dt
import logging
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

import aio_pika
from aio_pika.abc import AbstractChannel, AbstractExchange, AbstractIncomingMessage, AbstractRobustConnection

from common.messages import BadMessage, Envelope, decode
from common.settings import Settings

log = logging.getLogger("wms.broker")


@dataclass(frozen=True)
class QueueSpec:
    name: str  # without the namespace
    exchange: str  # without the namespace
    routing_keys: tuple[str, ...]


# Exchanges (all topic, durable) and the queues bound to them. Names get the deployment's namespace prefix.
EXCHANGES: tuple[str, ...] = ("tasks", "jobs", "pilots")
QUEUES: tuple[QueueSpec, ...] = (
    # Task changes for the task-executor (generation starts, stops, follows priority).
    QueueSpec("task-executor.task-events", "tasks", ("task.#",)),
    # Generated job chunks for the job-manager to register.
    QueueSpec("job-manager.job-chunks", "jobs", ("jobs.chunk",)),
    # Registered, ready jobs for the job-executor (routing key jobs.ready.<resource type>).
    QueueSpec("job-executor.ready-jobs", "jobs", ("jobs.ready.#",)),
    # Task commands the job-executor carries to jobs (cancel, pause, resume, priority).
    QueueSpec("job-executor.task-events", "tasks", ("task.#",)),
    # Pilots in message-queue mode: claims from the cpu or gpu queue, everything else as pilot events.
    QueueSpec("job-executor.claims.cpu", "pilots", ("pilot.claim.cpu",)),
    QueueSpec("job-executor.claims.gpu", "pilots", ("pilot.claim.gpu",)),
    QueueSpec("job-executor.pilot-events", "pilots",
              ("pilot.register", "pilot.heartbeat", "pilot.report", "pilot.exit")),
)
DEAD_LETTER_EXCHANGE = "dlx"
CLOSE_TIMEOUT_S = 5.0


@dataclass(frozen=True)
class Topology:
    namespace: str

    def exchange(self, name: str) -> str:
        return f"{self.namespace}.{name}"

    def queue(self, name: str) -> str:
        return f"{self.namespace}.{name}"

    def dead_letter_queue(self, name: str) -> str:
        return f"{self.queue(name)}.dlq"

    @property
    def dead_letter_exchange(self) -> str:
        return self.exchange(DEAD_LETTER_EXCHANGE)

    def all_exchanges(self) -> list[str]:
        return [self.exchange(e) for e in (*EXCHANGES, DEAD_LETTER_EXCHANGE)]

    def all_queues(self) -> list[str]:
        return [n for q in QUEUES for n in (self.queue(q.name), self.dead_letter_queue(q.name))]


async def declare_topology(channel: AbstractChannel, topology: Topology, delivery_limit: int) -> None:
    dlx = await channel.declare_exchange(topology.dead_letter_exchange, aio_pika.ExchangeType.DIRECT, durable=True)
    for name in EXCHANGES:
        await channel.declare_exchange(topology.exchange(name), aio_pika.ExchangeType.TOPIC, durable=True)
    for spec in QUEUES:
        queue_name = topology.queue(spec.name)
        dlq = await channel.declare_queue(
            topology.dead_letter_queue(spec.name), durable=True, arguments={"x-queue-type": "quorum"}
        )
        await dlq.bind(dlx, routing_key=queue_name)
        queue = await channel.declare_queue(
            queue_name,
            durable=True,
            arguments={
                "x-queue-type": "quorum",
                "x-delivery-limit": delivery_limit,
                "x-dead-letter-exchange": topology.dead_letter_exchange,
                "x-dead-letter-routing-key": queue_name,
            },
        )
        for key in spec.routing_keys:
            await queue.bind(topology.exchange(spec.exchange), routing_key=key)


MessageHandler = Callable[[Envelope, object, AbstractIncomingMessage], Awaitable[None]]


class Broker:
    """One robust connection per process; a confirming channel for publishing, one channel per consumer."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.topology = Topology(settings.broker_namespace)
        self._connection: AbstractRobustConnection | None = None
        self._publish_channel: AbstractChannel | None = None
        self._exchanges: dict[str, AbstractExchange] = {}
        self._consumer_channels: list[AbstractChannel] = []

    async def connect(self) -> None:
        self._connection = await aio_pika.connect_robust(self.settings.amqp_url)
        # on_return_raises: an unroutable (mandatory) message is an error, not a silent drop.
        self._publish_channel = await self._connection.channel(publisher_confirms=True, on_return_raises=True)
        await declare_topology(self._publish_channel, self.topology, self.settings.delivery_limit)

    @property
    def is_connected(self) -> bool:
        return (
            self._connection is not None
            and not self._connection.is_closed
            and self._publish_channel is not None
            and not self._publish_channel.is_closed
        )

    async def close(self) -> None:
        # aio-pika's close of a robust connection can hang (pending confirms, reconnect in progress): a process
        # that is shutting down must not wait for it forever.
        if self._connection is not None:
            try:
                await asyncio.wait_for(self._connection.close(), timeout=CLOSE_TIMEOUT_S)
            except TimeoutError:
                log.warning("broker connection did not close in time; abandoned")
        self._connection = self._publish_channel = None
        self._exchanges.clear()
        self._consumer_channels.clear()

    async def open_channel(self, publisher_confirms: bool = False) -> AbstractChannel:
        """A channel of its own for a short operation (closing it requeues whatever it left unacked)."""
        assert self._connection is not None, "Broker.connect() first"
        return await self._connection.channel(publisher_confirms=publisher_confirms,
                                              on_return_raises=publisher_confirms)

    async def queue_depths(self) -> dict[str, int]:
        """Messages waiting in each queue and dead-letter queue of the topology (by namespaced name)."""
        channel = await self.open_channel()
        try:
            return {name: (await channel.declare_queue(name, passive=True)).declaration_result.message_count
                    for name in self.topology.all_queues()}
        finally:
            await channel.close()

    async def _exchange(self, name: str) -> AbstractExchange:
        if name not in self._exchanges:
            assert self._publish_channel is not None, "Broker.connect() first"
            self._exchanges[name] = await self._publish_channel.get_exchange(name, ensure=False)
        return self._exchanges[name]

    async def publish(self, exchange: str, routing_key: str, envelope: Envelope) -> None:
        """Publish persistently and wait for the broker's confirm; raises on nack, return or timeout."""
        await self.publish_raw(
            exchange, routing_key, envelope.model_dump_json().encode(), envelope.message_id, envelope.type,
            envelope.created_at,
        )

    async def publish_raw(
        self,
        exchange: str,
        routing_key: str,
        body: bytes,
        message_id: uuid.UUID,
        message_type: str,
        created_at: dt.datetime | None = None,
    ) -> None:
        """Publish an already serialized envelope (the outbox relay's path: no re-validation)."""
        message = aio_pika.Message(
            body=body,
            content_type="application/json",
            delivery_mode=aio_pika.DeliveryMode.PERSISTENT,
            message_id=str(message_id),
            type=message_type,
            timestamp=created_at,
        )
        target = await self._exchange(exchange)
        # aio-pika can hang on a dead connection: never wait for a confirm without a bound.
        await asyncio.wait_for(
            target.publish(message, routing_key=routing_key, mandatory=True),
            timeout=self.settings.publish_timeout_s,
        )

    async def reply(self, request: AbstractIncomingMessage, envelope: Envelope) -> None:
        """Answer a request on its reply_to queue (default exchange). A requester that is gone is not an error
        of ours: the reply is dropped with a warning."""
        assert self._publish_channel is not None, "Broker.connect() first"
        message = aio_pika.Message(
            body=envelope.model_dump_json().encode(),
            content_type="application/json",
            correlation_id=request.correlation_id,
            message_id=str(envelope.message_id),
            type=envelope.type,
        )
        try:
            await asyncio.wait_for(
                self._publish_channel.default_exchange.publish(message, routing_key=request.reply_to or "",
                                                               mandatory=True),
                timeout=self.settings.publish_timeout_s,
            )
        except aio_pika.exceptions.DeliveryError:
            log.warning("reply to a vanished requester dropped", extra={"reply_to": request.reply_to})

    async def consume(self, queue_name: str, handler: MessageHandler, prefetch: int = 100) -> None:
        """Consume ``queue_name`` (namespaced) with manual acks.

        A message that does not decode, or that the handler finds can never be processed (it raises
        BadMessage), is rejected without requeue: dead-lettered at once. Any other handler error requeues it;
        the queue's delivery limit dead-letters it after repeated failures.
        """
        assert self._connection is not None, "Broker.connect() first"
        channel = await self._connection.channel()
        await channel.set_qos(prefetch_count=prefetch)
        self._consumer_channels.append(channel)
        queue = await channel.get_queue(queue_name, ensure=False)

        async def on_message(message: AbstractIncomingMessage) -> None:
            try:
                envelope, payload = decode(message.body)
            except BadMessage as exc:
                log.error("dead-lettering bad message", extra={"queue": queue_name, "reason": str(exc)})
                await message.reject(requeue=False)
                return
            try:
                await handler(envelope, payload, message)
            except BadMessage as exc:
                log.error("dead-lettering unprocessable message",
                          extra={"queue": queue_name, "message_id": str(envelope.message_id), "reason": str(exc)})
                await message.reject(requeue=False)
                return
            except Exception:
                log.exception("handler failed; requeued", extra={"queue": queue_name, "message_id": str(envelope.message_id)})
                await message.nack(requeue=True)
                return
            await message.ack()

        await queue.consume(on_message)

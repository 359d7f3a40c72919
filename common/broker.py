"""RabbitMQ: the whole topology in one place, publishing with confirms, consuming with manual acks, and a
connection that comes back by itself.

Every queue is a durable quorum queue with a delivery limit and a dead-letter queue, so a poison message ends
in ``<queue>.dlq`` instead of a retry loop; a dead-letter queue is bounded (WMS_DEAD_LETTER_MAX_MESSAGES and
_BYTES: beyond, the oldest are dropped). A handler that fails because a dependency is down (database, DSM,
broker: :func:`common.failures.is_transient`) is not a poison: its message goes to ``<queue>.parked`` with a
per-message TTL (growing with each retry) and comes back to the queue when it expires, without spending the
delivery limit. Each queue is declared here and nowhere else (redeclaring with other arguments kills the
channel).

The connection is supervised here rather than by aio-pika's robust connection (which does not restore
consumers of queues it did not declare itself): on any loss of the connection or of one of its channels, the
whole connection is rebuilt with backoff, the topology declared again and every consumer subscribed again.
The broker counts as ready only while that is done.
"""
from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import functools
import hashlib
import logging
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from urllib.parse import urlsplit

import aio_pika
from aio_pika.abc import AbstractChannel, AbstractExchange, AbstractIncomingMessage
from prometheus_client import Gauge

from common.failures import BrokerUnavailable, backoff_s, is_transient
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
    # Task commands the job-executor carries to jobs (cancel, pause, resume, priority).
    QueueSpec("job-executor.task-events", "tasks", ("task.#",)),
    # Pilots in message-queue mode: claims from the cpu or gpu queue, everything else as pilot events.
    QueueSpec("job-executor.claims.cpu", "pilots", ("pilot.claim.cpu",)),
    QueueSpec("job-executor.claims.gpu", "pilots", ("pilot.claim.gpu",)),
    QueueSpec("job-executor.pilot-events", "pilots",
              ("pilot.register", "pilot.heartbeat", "pilot.report", "pilot.exit", "pilot.exchange", "pilot.lost")),
)
DEAD_LETTER_EXCHANGE = "dlx"
CLOSE_TIMEOUT_S = 5.0
CONNECT_TIMEOUT_S = 10.0
FIRST_CONNECT_WAIT_S = 30.0
RECONNECT_FIRST_DELAY_S = 0.2
# Header counting a message's trips through its retry queue (transient failures), not its deliveries.
RETRY_HEADER = "wms-retries"


@dataclass(frozen=True)
class Topology:
    namespace: str

    def exchange(self, name: str) -> str:
        return f"{self.namespace}.{name}"

    def queue(self, name: str) -> str:
        return f"{self.namespace}.{name}"

    def dead_letter_queue(self, name: str) -> str:
        return f"{self.queue(name)}.dlq"

    @staticmethod
    def retry_queue(queue_name: str) -> str:
        """The retry queue of a (namespaced) queue."""
        return f"{queue_name}.parked"

    @property
    def dead_letter_exchange(self) -> str:
        return self.exchange(DEAD_LETTER_EXCHANGE)

    def all_exchanges(self) -> list[str]:
        return [self.exchange(e) for e in (*EXCHANGES, DEAD_LETTER_EXCHANGE)]

    def all_queues(self) -> list[str]:
        return [n for q in QUEUES for n in (self.queue(q.name), self.dead_letter_queue(q.name),
                                            self.retry_queue(self.queue(q.name)))]


def dead_letter_bounds(settings: Settings) -> dict[str, int | str]:
    """The arguments (and, for wms-broker-setup's policy, the same values) that bound a dead-letter queue.
    drop-head: once full, the oldest dead letter is dropped for each new one. (reject-publish would keep the
    first ones, but a quorum queue does not apply it to dead letters, which reach it without a publisher:
    measured on RabbitMQ 3.10, the queue grew past its bound.)"""
    return {"max-length": settings.dead_letter_max_messages, "max-length-bytes": settings.dead_letter_max_bytes,
            "overflow": "drop-head"}


DEAD_LETTER_LIMIT = Gauge("wms_queue_max_messages", "How many messages a queue may hold (its length bound)",
                          ["queue"])


async def declare_topology(connection: aio_pika.abc.AbstractConnection, topology: Topology,
                           settings: Settings) -> None:
    channel = await connection.channel()
    dlx = await channel.declare_exchange(topology.dead_letter_exchange, aio_pika.ExchangeType.DIRECT, durable=True)
    for name in EXCHANGES:
        await channel.declare_exchange(topology.exchange(name), aio_pika.ExchangeType.TOPIC, durable=True)
    bounds = {f"x-{key}": value for key, value in dead_letter_bounds(settings).items()}
    for spec in QUEUES:
        queue_name = topology.queue(spec.name)
        dlq_name = topology.dead_letter_queue(spec.name)
        try:
            dlq = await channel.declare_queue(dlq_name, durable=True, arguments={"x-queue-type": "quorum", **bounds})
        except aio_pika.exceptions.ChannelPreconditionFailed:
            # declared before with other bounds (or none, by an older version): RabbitMQ cannot change a queue's
            # arguments; a policy can bound it (wms-broker-setup --apply sets one)
            log.warning("dead-letter queue without this bound", extra={
                "queue": dlq_name, "bound": bounds, "remedy": "wms-broker-setup --apply (a policy) or delete the "
                "empty queue"})
            channel = await connection.channel()
            dlq = await channel.declare_queue(dlq_name, passive=True)
        DEAD_LETTER_LIMIT.labels(queue=dlq_name).set(settings.dead_letter_max_messages)
        await dlq.bind(dlx, routing_key=queue_name)
        queue = await channel.declare_queue(
            queue_name,
            durable=True,
            arguments={
                "x-queue-type": "quorum",
                "x-delivery-limit": settings.delivery_limit,
                "x-dead-letter-exchange": topology.dead_letter_exchange,
                "x-dead-letter-routing-key": queue_name,
            },
        )
        for key in spec.routing_keys:
            await queue.bind(topology.exchange(spec.exchange), routing_key=key)
        # A parking place for messages whose handler met an outage: each waits its own TTL, then is
        # dead-lettered back to the queue through the default exchange. A quorum queue like the others (3.10
        # expires per-message TTLs in quorum queues): on a cluster, no queue of ours lives on one node only.
        # (Before, a classic '<queue>.retry': one left by an older version still returns what it parked, and
        # stays empty after.)
        await channel.declare_queue(
            topology.retry_queue(queue_name),
            durable=True,
            arguments={"x-queue-type": "quorum", "x-dead-letter-exchange": "",
                       "x-dead-letter-routing-key": queue_name},
        )
    await channel.close()


REASON_LOGGED = 500  # characters of a refusal's reason in the log (a validation error quotes its input)
MessageHandler = Callable[[Envelope, object, AbstractIncomingMessage], Awaitable[None]]


@dataclass
class Consumer:
    queue: str  # namespaced
    handler: MessageHandler
    prefetch: int
    max_bytes: int | None = None  # a larger message is dead-lettered unread (the pilots' channel)


def message_digest(body: bytes) -> dict[str, object]:
    """What the log says of a message it refuses: its size, sha256 and first bytes, never the whole of it."""
    return {"bytes": len(body), "sha256": hashlib.sha256(body).hexdigest(), "head": repr(body[:64])}


# 1 while this process's broker connection is up with its topology and consumers (its /readyz says the same)
BROKER_CONNECTED = Gauge("wms_broker_connected", "This process's broker connection is up and subscribed")


def broker_urls(setting: str) -> list[str]:
    """WMS_AMQP_URL: one node's URL, or a cluster's, separated by commas."""
    urls = [url.strip() for url in setting.split(",") if url.strip()]
    if not urls:
        raise ValueError("WMS_AMQP_URL names no broker")
    return urls


class Broker:
    """One supervised connection per process: a confirming channel for publishing, one channel per consumer.

    ``connect`` starts the supervisor and waits (bounded) for the first connection; a service whose broker is
    down at start-up runs, not ready, until it is back. Consumers registered with ``consume`` are subscribed on
    every (re)connection.
    """

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.topology = Topology(settings.broker_namespace)
        self._connection: aio_pika.abc.AbstractConnection | None = None
        self._publish_channel: AbstractChannel | None = None
        self._exchanges: dict[str, AbstractExchange] = {}
        self._consumers: list[Consumer] = []
        self._ready = asyncio.Event()
        self._lost = asyncio.Event()
        self._subscribing = asyncio.Lock()
        self._supervisor: asyncio.Task[None] | None = None
        self._closing = False
        self.connections = 0  # how many times a connection was (re)established

    async def connect(self, wait_s: float = FIRST_CONNECT_WAIT_S) -> None:
        if self._supervisor is None:
            self._supervisor = asyncio.create_task(self._supervise(), name="broker-supervisor")
        try:
            await asyncio.wait_for(asyncio.shield(self._ready.wait()), wait_s)
        except TimeoutError:
            log.warning("broker not reachable yet; the service runs not ready and keeps trying",
                        extra={"wait_s": wait_s})

    @property
    def is_connected(self) -> bool:
        """Connected, topology declared and every consumer subscribed."""
        return self._ready.is_set()

    def health(self) -> str:
        if self._ready.is_set():
            return "ok"
        return "down: reconnecting" if self._consumers else "down"

    async def wait_ready(self, timeout: float) -> bool:
        try:
            await asyncio.wait_for(asyncio.shield(self._ready.wait()), timeout)
            return True
        except TimeoutError:
            return False

    def _on_closed(self, *_args: object) -> None:
        if not self._closing and not self._lost.is_set():
            log.warning("broker connection or channel lost; reconnecting")
        self._lost.set()

    async def _supervise(self) -> None:
        delay = RECONNECT_FIRST_DELAY_S
        urls = broker_urls(self.settings.amqp_url)
        attempt = 0
        while not self._closing:
            connection = None
            # a cluster: each (re)connection tries the next node, so a stopped node is left at once
            url = urls[attempt % len(urls)]
            attempt += 1
            try:
                self._lost.clear()
                connection = await aio_pika.connect(url, timeout=CONNECT_TIMEOUT_S)
                connection.close_callbacks.add(self._on_closed)
                # on_return_raises: an unroutable (mandatory) message is an error, not a silent drop.
                await declare_topology(connection, self.topology, self.settings)
                publish = await connection.channel(publisher_confirms=True, on_return_raises=True)
                publish.close_callbacks.add(self._on_closed)
                async with self._subscribing:
                    self._connection, self._publish_channel, self._exchanges = connection, publish, {}
                    for consumer in self._consumers:
                        await self._subscribe(consumer)
                    self.connections += 1
                    self._ready.set()
                    BROKER_CONNECTED.set(1)
                log.info("broker connected", extra={"connections": self.connections, "node": urlsplit(url).netloc
                                                    .rpartition("@")[2], "consumers": len(self._consumers)})
                delay = RECONNECT_FIRST_DELAY_S
                await self._lost.wait()
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                if not self._closing:
                    log.warning("broker connection failed; retrying",
                                extra={"error": f"{type(exc).__name__}: {exc}", "retry_in_s": delay})
            finally:
                self._ready.clear()
                BROKER_CONNECTED.set(0)
                self._connection = self._publish_channel = None
                self._exchanges = {}
                if connection is not None and not connection.is_closed:
                    with contextlib.suppress(Exception):
                        await asyncio.wait_for(connection.close(), CLOSE_TIMEOUT_S)
            if self._closing:
                break
            if attempt % len(urls):  # more nodes to try in this round: at once
                continue
            await asyncio.sleep(delay)
            delay = min(delay * 2, self.settings.broker_reconnect_max_s)

    async def close(self) -> None:
        self._closing = True
        self._lost.set()
        if self._supervisor is not None:
            try:
                await asyncio.wait_for(asyncio.shield(self._supervisor), CLOSE_TIMEOUT_S + 1)
            except (TimeoutError, Exception):
                # aio-pika's close can hang (pending confirms): a process shutting down must not wait forever.
                log.warning("broker connection did not close in time; abandoned")
                self._supervisor.cancel()
                with contextlib.suppress(asyncio.CancelledError, Exception):
                    await self._supervisor
            self._supervisor = None

    def _require_connection(self) -> aio_pika.abc.AbstractConnection:
        if self._connection is None or self._connection.is_closed or not self._ready.is_set():
            raise BrokerUnavailable("the broker connection is down (reconnecting)")
        return self._connection

    async def open_channel(self, publisher_confirms: bool = False) -> AbstractChannel:
        """A channel of its own for a short operation (closing it requeues whatever it left unacked)."""
        return await self._require_connection().channel(publisher_confirms=publisher_confirms,
                                                        on_return_raises=publisher_confirms)

    async def queue_depths(self) -> dict[str, int]:
        """Messages waiting in each queue, dead-letter and retry queue of the topology (by namespaced name)."""
        channel = await self.open_channel()
        try:
            return {name: (await channel.declare_queue(name, passive=True)).declaration_result.message_count or 0
                    for name in self.topology.all_queues()}
        finally:
            await channel.close()

    async def _exchange(self, name: str) -> AbstractExchange:
        self._require_connection()
        if name not in self._exchanges:
            assert self._publish_channel is not None
            self._exchanges[name] = await self._publish_channel.get_exchange(name, ensure=False)
        return self._exchanges[name]

    async def publish(self, exchange: str, routing_key: str, envelope: Envelope) -> None:
        """Publish persistently and wait for the broker's confirm; raises on nack, return, timeout or outage."""
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

    async def reply(self, request: AbstractIncomingMessage, envelope: Envelope) -> bool:
        """Answer a request on its reply_to queue (default exchange). A requester that is gone is not an error
        of ours: the reply is dropped with a warning, and False says so (what it carried never arrived)."""
        self._require_connection()
        assert self._publish_channel is not None
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
            return False
        return True

    async def consume(self, queue_name: str, handler: MessageHandler, prefetch: int = 100,
                      max_bytes: int | None = None) -> None:
        """Consume ``queue_name`` (namespaced) with manual acks, now and after every reconnection.

        A message that does not decode, or that the handler finds can never be processed (it raises
        BadMessage), is rejected without requeue: dead-lettered at once. A handler that meets an outage
        (:func:`is_transient`) sends the message to the retry queue with a growing delay. Any other handler error
        requeues it; the queue's delivery limit dead-letters it after repeated failures. A message larger than
        ``max_bytes`` is dead-lettered without being decoded. A refused message is logged as a digest, never whole.
        """
        consumer = Consumer(queue_name, handler, prefetch, max_bytes)
        async with self._subscribing:
            self._consumers.append(consumer)
            if self._ready.is_set():
                await self._subscribe(consumer)

    async def _subscribe(self, consumer: Consumer) -> None:
        assert self._connection is not None
        channel = await self._connection.channel()
        channel.close_callbacks.add(self._on_closed)
        await channel.set_qos(prefetch_count=consumer.prefetch)
        queue = await channel.get_queue(consumer.queue, ensure=False)  # declared by declare_topology
        await queue.consume(functools.partial(self._deliver, consumer))

    async def _deliver(self, consumer: Consumer, message: AbstractIncomingMessage) -> None:
        queue_name = consumer.queue
        if consumer.max_bytes is not None and len(message.body) > consumer.max_bytes:
            log.error("dead-lettering oversized message", extra={
                "queue": queue_name, "max_bytes": consumer.max_bytes, **message_digest(message.body)})
            await _settle(message.reject(requeue=False))
            return
        try:
            envelope, payload = decode(message.body)
        except BadMessage as exc:
            log.error("dead-lettering bad message", extra={
                "queue": queue_name, "reason": str(exc)[:REASON_LOGGED], **message_digest(message.body)})
            await _settle(message.reject(requeue=False))
            return
        try:
            await consumer.handler(envelope, payload, message)
        except BadMessage as exc:
            log.error("dead-lettering unprocessable message",
                      extra={"queue": queue_name, "message_id": str(envelope.message_id),
                             "reason": str(exc)[:REASON_LOGGED], **message_digest(message.body)})
            await _settle(message.reject(requeue=False))
            return
        except Exception as exc:
            if is_transient(exc):
                await self._retry_later(consumer, message, exc)
            else:
                log.exception("handler failed; requeued",
                              extra={"queue": queue_name, "message_id": str(envelope.message_id)})
                await _settle(message.nack(requeue=True))
            return
        await _settle(message.ack())

    async def _retry_later(self, consumer: Consumer, message: AbstractIncomingMessage, exc: Exception) -> None:
        """Park the message in the queue's retry queue for a growing delay, then ack it here (an outage is not
        the message's fault). If even that fails, the broker itself is in trouble: requeue."""
        headers = {k: v for k, v in (message.headers or {}).items() if not k.startswith("x-")}
        previous = headers.get(RETRY_HEADER, 0)
        retries = (previous if isinstance(previous, int) else 0) + 1
        delay = backoff_s(retries, self.settings.transient_retry_base_s, self.settings.transient_retry_max_s)
        copy = aio_pika.Message(
            body=message.body, headers={**headers, RETRY_HEADER: retries}, content_type=message.content_type,
            delivery_mode=aio_pika.DeliveryMode.PERSISTENT, message_id=message.message_id, type=message.type,
            timestamp=message.timestamp, correlation_id=message.correlation_id, reply_to=message.reply_to,
            expiration=delay,
        )
        try:
            self._require_connection()
            assert self._publish_channel is not None
            await asyncio.wait_for(
                self._publish_channel.default_exchange.publish(
                    copy, routing_key=self.topology.retry_queue(consumer.queue), mandatory=True),
                timeout=self.settings.publish_timeout_s,
            )
        except Exception:
            log.warning("outage in handler and the retry queue is unreachable; requeued",
                        extra={"queue": consumer.queue, "message_id": message.message_id})
            await _settle(message.nack(requeue=True))
            return
        await _settle(message.ack())
        log.warning("handler met an outage; message retried later",
                    extra={"queue": consumer.queue, "message_id": message.message_id, "retries": retries,
                           "delay_s": delay, "error": f"{type(exc).__name__}: {exc}"})


async def _settle(settlement: Awaitable[object]) -> None:
    """Ack/nack/reject on a channel that may have died meanwhile: the broker then requeues the delivery
    itself, so there is nothing more to do here."""
    try:
        await settlement
    except Exception as exc:
        log.warning("could not settle a delivery (channel gone; the broker requeues it)",
                    extra={"error": f"{type(exc).__name__}: {exc}"})

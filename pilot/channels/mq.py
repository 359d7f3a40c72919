"""RabbitMQ channel of the pilot: requests on the pilots exchange (registration and exchanges, protocol 2), answers
on an exclusive reply queue matched by correlation id. The reply queue is named after the pilot's credential
(common.pilot_protocol.reply_queue_prefix): the only name the job-executor answers for it.

The connection is the pilot's own and is rebuilt on demand: any failure (broker down, connection or channel
lost, no answer in time) drops it and is reported as an outage; the next call connects again, with a new reply
queue. A reply that arrives for a request given up on is ignored; claims carry a request id, so the job such a
lost reply announced is handed out again to the retried claim.
"""
from __future__ import annotations

import asyncio
import contextlib
import uuid
from typing import Any

import aio_pika
from aio_pika.abc import AbstractIncomingMessage

from common.messages import BadMessage, PilotCall, PilotReply, decode, wrap
from common.pilot_protocol import (
    ExchangeReply,
    ExchangeRequest,
    PilotLost,
    PilotRegistration,
    PilotSession,
    new_reply_queue_name,
)
from common.retry_after import seconds_of
from pilot.channels import ChannelRefused, ChannelUnavailable

CLOSE_TIMEOUT_S = 5.0


class MqChannel:
    """``amqp_url``: one broker node, or a cluster's nodes separated by commas: each new connection (after one was
    lost or refused) goes to the next node."""

    def __init__(self, amqp_url: str, namespace: str, token: str, timeout_s: float) -> None:
        self.urls = [url.strip() for url in amqp_url.split(",") if url.strip()]
        if not self.urls:
            raise ValueError("no broker URL")
        self._next_url = 0
        self.namespace, self.exchange_name, self.timeout_s = namespace, f"{namespace}.pilots", timeout_s
        self.token = token  # the pilot's credential: every request carries it, as over REST
        self.pilot_id: int | None = None
        self._session: str | None = None
        self._pending: dict[str, asyncio.Future[PilotReply]] = {}
        self._connection: aio_pika.abc.AbstractConnection | None = None
        self._connecting = asyncio.Lock()

    async def _connect(self) -> None:
        async with self._connecting:
            if self._connection is not None and not self._connection.is_closed:
                return
            url = self.urls[self._next_url % len(self.urls)]
            self._next_url += 1  # the next connection, if this one fails or is lost, goes to the next node
            connection = await aio_pika.connect(url, timeout=self.timeout_s)
            try:
                channel = await connection.channel(publisher_confirms=True, on_return_raises=True)
                self._exchange = await channel.get_exchange(self.exchange_name, ensure=False)
                self._replies = await channel.declare_queue(new_reply_queue_name(self.namespace, self.token),
                                                            exclusive=True, auto_delete=True)
                await self._replies.consume(self._on_reply, no_ack=True)
            except BaseException:
                with contextlib.suppress(Exception):
                    await asyncio.wait_for(connection.close(), CLOSE_TIMEOUT_S)
                raise
            self._connection = connection

    async def _drop(self) -> None:
        connection, self._connection = self._connection, None
        if connection is not None and not connection.is_closed:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(connection.close(), CLOSE_TIMEOUT_S)

    async def _on_reply(self, message: AbstractIncomingMessage) -> None:
        future = self._pending.pop(message.correlation_id or "", None)
        if future is None or future.done():
            return  # the answer to a request given up on
        try:
            _, reply = decode(message.body)
        except BadMessage as exc:
            future.set_exception(ChannelUnavailable(f"undecodable reply: {exc}"))
            return
        if not isinstance(reply, PilotReply):
            future.set_exception(ChannelUnavailable(f"not a reply: {type(reply).__name__}"))
            return
        future.set_result(reply)

    async def _call(self, op: str, wait_s: float = 0.0, **fields: Any) -> PilotReply:
        """``wait_s``: how long the job-executor may hold the answer (a long poll), on top of the timeout."""
        call = PilotCall(credential=self.token, pilot_id=self.pilot_id, session=self._session, **fields)
        correlation_id = str(uuid.uuid4())
        envelope = wrap(op, call)
        try:
            await self._connect()
            future: asyncio.Future[PilotReply] = asyncio.get_running_loop().create_future()
            self._pending[correlation_id] = future
            message = aio_pika.Message(
                body=envelope.model_dump_json().encode(), content_type="application/json", type=op,
                message_id=str(envelope.message_id), correlation_id=correlation_id,
                reply_to=self._replies.name, delivery_mode=aio_pika.DeliveryMode.PERSISTENT,
            )
            await asyncio.wait_for(self._exchange.publish(message, routing_key=op, mandatory=True), self.timeout_s)
            reply = await asyncio.wait_for(future, self.timeout_s + wait_s)
        except ChannelUnavailable:
            raise
        except (aio_pika.exceptions.AMQPError, ConnectionError, OSError, TimeoutError, RuntimeError) as exc:
            # broker down, connection or channel lost, or no answer in time: rebuild on the next call
            await self._drop()
            raise ChannelUnavailable(f"{type(exc).__name__}: {exc}") from exc
        finally:
            self._pending.pop(correlation_id, None)
        if reply.status >= 500 or reply.status == 429:  # unavailable, or too busy for us now: both mean "later"
            raise ChannelUnavailable(f"{reply.status}: {reply.detail}",
                                     seconds_of((reply.body or {}).get("retry_after_s")))
        if reply.status >= 300:
            raise ChannelRefused(reply.status, reply.detail)
        return reply

    async def register(self, registration: PilotRegistration) -> PilotSession:
        reply = await self._call("pilot.register", registration=registration)
        session = PilotSession.model_validate(reply.body)
        self.pilot_id, self._session = session.pilot_id, session.session
        return session

    async def exchange(self, request: ExchangeRequest) -> ExchangeReply:
        reply = await self._call("pilot.exchange", wait_s=request.wait_s, exchange=request)
        return ExchangeReply.model_validate(reply.body)

    async def exit(self) -> None:
        await self._call("pilot.exit")

    def resume(self, pilot_id: int, session: str) -> None:
        """Speak for a pilot registered earlier (its daemon, with the session the application left it)."""
        self.pilot_id, self._session = pilot_id, session

    async def lost(self, reason: str) -> None:
        """The pilot application died holding jobs: they are retried at once."""
        await self._call("pilot.lost", lost=PilotLost(reason=reason))

    async def close(self) -> None:
        await self._drop()

"""RabbitMQ channel of the pilot: requests on the pilots exchange (claims to the gpu or cpu queue), answers on
an exclusive reply queue matched by correlation id."""
from __future__ import annotations

import asyncio
import uuid

import aio_pika
from aio_pika.abc import AbstractIncomingMessage

from common.messages import PilotCall, PilotReply, decode, wrap
from common.pilot_protocol import Heartbeat, HeartbeatReply, JobReport, JobSpec, PilotRegistration, PilotSession
from pilot.channels import ChannelRefused


class MqChannel:
    def __init__(self, amqp_url: str, namespace: str, timeout_s: float) -> None:
        self.amqp_url, self.exchange_name, self.timeout_s = amqp_url, f"{namespace}.pilots", timeout_s
        self.pilot_id: int | None = None
        self._session: str | None = None
        self._pending: dict[str, asyncio.Future[PilotReply]] = {}
        self.resource_type = "cpu"

    async def connect(self) -> None:
        self._connection = await aio_pika.connect_robust(self.amqp_url)
        self._channel = await self._connection.channel(publisher_confirms=True, on_return_raises=True)
        self._exchange = await self._channel.get_exchange(self.exchange_name, ensure=False)
        self._replies = await self._channel.declare_queue("", exclusive=True, auto_delete=True)
        await self._replies.consume(self._on_reply, no_ack=True)

    async def _on_reply(self, message: AbstractIncomingMessage) -> None:
        future = self._pending.pop(message.correlation_id or "", None)
        if future is not None and not future.done():
            _, reply = decode(message.body)
            future.set_result(reply)  # type: ignore[arg-type]

    async def _call(self, op: str, **fields: object) -> PilotReply:
        call = PilotCall(pilot_id=self.pilot_id, session=self._session, **fields)
        correlation_id = str(uuid.uuid4())
        future: asyncio.Future[PilotReply] = asyncio.get_running_loop().create_future()
        self._pending[correlation_id] = future
        envelope = wrap(op, call)
        message = aio_pika.Message(
            body=envelope.model_dump_json().encode(), content_type="application/json", type=op,
            message_id=str(envelope.message_id), correlation_id=correlation_id,
            reply_to=self._replies.name, delivery_mode=aio_pika.DeliveryMode.PERSISTENT,
        )
        try:
            await asyncio.wait_for(self._exchange.publish(message, routing_key=op, mandatory=True), self.timeout_s)
            reply = await asyncio.wait_for(future, self.timeout_s)
        finally:
            self._pending.pop(correlation_id, None)
        if reply.status >= 300:
            raise ChannelRefused(reply.status, reply.detail)
        return reply

    async def register(self, registration: PilotRegistration) -> PilotSession:
        if not hasattr(self, "_connection"):
            await self.connect()
        reply = await self._call("pilot.register", registration=registration)
        session = PilotSession.model_validate(reply.body)
        self.pilot_id, self._session = session.pilot_id, session.session
        self.resource_type = registration.resource_type
        return session

    async def claim(self) -> JobSpec | None:
        reply = await self._call(f"pilot.claim.{self.resource_type}")
        return None if reply.status == 204 else JobSpec.model_validate(reply.body)

    async def heartbeat(self, beat: Heartbeat) -> HeartbeatReply:
        return HeartbeatReply.model_validate((await self._call("pilot.heartbeat", heartbeat=beat)).body)

    async def report(self, job_id: int, report: JobReport) -> None:
        await self._call("pilot.report", job_id=job_id, report=report)

    async def exit(self) -> None:
        await self._call("pilot.exit")

    async def close(self) -> None:
        if hasattr(self, "_connection"):
            await self._connection.close()

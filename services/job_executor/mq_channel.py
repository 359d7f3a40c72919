"""The pilot conversation over RabbitMQ: request/reply on the pilots exchange.

A pilot publishes ``pilot.claim.<cpu|gpu>`` (taken from the cpu or gpu claims queue) and ``pilot.register``,
``pilot.heartbeat``, ``pilot.report``, ``pilot.exit``, ``pilot.exchange`` (the pilot-events queue; its daemon
``pilot.lost``), each with reply_to and a correlation id; the answer carries the same status codes as the REST API.
The request is acknowledged once the claim (or report) is committed and the reply published: a running job is tracked
by its heartbeats in PostgreSQL, never by an unacknowledged delivery. A request redelivered after a crash is answered
again: claims carry the pilot's request id (the same job comes back), reports are fenced and repeat-safe. A database
outage is answered 503, which the pilot retries.
"""
from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from typing import Any

from aio_pika.abc import AbstractIncomingMessage
from pydantic import BaseModel, ValidationError

from common.broker import Broker
from common.failures import is_transient
from common.messages import BadMessage, Envelope, PilotCall, PilotReply, wrap
from common.observability import observe_message
from common.pilot_protocol import is_reply_queue_of
from services.job_executor.attempts import ReportRefused
from services.job_executor.credentials import NotAPilotToken, PilotCredentials
from services.job_executor.exchange import Exchanges
from services.job_executor.exchange_codec import ExchangeReply, reply_as_builtins, request_of
from services.job_executor.pilot_sessions import PilotRefused, PilotSessions, TooManyRegistrations
from services.job_executor.refusals import REPORT_REFUSED_STATUS, TOO_MANY_REGISTRATIONS_STATUS, refusal_status
from services.job_executor.single_calls import SingleCalls

log = logging.getLogger("wms.job_executor.mq")
SERVICE = "job-executor"


class PilotMqChannel:
    def __init__(self, broker: Broker, sessions: PilotSessions, exchanges: Exchanges, single_calls: SingleCalls,
                 credentials: PilotCredentials) -> None:
        self.broker, self.sessions, self.exchanges, self.credentials = broker, sessions, exchanges, credentials
        self.single_calls = single_calls

    async def start(self) -> None:
        topology = self.broker.topology
        # a pilot's message is bounded (WMS_PILOT_MAX_MESSAGE_BYTES): a larger one is dead-lettered unread and
        # logged as a digest
        limit = self.sessions.settings.pilot_max_message_bytes
        for queue in ("job-executor.claims.cpu", "job-executor.claims.gpu"):
            await self.broker.consume(topology.queue(queue), self._on_request, prefetch=50, max_bytes=limit)
        # exchanges may wait for work (long poll): room for every pilot's request at once
        await self.broker.consume(topology.queue("job-executor.pilot-events"), self._on_request, prefetch=1000,
                                  max_bytes=limit)

    async def _on_request(self, envelope: Envelope, call: object, message: AbstractIncomingMessage) -> None:
        if not isinstance(call, PilotCall) or not message.reply_to:
            raise BadMessage(f"not a pilot request with reply_to: {envelope.type}")
        if not is_reply_queue_of(message.reply_to, self.broker.topology.namespace, call.credential):
            # answers go only to a reply queue of the request's own credential: never a service's queue, nor a
            # pilot's of another credential
            raise BadMessage(f"reply_to {message.reply_to[:200]!r} is not a reply queue of the request's credential")
        with observe_message(SERVICE, envelope.type):
            reply = await self._answer(envelope.type, call)
        if not await self.broker.reply(message, wrap("pilot.reply", reply)) and call.pilot_id is not None:
            # the pilot has gone (its reply queue went with its connection): what the answer carried is given
            # back at once instead of waiting for its heartbeat timeout
            carried = jobs_carried(envelope.type, reply)
            if carried:
                await self.exchanges.give_back(call.pilot_id, carried, "the answer carrying the job could not be "
                                               "delivered: the pilot had gone")

    async def _exchange(self, call: PilotCall) -> ExchangeReply:
        return await self.exchanges.exchange(_need(call.pilot_id), call.session, request_of(_need(call.exchange)))

    async def _answer(self, op: str, call: PilotCall) -> PilotReply:
        try:
            grant = await self.credentials.grant_for(call.credential) if call.credential else None
        except NotAPilotToken as exc:
            return PilotReply(status=403, detail=str(exc))
        except Exception as exc:
            if not is_transient(exc):
                raise
            return PilotReply(status=503, detail="database unavailable, retry later")
        if grant is None:
            return PilotReply(status=401, detail="missing, unknown or revoked pilot credential")
        handlers: dict[str, Callable[[], Awaitable[BaseModel | ExchangeReply | None]]] = {
            "pilot.register": lambda: self.sessions.register(_need(call.registration), channel="mq", grant=grant),
            "pilot.claim.cpu": lambda: self.single_calls.claim(_need(call.pilot_id), call.session, call.request_id),
            "pilot.claim.gpu": lambda: self.single_calls.claim(_need(call.pilot_id), call.session, call.request_id),
            "pilot.heartbeat": lambda: self.single_calls.heartbeat(_need(call.pilot_id), call.session,
                                                                 _need(call.heartbeat)),
            "pilot.report": lambda: self.single_calls.report(_need(call.pilot_id), call.session, _need(call.job_id),
                                                           _need(call.report)),
            "pilot.exit": lambda: self.sessions.pilot_exit(_need(call.pilot_id), call.session),
            "pilot.exchange": lambda: self._exchange(call),
            "pilot.lost": lambda: self.exchanges.pilot_lost(_need(call.pilot_id), call.session,
                                                            _need(call.lost).reason),
        }
        handler = handlers.get(op)
        if handler is None:
            return PilotReply(status=400, detail=f"unknown operation {op}")
        try:
            result = await handler()
        except PilotRefused as exc:
            return PilotReply(status=refusal_status(exc), detail=exc.detail)
        except TooManyRegistrations as exc:
            return PilotReply(status=TOO_MANY_REGISTRATIONS_STATUS, detail=str(exc),
                              body={"retry_after_s": exc.retry_after_s})
        except ReportRefused as exc:
            return PilotReply(status=REPORT_REFUSED_STATUS, detail=exc.detail,
                              body={"current_state": exc.current_state})
        except (ValidationError, ValueError) as exc:
            return PilotReply(status=422, detail=str(exc))
        except Exception as exc:
            if not is_transient(exc):
                raise
            # the database is unavailable: the pilot retries (with the same request id for a claim), exactly
            # as a REST pilot does on a 503
            log.warning("pilot request met an outage", extra={"operation": op, "error": f"{type(exc).__name__}"})
            return PilotReply(status=503, detail="database unavailable, retry later")
        body: dict[str, Any] | None = (result.model_dump(mode="json") if isinstance(result, BaseModel)
                                       else reply_as_builtins(result) if isinstance(result, ExchangeReply) else None)
        status = 204 if result is None and (op.startswith("pilot.claim") or op == "pilot.lost") else 200
        return PilotReply(status=status, body=body)


def jobs_carried(op: str, reply: PilotReply) -> list[tuple[int, int]]:
    """(job, attempt) of the jobs an answer hands to its pilot."""
    if reply.status != 200 or reply.body is None:
        return []
    if op == "pilot.exchange":
        return [(int(j["job_id"]), int(j["attempt"])) for j in reply.body.get("jobs", [])]
    if op.startswith("pilot.claim"):
        return [(int(reply.body["job_id"]), int(reply.body["attempt"]))]
    return []


def _need(value: Any) -> Any:
    if value is None:
        raise ValueError("a required field of the request is missing")
    return value

"""What every WMS service with a broker runs on: the database engine, the broker connection, the outbox relay,
its background loops, and their orderly shutdown (loops finish their round, then the broker and the database
are closed, then whatever the service registered to close)."""
from __future__ import annotations

import asyncio
import inspect
import logging
from collections.abc import Awaitable, Callable

from fastapi import FastAPI
from sqlalchemy.ext.asyncio import AsyncEngine

from common import background
from common.broker import Broker
from common.db.session import create_engine
from common.outbox import OutboxRelay
from common.settings import Settings

log = logging.getLogger("wms.runtime")


class ServiceRuntime:
    """``async with ServiceRuntime(app, "job-manager") as runtime:`` inside a FastAPI lifespan.

    On entry: engine, connected broker (topology declared) and a running outbox relay, also published on
    ``app.state`` (engine, broker) for routes and health checks. ``run`` starts more background loops,
    ``close_later`` registers a resource of the service's own to close on exit.
    """

    def __init__(self, app: FastAPI, service: str) -> None:
        self.app, self.service = app, service
        self.settings: Settings = app.state.settings
        self.engine: AsyncEngine = create_engine(self.settings)
        self.broker = Broker(self.settings)
        self.relay = OutboxRelay(self.engine, self.broker, self.settings.outbox_batch_size,
                                 self.settings.outbox_poll_interval_s, self.settings.outbox_retry_max_s)
        self._running: list[tuple[background.Loop, asyncio.Task[None]]] = []
        self._closers: list[Callable[[], Awaitable[None] | None]] = []

    async def __aenter__(self) -> ServiceRuntime:
        try:
            await self.broker.connect()
        except BaseException:
            await self.engine.dispose()
            raise
        self.app.state.engine, self.app.state.broker = self.engine, self.broker
        self.run(self.relay.loop)
        log.info(f"{self.service} started", extra={"broker_namespace": self.settings.broker_namespace})
        return self

    def run(self, *loops: background.Loop) -> None:
        self._running += background.start(*loops)

    def close_later(self, closer: Callable[[], Awaitable[None] | None]) -> None:
        self._closers.append(closer)

    async def __aexit__(self, *_exc: object) -> None:
        await background.stop(self._running)
        for closer in reversed(self._closers):
            result = closer()
            if inspect.isawaitable(result):
                await result
        await self.broker.close()
        await self.engine.dispose()
        log.info(f"{self.service} stopped")

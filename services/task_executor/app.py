"""task-executor application: the generation loop, its outbox relay, task events as wake-ups, health, metrics."""
from __future__ import annotations

import contextlib
import logging
from collections.abc import AsyncIterator

from aio_pika.abc import AbstractIncomingMessage
from fastapi import FastAPI

from common import background
from common.broker import Broker
from common.db.session import create_engine
from common.dsm import DsmClient
from common.messages import Envelope
from common.observability import add_health_routes, instrument, observe_message, run_service
from common.outbox import OutboxRelay
from common.settings import Settings
from services.task_executor.generation import ChunkGenerator, GenerationLoop

SERVICE = "task-executor"
log = logging.getLogger("wms.task_executor")


@contextlib.asynccontextmanager
async def lifespan(app: FastAPI) -> AsyncIterator[None]:
    settings: Settings = app.state.settings
    engine = create_engine(settings)
    broker = Broker(settings)
    await broker.connect()
    dsm = DsmClient(settings.dsm_url, settings.service_token, settings.dsm_timeout_s)
    relay = OutboxRelay(engine, broker, settings.outbox_batch_size, settings.outbox_poll_interval_s)
    generator = ChunkGenerator(engine, dsm, broker.topology, settings, relay.wake)
    loop = GenerationLoop(engine, generator, settings)

    async def on_task_event(envelope: Envelope, _payload: object, _message: AbstractIncomingMessage) -> None:
        # The task row is the truth; the event only says "look now" (so duplicates are harmless).
        with observe_message(SERVICE, "task-events"):
            loop.wake()

    await broker.consume(broker.topology.queue("task-executor.task-events"), on_task_event)
    running = background.start(relay.loop, loop.loop)
    app.state.engine, app.state.broker, app.state.loop = engine, broker, loop
    log.info("task-executor started", extra={"broker_namespace": settings.broker_namespace})
    try:
        yield
    finally:
        await background.stop(running)
        generator.close()
        await broker.close()
        await dsm.close()
        await engine.dispose()
        log.info("task-executor stopped")


def create_app(settings: Settings | None = None) -> FastAPI:
    app = FastAPI(title="SPD WMS task-executor", version="1", lifespan=lifespan)
    app.state.settings = settings or Settings()
    instrument(app, SERVICE)
    add_health_routes(app, lambda: {"broker": "ok" if app.state.broker.is_connected else "down"})
    return app


def main() -> None:
    settings = Settings()
    run_service(create_app(settings), SERVICE, settings, settings.task_executor_port)

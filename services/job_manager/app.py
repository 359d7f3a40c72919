"""job-manager application: consumes job chunks, registers them, relays 'jobs ready' events, serves metadata."""
from __future__ import annotations

import contextlib
import logging
from collections.abc import AsyncIterator

from aio_pika.abc import AbstractIncomingMessage
from fastapi import FastAPI

from common import background
from common.broker import Broker
from common.db.session import create_engine
from common.messages import Envelope, JobChunk, BadMessage
from common.observability import add_health_routes, instrument, map_error, observe_message, run_service
from common.outbox import OutboxRelay
from common.settings import Settings
from common.states import RowNotFound
from services.job_manager.api import router
from services.job_manager.registration import ChunkRegistrar

SERVICE = "job-manager"
log = logging.getLogger("wms.job_manager")


@contextlib.asynccontextmanager
async def lifespan(app: FastAPI) -> AsyncIterator[None]:
    settings: Settings = app.state.settings
    engine = create_engine(settings)
    broker = Broker(settings)
    await broker.connect()
    relay = OutboxRelay(engine, broker, settings.outbox_batch_size, settings.outbox_poll_interval_s)
    running = background.start(relay.loop)
    registrar = ChunkRegistrar(engine, broker.topology, on_committed=relay.wake)

    async def on_chunk(envelope: Envelope, chunk: object, _: AbstractIncomingMessage) -> None:
        if not isinstance(chunk, JobChunk):
            raise BadMessage(f"job-manager expects {JobChunk.__name__}, got {envelope.type}")
        with observe_message(SERVICE, "job-chunks"):
            job_ids = await registrar.register(envelope, chunk)
        log.info("chunk registered" if job_ids else "chunk already registered",
                 extra={"task_id": chunk.task_id, "jobs": len(job_ids), "message_id": str(envelope.message_id)})

    # Chunks are large: a modest prefetch keeps memory bounded while COPY keeps each one short.
    await broker.consume(broker.topology.queue("job-manager.job-chunks"), on_chunk, prefetch=8)
    app.state.engine, app.state.broker = engine, broker
    log.info("job-manager started", extra={"broker_namespace": settings.broker_namespace})
    try:
        yield
    finally:
        await background.stop(running)
        await broker.close()
        await engine.dispose()
        log.info("job-manager stopped")


def create_app(settings: Settings | None = None) -> FastAPI:
    app = FastAPI(title="SPD WMS job-manager (internal)", version="1", lifespan=lifespan)
    app.state.settings = settings or Settings()
    app.include_router(router)
    instrument(app, SERVICE)
    add_health_routes(app, lambda: {"broker": "ok" if app.state.broker.is_connected else "down"})
    map_error(app, RowNotFound, 404)
    return app


def main() -> None:
    settings = Settings()
    run_service(create_app(settings), SERVICE, settings, settings.job_manager_port)

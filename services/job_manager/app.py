"""job-manager application: consumes job chunks, registers them, relays 'jobs ready' events, serves metadata."""
from __future__ import annotations

import contextlib
import logging
from collections.abc import AsyncIterator

from aio_pika.abc import AbstractIncomingMessage
from fastapi import FastAPI

from common.api_docs import document_errors, operation_name
from common.messages import BadMessage, Envelope, JobChunk
from common.observability import add_health_routes, instrument, map_error, observe_message, run_service
from common.runtime import ServiceRuntime
from common.settings import Settings
from common.states import RowNotFound
from services.job_manager.api import router
from services.job_manager.registration import ChunkRegistrar

SERVICE = "job-manager"
log = logging.getLogger("wms.job_manager")


@contextlib.asynccontextmanager
async def lifespan(app: FastAPI) -> AsyncIterator[None]:
    async with ServiceRuntime(app, SERVICE) as runtime:
        registrar = ChunkRegistrar(runtime.engine)

        async def on_chunk(envelope: Envelope, chunk: object, _: AbstractIncomingMessage) -> None:
            if not isinstance(chunk, JobChunk):
                raise BadMessage(f"job-manager expects {JobChunk.__name__}, got {envelope.type}")
            with observe_message(SERVICE, "job-chunks"):
                job_ids = await registrar.register(envelope, chunk)
            log.info("chunk registered" if job_ids else "chunk already registered",
                     extra={"task_id": chunk.task_id, "jobs": len(job_ids), "message_id": str(envelope.message_id)})

        # Chunks are large: a modest prefetch keeps memory bounded while COPY keeps each one short.
        await runtime.broker.consume(runtime.broker.topology.queue("job-manager.job-chunks"), on_chunk, prefetch=8)
        yield


def create_app(settings: Settings | None = None) -> FastAPI:
    app = FastAPI(title="SPD WMS job-manager (internal)", version="1", lifespan=lifespan,
                  generate_unique_id_function=operation_name)
    app.state.settings = settings or Settings()
    app.include_router(router)
    instrument(app, SERVICE)
    document_errors(app)
    add_health_routes(app, lambda: {"broker": app.state.broker.health()})
    map_error(app, RowNotFound, 404)
    return app


def main() -> None:
    settings = Settings()
    run_service(create_app(settings), SERVICE, settings, settings.job_manager_port)

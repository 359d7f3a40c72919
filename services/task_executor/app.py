"""task-executor application: the generation loop, its outbox relay, task events as wake-ups, health, metrics."""
from __future__ import annotations

import contextlib
import logging
from collections.abc import AsyncIterator

from aio_pika.abc import AbstractIncomingMessage
from fastapi import FastAPI

from common.api_docs import document_errors, operation_name
from common.dsm import DsmClient
from common.messages import Envelope
from common.observability import add_health_routes, instrument, observe_message, run_service
from common.runtime import ServiceRuntime
from common.settings import Settings
from services.task_executor.generation import ChunkGenerator, GenerationLoop

SERVICE = "task-executor"
log = logging.getLogger("wms.task_executor")


@contextlib.asynccontextmanager
async def lifespan(app: FastAPI) -> AsyncIterator[None]:
    async with ServiceRuntime(app, SERVICE) as runtime:
        settings = runtime.settings
        dsm = DsmClient(settings.dsm_url, settings.service_token, settings.dsm_timeout_s)
        runtime.close_later(dsm.close)
        generator = ChunkGenerator(runtime.engine, dsm, runtime.broker.topology, settings, runtime.relay.wake)
        runtime.close_later(generator.close)
        loop = GenerationLoop(runtime.engine, generator, settings)

        async def on_task_event(envelope: Envelope, _payload: object, _message: AbstractIncomingMessage) -> None:
            # The task row is the truth; the event only says "look now" (so duplicates are harmless).
            with observe_message(SERVICE, "task-events"):
                loop.wake()

        await runtime.broker.consume(runtime.broker.topology.queue("task-executor.task-events"), on_task_event)
        runtime.run(loop.loop)
        app.state.loop = loop
        yield


def create_app(settings: Settings | None = None) -> FastAPI:
    app = FastAPI(title="SPD WMS task-executor", version="1", lifespan=lifespan,
                  generate_unique_id_function=operation_name)
    app.state.settings = settings or Settings()
    instrument(app, SERVICE)
    document_errors(app)
    add_health_routes(app, lambda: {"broker": app.state.broker.health()})
    return app


def main() -> None:
    settings = Settings()
    run_service(create_app(settings), SERVICE, settings, settings.task_executor_port)

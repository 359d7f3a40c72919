"""task-manager application: factory, lifespan (database, broker, outbox relay), error mapping, health."""
from __future__ import annotations

import contextlib
import logging
from collections.abc import AsyncIterator
from pathlib import Path

from fastapi import FastAPI

from common.api_docs import document_errors, operation_name
from common.dsm import DsmClient
from common.observability import add_health_routes, instrument, map_error, run_service
from common.runtime import ServiceRuntime
from common.settings import Settings
from common.states import IllegalTransition, RowNotFound
from services.task_manager import credentials_api, monitor_api, operations_api
from services.task_manager.api import router
from services.task_manager.dead_letters import DeadLetterNotFound, UnknownQueue
from services.task_manager.lifecycle import (
    NotTaskOwner,
    OutputDatasetTaken,
    PayloadRefused,
    PayloadResolver,
    RequestIdReused,
    TaskEnded,
    TaskLifecycle,
)
from services.task_manager.quality_view import QualityView
from services.task_manager.transformations import Transformations

SERVICE = "task-manager"
log = logging.getLogger("wms.task_manager")


@contextlib.asynccontextmanager
async def lifespan(app: FastAPI) -> AsyncIterator[None]:
    async with ServiceRuntime(app, SERVICE) as runtime:
        settings = runtime.settings
        dsm = DsmClient(settings.dsm_url, settings.service_token, settings.dsm_timeout_s)
        runtime.close_later(dsm.close)
        app.state.lifecycle = TaskLifecycle(runtime.engine, runtime.broker.topology, on_committed=runtime.relay.wake,
                                            payloads=PayloadResolver(app.state.transformations,
                                                                     settings.allow_arbitrary_commands),
                                            dsm=dsm)
        yield


def create_app(settings: Settings | None = None) -> FastAPI:
    app = FastAPI(
        title="SPD WMS task-manager",
        version="1",
        description="Entry point of the WFMS: register, cancel, reprioritise, pause and resume tasks; "
        "progress, final reports and produced files.",
        lifespan=lifespan,
        generate_unique_id_function=operation_name,
    )
    app.state.settings = settings = settings or Settings()
    app.state.quality = QualityView(settings.storage_root)
    # read at creation, so a broken registry stops the service before it listens
    app.state.transformations = Transformations.load(
        Path(settings.transformations_file) if settings.transformations_file else None)
    if settings.allow_arbitrary_commands:
        log.warning("ARBITRARY COMMANDS ARE ON (WMS_ALLOW_ARBITRARY_COMMANDS=1): any wfms or operator token can "
                    "run any command on every worker node; a development switch, never for a shared farm")
    app.include_router(router)
    app.include_router(operations_api.router)
    app.include_router(credentials_api.router)
    app.include_router(monitor_api.router)
    app.include_router(monitor_api.pages)
    instrument(app, SERVICE)
    document_errors(app)
    add_health_routes(app, lambda: {"broker": app.state.broker.health()})
    map_error(app, RowNotFound, 404)
    map_error(app, UnknownQueue, 404)
    map_error(app, DeadLetterNotFound, 404)
    for conflict in (IllegalTransition, TaskEnded):
        map_error(app, conflict, 409, lambda exc: {"current_state": exc.current})
    map_error(app, RequestIdReused, 409, lambda exc: {"task_id": exc.task_id})
    map_error(app, PayloadRefused, 422)
    map_error(app, NotTaskOwner, 403)
    map_error(app, OutputDatasetTaken, 409, lambda exc: {"output_dataset": exc.dataset, "task_id": exc.task_id})
    return app


def main() -> None:
    settings = Settings()
    run_service(create_app(settings), SERVICE, settings, settings.task_manager_port)

"""pilot-factory application: the factory's cycle as a background loop, health and metrics."""
from __future__ import annotations

import contextlib
import logging
from collections.abc import AsyncIterator

from fastapi import FastAPI

from common import background
from common.api_docs import document_errors, operation_name
from common.background import Loop
from common.db.session import create_engine
from common.observability import add_health_routes, instrument, run_service
from services.pilot_factory.batch import load
from services.pilot_factory.factory import Factory
from services.pilot_factory.queues import load_queues
from services.pilot_factory.settings import FactorySettings

SERVICE = "pilot-factory"
log = logging.getLogger("wms.pilot_factory")


@contextlib.asynccontextmanager
async def lifespan(app: FastAPI) -> AsyncIterator[None]:
    settings: FactorySettings = app.state.settings
    queues = load_queues(settings.factory_queues_file)  # a broken file stops the factory with its reason
    systems = {name: load(name, settings) for name in sorted({q.batch_system for q in queues})}
    if not queues:
        log.warning("no site queues (WMS_FACTORY_QUEUES_FILE): the factory submits nothing")
    engine = create_engine(settings)
    factory = Factory(engine, settings, queues, systems)
    app.state.engine, app.state.factory = engine, factory
    running = background.start(Loop("factory", factory.run_once, settings.factory_interval_s))
    try:
        yield
    finally:
        await background.stop(running)
        await factory.close()
        await engine.dispose()


def create_app(settings: FactorySettings | None = None) -> FastAPI:
    app = FastAPI(title="SPD WMS pilot factory", version="1", lifespan=lifespan,
                  generate_unique_id_function=operation_name)
    app.state.settings = settings or FactorySettings()
    instrument(app, SERVICE)
    document_errors(app)
    add_health_routes(app, lambda: {})
    return app


def main() -> None:
    settings = FactorySettings()
    run_service(create_app(settings), SERVICE, settings, settings.factory_port)

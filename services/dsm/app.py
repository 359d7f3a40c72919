"""Reference DSM application: factory, lifespan, error mapping, health."""
from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator

from fastapi import FastAPI

from common.api_docs import document_errors, operation_name
from common.db.session import create_engine
from common.observability import add_health_routes, instrument, map_error, run_service
from common.settings import Settings
from services.dsm.api import router
from services.dsm.catalog import Catalog, CatalogConflict, UnknownDataset

SERVICE = "dsm"


@contextlib.asynccontextmanager
async def lifespan(app: FastAPI) -> AsyncIterator[None]:
    engine = create_engine(app.state.settings)
    app.state.engine = engine
    app.state.catalog = Catalog(engine)
    try:
        yield
    finally:
        await engine.dispose()


def create_app(settings: Settings | None = None) -> FastAPI:
    app = FastAPI(title="SPD reference DSM", version="1", lifespan=lifespan,
                  generate_unique_id_function=operation_name)
    app.state.settings = settings or Settings()
    app.include_router(router)
    instrument(app, SERVICE)
    document_errors(app)
    add_health_routes(app, lambda: {})
    map_error(app, UnknownDataset, 404)
    map_error(app, CatalogConflict, 409)
    return app


def main() -> None:
    settings = Settings()
    run_service(create_app(settings), SERVICE, settings, settings.dsm_port)

"""task-manager application: factory, lifespan (database, broker, outbox relay), error mapping, health."""
from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator

import sqlalchemy as sa
import uvicorn
from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse
from sqlalchemy.exc import DBAPIError, OperationalError

from common.broker import Broker
from common.db.session import create_engine
from common.observability import configure_logging, instrument
from common.outbox import OutboxRelay
from common.settings import Settings
from common.states import IllegalTransition, RowNotFound
from services.task_manager.api import router
from services.task_manager.lifecycle import RequestIdReused, TaskEnded, TaskLifecycle

SERVICE = "task-manager"
log = logging.getLogger("wms.task_manager")


@contextlib.asynccontextmanager
async def lifespan(app: FastAPI) -> AsyncIterator[None]:
    settings: Settings = app.state.settings
    if settings.uses_dev_tokens:
        log.warning("development API tokens are enabled: set WMS_API_TOKENS in production")
    engine = create_engine(settings)
    broker = Broker(settings)
    await broker.connect()
    relay = OutboxRelay(engine, broker, settings.outbox_batch_size, settings.outbox_poll_interval_s)
    relay_task = asyncio.create_task(relay.run(), name="outbox-relay")
    app.state.engine, app.state.broker, app.state.relay = engine, broker, relay
    app.state.lifecycle = TaskLifecycle(engine, broker.topology, on_committed=relay.wake)
    log.info("task-manager started", extra={"broker_namespace": settings.broker_namespace})
    try:
        yield
    finally:
        relay_task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await relay_task
        await broker.close()
        await engine.dispose()
        log.info("task-manager stopped")


def _error(status: int, detail: str, **extra: object) -> JSONResponse:
    return JSONResponse(status_code=status, content={"detail": detail, **extra})


def create_app(settings: Settings | None = None) -> FastAPI:
    app = FastAPI(
        title="SPD WMS task-manager",
        version="1",
        description="Entry point of the WFMS: register, cancel, reprioritise, pause and resume tasks; "
        "progress, final reports and produced files.",
        lifespan=lifespan,
    )
    app.state.settings = settings or Settings()
    app.include_router(router)
    instrument(app, SERVICE)

    @app.exception_handler(RowNotFound)
    async def not_found(_: Request, exc: RowNotFound) -> JSONResponse:
        return _error(404, str(exc))

    @app.exception_handler(IllegalTransition)
    async def illegal_transition(_: Request, exc: IllegalTransition) -> JSONResponse:
        return _error(409, str(exc), current_state=exc.current)

    @app.exception_handler(TaskEnded)
    async def task_ended(_: Request, exc: TaskEnded) -> JSONResponse:
        return _error(409, str(exc), current_state=exc.current)

    @app.exception_handler(RequestIdReused)
    async def request_id_reused(_: Request, exc: RequestIdReused) -> JSONResponse:
        return _error(409, str(exc), task_id=exc.task_id)

    @app.exception_handler(OperationalError)
    @app.exception_handler(DBAPIError)
    @app.exception_handler(OSError)
    async def database_unavailable(_: Request, exc: Exception) -> JSONResponse:
        log.error("database error", extra={"error": f"{type(exc).__name__}: {exc}"})
        return _error(503, "database unavailable, retry later")

    @app.get("/healthz", include_in_schema=False)
    async def healthz() -> dict[str, str]:
        return {"status": "ok"}

    @app.get("/readyz", include_in_schema=False)
    async def readyz(request: Request) -> JSONResponse:
        checks = {"database": "ok", "broker": "ok" if request.app.state.broker.is_connected else "down"}
        try:
            async with request.app.state.engine.connect() as conn:
                await asyncio.wait_for(conn.execute(sa.text("SELECT 1")), timeout=2)
        except Exception as exc:  # any failure means not ready
            checks["database"] = f"down: {type(exc).__name__}"
        ready = all(v == "ok" for v in checks.values())
        return JSONResponse(status_code=200 if ready else 503, content={"ready": ready, "checks": checks})

    return app


def main() -> None:
    settings = Settings()
    configure_logging(SERVICE, settings.log_level)
    uvicorn.run(
        create_app(settings),
        host=settings.listen_host,
        port=settings.task_manager_port,
        log_config=None,
        access_log=False,
    )


if __name__ == "__main__":
    main()

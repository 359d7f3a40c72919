"""What the HTTP side of every service shares: RED metrics per route, health and readiness, serving (with the
JSON logs of :mod:`common.jsonlog`)."""
from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from typing import Annotated, Any

import asyncpg
import sqlalchemy as sa
import uvicorn
from fastapi import Depends, FastAPI, Request, Response
from fastapi.responses import JSONResponse
from prometheus_client import CONTENT_TYPE_LATEST, Counter, Histogram, generate_latest
from sqlalchemy.exc import DBAPIError, OperationalError
from sqlalchemy.exc import TimeoutError as PoolTimeout

from common.db.session import Transaction
from common.failures import BrokerUnavailable
from common.jsonlog import configure_logging
from common.settings import Settings, refuse_well_known_secrets

HTTP_REQUESTS = Counter(
    "wms_http_requests_total", "HTTP requests by route and status", ["service", "method", "route", "status"]
)
HTTP_DURATION = Histogram(
    "wms_http_request_duration_seconds", "HTTP request duration by route", ["service", "method", "route"]
)

def instrument(app: FastAPI, service: str) -> None:
    """Add RED metrics (a plain ASGI middleware: BaseHTTPMiddleware costs a task group per request) and the
    /metrics route."""
    app.add_middleware(RequestLimitMiddleware, max_bytes=app.state.settings.max_request_bytes)
    app.add_middleware(RedMetricsMiddleware, service=service)

    @app.get("/metrics", include_in_schema=False)
    async def metrics() -> Response:
        return Response(generate_latest(), media_type=CONTENT_TYPE_LATEST)


class BodyTooLarge(Exception):
    pass


class RequestLimitMiddleware:
    """413 for a request body larger than ``max_bytes``, announced (Content-Length) or streamed: nobody makes a
    service buffer a body without bound. 422 for a NUL character in the path or the query (PostgreSQL text cannot
    hold one: it would otherwise surface as a database error)."""

    def __init__(self, app: Callable[..., Awaitable[None]], max_bytes: int) -> None:
        self.app, self.max_bytes = app, max_bytes

    async def __call__(self, scope: dict[str, Any], receive: Callable[[], Awaitable[dict[str, Any]]],
                       send: Callable[[dict[str, Any]], Awaitable[None]]) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        query = scope.get("query_string", b"")
        if "\x00" in scope.get("path", "") or b"%00" in query or b"\x00" in query:
            await _answer(send, 422, "NUL character in the URL")
            return
        announced = dict(scope.get("headers") or []).get(b"content-length")
        if announced is not None and announced.isdigit() and int(announced) > self.max_bytes:
            await self._refuse(send)
            return
        received = 0

        async def counting_receive() -> dict[str, Any]:
            nonlocal received
            message = await receive()
            received += len(message.get("body", b""))
            if received > self.max_bytes:
                raise BodyTooLarge
            return message

        try:
            await self.app(scope, counting_receive, send)
        except BodyTooLarge:
            await self._refuse(send)

    async def _refuse(self, send: Callable[[dict[str, Any]], Awaitable[None]]) -> None:
        await _answer(send, 413, f"request body larger than {self.max_bytes} bytes")


async def _answer(send: Callable[[dict[str, Any]], Awaitable[None]], status: int, detail: str) -> None:
    body = json.dumps({"detail": detail}).encode()
    await send({"type": "http.response.start", "status": status,
                "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]})
    await send({"type": "http.response.body", "body": body})


class RedMetricsMiddleware:
    def __init__(self, app: Callable[..., Awaitable[None]], service: str) -> None:
        self.app, self.service = app, service

    async def __call__(self, scope: dict[str, Any], receive: Callable[[], Awaitable[Any]],
                       send: Callable[[dict[str, Any]], Awaitable[None]]) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        start = time.perf_counter()
        status = 500

        async def send_with_status(message: dict[str, Any]) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, send_with_status)
        finally:
            # The route template, never the raw path: ids in paths would explode the label set.
            template = getattr(scope.get("route"), "path", "unmatched")
            method = scope.get("method", "")
            HTTP_REQUESTS.labels(self.service, method, template, str(status)).inc()
            HTTP_DURATION.labels(self.service, method, template).observe(time.perf_counter() - start)


async def _read_connection(request: Request) -> AsyncIterator[Transaction]:
    async with request.app.state.engine.connect() as conn:
        yield conn


# A route's database connection for reads (one per request, from the service's engine on app.state).
Conn = Annotated[Transaction, Depends(_read_connection)]


RETRY_AFTER_S = 2  # what a 503 tells clients to wait before asking again (Retry-After)


def error_response(status: int, detail: str, **extra: object) -> JSONResponse:
    headers = {"Retry-After": str(RETRY_AFTER_S)} if status == 503 else None
    # an extra without a value is left out: the Error schema types each field (a null would break it)
    content = {"detail": detail, **{name: value for name, value in extra.items() if value is not None}}
    return JSONResponse(status_code=status, content=content, headers=headers)


def add_health_routes(app: FastAPI, extra_checks: Callable[[], dict[str, str]]) -> None:
    """/healthz (the process answers) and /readyz (its database, plus ``extra_checks`` such as the broker).

    Also maps an unreachable database to 503 instead of a 500.
    """

    @app.get("/healthz", include_in_schema=False)
    async def healthz() -> dict[str, str]:
        return {"status": "ok"}

    @app.get("/readyz", include_in_schema=False)
    async def readyz(request: Request) -> JSONResponse:
        checks = {"database": "ok", **extra_checks()}
        try:
            async with request.app.state.engine.connect() as conn:
                await asyncio.wait_for(conn.execute(sa.text("SELECT 1")), timeout=2)
        except Exception as exc:  # any failure means not ready
            checks["database"] = f"down: {type(exc).__name__}"
        ready = all(v == "ok" for v in checks.values())
        return JSONResponse(status_code=200 if ready else 503, content={"ready": ready, "checks": checks})

    async def database_unavailable(_: Request, exc: Exception) -> JSONResponse:
        logging.getLogger("wms.http").error("database error", extra={"error": f"{type(exc).__name__}: {exc}"})
        return error_response(503, "database unavailable, retry later")

    async def broker_unavailable(_: Request, exc: Exception) -> JSONResponse:
        return error_response(503, "message broker unavailable, retry later")

    # TimeoutError: a statement or connect timeout (the database did not answer in time); asyncpg's own errors come
    # from the hot paths that run statements on the driver directly (common.db.session.driver_connection)
    for exc_type in (OperationalError, DBAPIError, OSError, TimeoutError, PoolTimeout, asyncpg.PostgresError,
                     asyncpg.InterfaceError):
        app.add_exception_handler(exc_type, database_unavailable)
    app.add_exception_handler(BrokerUnavailable, broker_unavailable)


def run_service(app: FastAPI, service: str, settings: Settings, port: int) -> None:
    """Serve ``app`` with JSON logs until SIGINT/SIGTERM (uvicorn shuts down gracefully)."""
    configure_logging(service, settings.log_level)
    refuse_well_known_secrets(settings)
    uvicorn.run(app, host=settings.listen_host, port=port, log_config=None, access_log=False)


MESSAGES = Counter("wms_messages_total", "Messages handled by consumer and outcome", ["service", "consumer", "outcome"])
MESSAGE_DURATION = Histogram("wms_message_duration_seconds", "Message handling duration", ["service", "consumer"])


@contextlib.contextmanager
def observe_message(service: str, consumer: str) -> Iterator[None]:
    """RED metrics of one message handled by a consumer."""
    start = time.perf_counter()
    outcome = "error"
    try:
        yield
        outcome = "ok"
    finally:
        MESSAGES.labels(service, consumer, outcome).inc()
        MESSAGE_DURATION.labels(service, consumer).observe(time.perf_counter() - start)


def map_error(
    app: FastAPI,
    exc_type: type[Exception],
    status: int | Callable[[Any], int],
    extra: Callable[[Any], dict[str, Any]] = lambda _exc: {},
) -> None:
    """Answer ``exc_type`` with ``status`` and ``{"detail": str(exc), **extra(exc)}`` (an async handler: a sync
    one would run in the thread pool)."""

    async def handler(_request: Request, exc: Exception) -> JSONResponse:
        code = status(exc) if callable(status) else status
        return error_response(code, str(exc), **extra(exc))

    app.add_exception_handler(exc_type, handler)

"""The async engine every service uses (asyncpg under SQLAlchemy Core)."""
from __future__ import annotations

import asyncio
import random
from collections.abc import Awaitable, Callable
from typing import Any, TypeAlias, TypeVar

import asyncpg
from prometheus_client import Gauge
from sqlalchemy import event
from sqlalchemy.exc import DBAPIError, DisconnectionError
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine, create_async_engine

from common.settings import Settings

# The names domain modules and routes use for a database and an open transaction: they pass them to their
# service's queries module and never build SQL themselves.
Database: TypeAlias = AsyncEngine
Transaction: TypeAlias = AsyncConnection


# Saturation of the database as a process sees it (the S of USE): connections in use against the pool's size; a
# pool always at its size makes requests wait for a connection.
POOL_IN_USE = Gauge("wms_db_pool_in_use", "Database connections checked out of this process's pools")
POOL_SIZE = Gauge("wms_db_pool_size", "Database connections this process's pools may hold")


def create_engine(settings: Settings) -> AsyncEngine:
    engine = create_async_engine(
        settings.database_url,
        pool_size=settings.db_pool_size,
        # No overflow: under load, connections opened beyond the pool and closed at check-in each cost a connect,
        # asyncpg's type introspection and a backend start; requests wait for a pooled one instead.
        max_overflow=0,
        # No ping at every checkout (a round trip per request on the dispatch path): a connection the server
        # closed (a restart) is known closed to asyncpg already, and _discard_closed replaces it at checkout
        # without a round trip; one that dies unnoticed fails its first statement (a 503 its client retries).
        pool_pre_ping=False,
        # A checkout waits at most this long for a free connection (then the caller sees an outage, not a hang).
        pool_timeout=settings.db_connect_timeout_s + settings.db_statement_timeout_s,
        # Statements of the hot paths are few and fixed; asyncpg's prepared-statement cache serves them.
        # Timeouts: connecting, and every statement both on the server (statement_timeout) and on the client
        # (command_timeout, which also covers a network partition where the server never answers).
        connect_args={
            "timeout": settings.db_connect_timeout_s,
            "command_timeout": settings.db_statement_timeout_s + 5,
            "server_settings": {
                "application_name": "spd-wms",
                "statement_timeout": str(int(settings.db_statement_timeout_s * 1000)),
            },
        },
    )
    POOL_SIZE.inc(settings.db_pool_size)
    event.listen(engine.sync_engine, "checkout", _discard_closed)
    event.listen(engine.sync_engine, "checkout", lambda *_: POOL_IN_USE.inc())
    event.listen(engine.sync_engine, "checkin", lambda *_: POOL_IN_USE.dec())
    return engine


def _discard_closed(dbapi_connection: Any, _record: Any, _proxy: Any) -> None:
    """A pooled connection whose server closed it (PostgreSQL restarted, an idle session was terminated) is not
    handed out: the pool drops it and checks out another, opening a fresh one if need be (issue 22: after a
    restart the first requests on such connections failed with 503 although the database was back)."""
    driver = getattr(dbapi_connection, "driver_connection", None)
    if driver is not None and driver.is_closed():
        raise DisconnectionError("the server closed this pooled connection")
    # A pooled connection is never inside a transaction: one that is (a task cancelled between a BEGIN and the
    # moment SQLAlchemy knew of it, so that no rollback came) would hold its locks for as long as it is reused.
    # Dropping it closes it, and the server ends the transaction and its locks.
    if driver is not None and driver.is_in_transaction():
        raise DisconnectionError("this pooled connection was left inside a transaction")


async def driver_connection(conn: AsyncConnection, first_statement: str) -> asyncpg.Connection:
    """The asyncpg connection under ``conn``, inside ``conn``'s transaction: the hot paths run their fixed statements
    on it directly (asyncpg prepares each once per connection), without SQLAlchemy's execution and result layers;
    anything else in the same transaction may still go through ``conn``. ``first_statement`` goes through SQLAlchemy,
    which begins its transaction (lazily, at its first statement) the way it always does, so that no raw statement
    runs outside it and commit and rollback stay SQLAlchemy's, even for a task cancelled in between."""
    await conn.exec_driver_sql(first_statement)
    fairy = await conn.get_raw_connection()
    driver: asyncpg.Connection = fairy.driver_connection
    return driver


T = TypeVar("T")
# deadlock_detected, serialization_failure: the transaction can simply run again.
TRANSIENT_SQLSTATES = {"40P01", "40001"}


def _sqlstate(exc: BaseException) -> str | None:
    cause = getattr(exc, "orig", None) or exc
    return getattr(cause, "sqlstate", None) or getattr(getattr(cause, "__cause__", None), "sqlstate", None)


async def retry_transient(transaction: Callable[[], Awaitable[T]], attempts: int = 5) -> T:
    """Run ``transaction`` again (with jitter) when PostgreSQL aborts it as a deadlock victim or on a
    serialization failure, instead of turning a normal race into a failed message."""
    for attempt in range(1, attempts + 1):
        try:
            return await transaction()
        except DBAPIError as exc:
            if attempt == attempts or _sqlstate(exc) not in TRANSIENT_SQLSTATES:
                raise
            await asyncio.sleep(random.uniform(0, 0.05 * attempt))
    raise AssertionError("unreachable")

"""One process of several at a time: leadership by a PostgreSQL session advisory lock.

The leader holds the lock on a connection of its own for as long as it leads; the lock goes with that
connection, so a leader that dies (or loses its database) frees it and another replica's next attempt takes it.
For work that must run in one replica at a time *continuously* (gauges one replica reports, a factory's
decisions); a periodic sweep that may run anywhere takes a transaction-level lock per round instead.
"""
from __future__ import annotations

import logging

import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

log = logging.getLogger("wms.leadership")


class Leadership:
    def __init__(self, engine: AsyncEngine, lock: int, name: str) -> None:
        self.engine, self.lock, self.name = engine, lock, name
        self._connection: AsyncConnection | None = None

    @property
    def held(self) -> bool:
        return self._connection is not None

    async def hold(self) -> bool:
        """True if this process leads now: it already held the lock and its connection lives, or it took it."""
        if self._connection is not None:
            try:
                await self._connection.execute(sa.select(1))
                await self._connection.commit()  # never left idle in a transaction
                return True
            except Exception as exc:
                log.warning("leadership lost with its connection", extra={"lock": self.name,
                                                                          "error": type(exc).__name__})
                await self._drop()
                return False
        conn = await self.engine.connect()
        try:
            taken = bool((await conn.execute(sa.select(sa.func.pg_try_advisory_lock(self.lock)))).scalar())
            await conn.commit()
        except BaseException:
            await conn.invalidate()
            await conn.close()
            raise
        if not taken:
            await conn.close()
            return False
        self._connection = conn
        log.info("leading", extra={"lock": self.name})
        return True

    async def release(self) -> None:
        await self._drop()

    async def _drop(self) -> None:
        conn, self._connection = self._connection, None
        if conn is not None:
            try:
                await conn.invalidate()  # closing the connection frees the lock; never pooled with it held
            finally:
                await conn.close()

"""'Jobs became ready': a PostgreSQL notification from the writer of ready jobs to the job-executors' waiting claims.

The job-manager announces in the transaction that registers ready jobs (a chunk: a few a second, not per job, so the
commit-time lock a notification takes stays off the dispatch path), and the job-executor resuming a task announces
its held jobs. PostgreSQL delivers the notification only if that transaction commits, to every listening
connection of the database: every job-executor replica. A long-polling claim then wakes within milliseconds
instead of at its next poll. Notifications are a shortcut, never the only way: a listener that lost its
connection, or jobs out of their retry backoff, are still found by the job-executor's poll.
"""
from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
from collections.abc import Callable
from typing import Any

import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

CHANNEL = "wms_jobs_ready"
log = logging.getLogger("wms.ready_jobs")


@dataclasses.dataclass(frozen=True)
class Ready:
    resource_type: str
    jobs: int


async def announce(conn: AsyncConnection, ready: Ready | None = None) -> None:
    """Tell the listeners, when ``conn``'s transaction commits, that ``ready.jobs`` jobs of ``ready.resource_type``
    became ready (None: some, of any type)."""
    payload = "" if ready is None else f"{ready.resource_type} {ready.jobs}"
    await conn.execute(sa.text("SELECT pg_notify(:channel, :payload)"), {"channel": CHANNEL, "payload": payload})


def parse(payload: str) -> Ready | None:
    """An announcement's payload; None (some jobs of any type) for an empty or unreadable one."""
    resource_type, _, jobs = payload.partition(" ")
    return Ready(resource_type, int(jobs)) if jobs.isdigit() else None


class ReadyListener:
    """Calls ``on_ready`` whenever an announcement arrives; holds one connection of ``engine``'s pool while
    running, and takes a new one (after ``retry_s``) when it is lost."""

    def __init__(self, engine: AsyncEngine, on_ready: Callable[[Ready | None], None], retry_s: float = 1.0) -> None:
        self.engine, self.on_ready, self.retry_s = engine, on_ready, retry_s
        self._task: asyncio.Task[None] | None = None
        self.listening = False

    def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name="ready-listener")

    async def close(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task

    def _notified(self, _connection: Any, _pid: int, _channel: str, payload: str) -> None:
        self.on_ready(parse(payload))

    async def _run(self) -> None:
        while True:
            try:
                await self._listen_until_lost()
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # an outage: the poll covers it until the listener is back
                log.warning("ready-jobs listener lost its connection", extra={"error": type(exc).__name__})
            await asyncio.sleep(self.retry_s)

    async def _listen_until_lost(self) -> None:
        async with self.engine.connect() as conn:
            raw: Any = (await conn.get_raw_connection()).driver_connection  # the asyncpg connection
            lost = asyncio.Event()
            raw.add_termination_listener(lambda *_: lost.set())
            await raw.add_listener(CHANNEL, self._notified)
            self.listening = True
            self.on_ready(None)  # anything announced while not listening
            try:
                while not lost.is_set() and not raw.is_closed():
                    with contextlib.suppress(TimeoutError):
                        await asyncio.wait_for(lost.wait(), 5.0)
            finally:
                self.listening = False
                if not raw.is_closed():
                    await raw.remove_listener(CHANNEL, self._notified)
            await conn.invalidate()  # never give a connection that lost its server back to the pool

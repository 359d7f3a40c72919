"""Background loops of a service (outbox relay, generation, oversight) and their graceful stop.

A loop is asked to stop and finishes its round: cancelling it in the middle of a database transaction can
leave asyncpg waiting for an answer to a cancelled query while the rollback waits for it. Cancellation stays
the last resort after a bound.
"""
from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable

log = logging.getLogger("wms.background")
STOP_TIMEOUT_S = 10.0
# A failing round (database or DSM down) is retried after a growing pause, capped low enough that the loop
# resumes within seconds of the dependency's return.
FAILURE_BACKOFF_MAX_S = 5.0


class Loop:
    """Runs ``round`` until stopped; between rounds waits ``interval_s`` or until woken."""

    def __init__(self, name: str, round_: Callable[[], Awaitable[bool]], interval_s: float,
                 min_pause_s: float = 0.0) -> None:
        self.name, self._round, self.interval_s, self.min_pause_s = name, round_, interval_s, min_pause_s
        self.rounds = 0  # rounds completed (successfully or not): lets an observer wait for "a round later"
        self._wakeup = asyncio.Event()
        self._stopping = asyncio.Event()

    def wake(self) -> None:
        self._wakeup.set()

    def stop(self) -> None:
        self._stopping.set()
        self._wakeup.set()

    async def run(self) -> None:
        failures = 0
        while not self._stopping.is_set():
            try:
                busy = await self._round()
                if failures:
                    log.info("background round succeeds again", extra={"loop": self.name, "failures": failures})
                failures = 0
                self.rounds += 1
            except Exception as exc:
                self.rounds += 1
                failures += 1
                if failures == 1:
                    log.exception("background round failed", extra={"loop": self.name})
                else:
                    log.warning("background round failed again", extra={
                        "loop": self.name, "failures": failures, "error": f"{type(exc).__name__}: {exc}"})
                pause = min(self.interval_s * 2 ** (failures - 1), max(FAILURE_BACKOFF_MAX_S, self.interval_s))
                await self._sleep(pause)
                continue
            if busy or self._stopping.is_set():
                continue
            if self.min_pause_s:
                await asyncio.sleep(self.min_pause_s)
            await self._sleep(self.interval_s)

    async def _sleep(self, seconds: float) -> None:
        """Wait ``seconds`` or until woken (or asked to stop)."""
        self._wakeup.clear()
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._wakeup.wait(), timeout=seconds)


def start(*loops: Loop) -> list[tuple[Loop, asyncio.Task[None]]]:
    return [(loop, asyncio.create_task(loop.run(), name=loop.name)) for loop in loops]


async def stop(running: list[tuple[Loop, asyncio.Task[None]]]) -> None:
    for loop, _ in running:
        loop.stop()
    for loop, task in running:
        try:
            await asyncio.wait_for(asyncio.shield(task), STOP_TIMEOUT_S)
        except TimeoutError:
            log.warning("background loop did not stop in time; cancelled", extra={"loop": loop.name})
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task

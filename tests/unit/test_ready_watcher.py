"""Which waiting claims an announcement of ready jobs wakes (pure logic of the job-executor's ReadyWatcher)."""
from __future__ import annotations

import asyncio

from common.db import ready_jobs
from services.job_executor.exchange import ReadyWatcher


class NoDatabase:
    """The watcher's poll finds no database (its first look fails and is logged; the next is READY_POLL_S later):
    only announcements can wake a waiter here."""

    def connect(self):
        raise ConnectionRefusedError("no database in a unit test")


async def test_an_announcement_wakes_just_enough_waiters_of_its_type_longest_waiting_first(monkeypatch) -> None:
    from services.job_executor import exchange

    monkeypatch.setattr(exchange, "READY_POLL_S", 60.0)
    watcher = ReadyWatcher(NoDatabase())  # type: ignore[arg-type]
    gpu = asyncio.create_task(watcher.wait(5, ("gpu", "cpu"), want=4))
    await asyncio.sleep(0)
    cpu = [asyncio.create_task(watcher.wait(5, ("cpu",), want=8)) for _ in range(4)]
    await asyncio.sleep(0.01)

    watcher._announced(ready_jobs.Ready("cpu", 12))  # the GPU pilot (first; takes CPU work) wants 4, one more 8
    await asyncio.sleep(0.01)
    assert gpu.done() and cpu[0].done()
    assert [t.done() for t in cpu[1:]] == [False, False, False]

    watcher._announced(ready_jobs.Ready("gpu", 3))  # nobody waiting serves GPU work any more
    await asyncio.sleep(0.01)
    assert [t.done() for t in cpu[1:]] == [False, False, False]

    watcher._announced(None)  # some jobs, of any type: everybody looks
    assert await asyncio.gather(*cpu[1:]) == [True, True, True]
    await watcher.close()


def test_announcement_payloads() -> None:
    assert ready_jobs.parse("cpu 14") == ready_jobs.Ready("cpu", 14)
    assert ready_jobs.parse("") is None
    assert ready_jobs.parse("gpu many") is None

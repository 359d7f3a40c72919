"""A deadlock victim is run again instead of failing its message."""
from __future__ import annotations

import asyncio

import pytest
import sqlalchemy as sa
from sqlalchemy.exc import DBAPIError

from common.db.models import tasks
from common.db.session import retry_transient
from tests.factories import insert_task


async def test_deadlocked_transactions_both_commit_when_retried(db) -> None:
    async with db.begin() as conn:
        a, b = await insert_task(conn), await insert_task(conn)
    barrier = asyncio.Barrier(2)
    runs = {"ab": 0, "ba": 0}

    async def crosswise(first: int, second: int, name: str) -> None:
        async def transaction() -> None:
            runs[name] += 1
            async with db.begin() as conn:
                await conn.execute(sa.update(tasks).where(tasks.c.id == first).values(priority=tasks.c.priority + 1))
                if runs[name] == 1:
                    await barrier.wait()  # both hold their first row: the second updates deadlock
                await conn.execute(sa.update(tasks).where(tasks.c.id == second).values(priority=tasks.c.priority + 1))

        await retry_transient(transaction)

    await asyncio.gather(crosswise(a, b, "ab"), crosswise(b, a, "ba"))
    assert sorted(runs.values()) == [1, 2]  # exactly one victim, run again
    async with db.connect() as conn:
        priorities = (await conn.execute(sa.select(tasks.c.priority).order_by(tasks.c.id))).scalars().all()
    assert priorities == [3, 3]


async def test_other_errors_are_not_retried(db) -> None:
    calls = 0

    async def broken() -> None:
        nonlocal calls
        calls += 1
        async with db.begin() as conn:
            await conn.execute(sa.text("SELECT 1/0"))

    with pytest.raises(DBAPIError):
        await retry_transient(broken)
    assert calls == 1

"""Concurrent writers cannot break the state machines: the guard is in the UPDATE itself."""
from __future__ import annotations

import asyncio

import pytest
import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncEngine

from common.db.models import jobs, tasks
from common.db.transitions import guarded_transition, transition_one
from common.states import JOB_MACHINE, TASK_MACHINE, IllegalTransition, JobState, RowNotFound, TaskState
from tests.factories import insert_jobs, insert_task


async def test_concurrent_terminal_transitions_exactly_one_wins(db: AsyncEngine) -> None:
    async with db.begin() as conn:
        task_id = await insert_task(conn, status=TaskState.RUNNING)

    async def attempt(target: TaskState) -> str:
        async with db.begin() as conn:
            try:
                await transition_one(conn, tasks, TASK_MACHINE, task_id, target)
                return f"won:{target}"
            except IllegalTransition as exc:
                return f"lost:{exc.current}"

    targets = [TaskState.DONE, TaskState.CANCELLED, TaskState.FINISHED] * 6
    results = await asyncio.gather(*(attempt(t) for t in targets))
    winners = [r for r in results if r.startswith("won:")]
    assert len(winners) == 1
    final = winners[0].removeprefix("won:")
    # every loser was told the state the winner left
    assert all(r == f"lost:{final}" for r in results if r.startswith("lost:"))
    async with db.connect() as conn:
        assert (await conn.execute(sa.select(tasks.c.status).where(tasks.c.id == task_id))).scalar_one() == final


async def test_concurrent_batch_sweeps_never_double_move_a_job(db: AsyncEngine) -> None:
    async with db.begin() as conn:
        task_id = await insert_task(conn)
        ids = await insert_jobs(conn, task_id, 200, status=JobState.READY)

    async def sweep(target: JobState) -> set[int]:
        moved: set[int] = set()
        for chunk in range(0, len(ids), 20):
            async with db.begin() as conn:
                rows = await guarded_transition(conn, jobs, JOB_MACHINE, ids[chunk : chunk + 20], target)
                moved.update(r.id for r in rows)
        return moved

    # dispatch and hold race over the same ready jobs: each job takes exactly one of the two paths
    dispatched, held = await asyncio.gather(sweep(JobState.DISPATCHED), sweep(JobState.HELD))
    assert dispatched.isdisjoint(held)
    assert dispatched | held == set(ids)
    async with db.connect() as conn:
        states = dict((await conn.execute(sa.select(jobs.c.id, jobs.c.status).where(jobs.c.task_id == task_id))).all())
    assert {i for i, s in states.items() if s == JobState.DISPATCHED} == dispatched
    assert {i for i, s in states.items() if s == JobState.HELD} == held
    # a second sweep finds nothing left in a state that may become dispatched
    async with db.begin() as conn:
        assert await guarded_transition(conn, jobs, JOB_MACHINE, ids, JobState.DISPATCHED) == []


async def test_unknown_row_and_illegal_transition(db: AsyncEngine) -> None:
    async with db.begin() as conn:
        task_id = await insert_task(conn, status=TaskState.DONE)
        with pytest.raises(RowNotFound):
            await transition_one(conn, tasks, TASK_MACHINE, task_id + 1000, TaskState.CANCELLED)
        with pytest.raises(IllegalTransition) as info:
            await transition_one(conn, tasks, TASK_MACHINE, task_id, TaskState.CANCELLED)
    assert info.value.current == TaskState.DONE


async def test_statements_on_the_driver_connection_belong_to_the_transaction(db) -> None:
    """The exchange runs its hot statements on asyncpg directly (common.db.session.driver_connection): they are
    part of SQLAlchemy's transaction (begun by the first statement, which goes through SQLAlchemy), and a rollback
    undoes them."""
    from common.db.session import driver_connection

    async with db.connect() as conn:
        async with conn.begin() as transaction:
            raw = await driver_connection(conn, "SET LOCAL enable_seqscan = off")
            await raw.execute("CREATE TEMP TABLE driver_probe (x int)")
            await raw.execute("INSERT INTO driver_probe VALUES (1)")
            assert raw.is_in_transaction()
            await transaction.rollback()
        async with conn.begin():
            raw = await driver_connection(conn, "SELECT 1")
            exists = await raw.fetchval("SELECT to_regclass('pg_temp.driver_probe') IS NOT NULL")
    assert exists is False  # the table and its row went with the rollback


async def test_a_connection_left_inside_a_transaction_never_comes_out_of_the_pool(settings) -> None:
    """A BEGIN SQLAlchemy did not know of (a task cancelled at the wrong moment) would leave a pooled connection
    inside a transaction, holding its locks while it is reused; the pool drops such a connection instead."""
    from common.db.session import create_engine

    engine = create_engine(settings.model_copy(update={"db_pool_size": 1}))
    try:
        async with engine.connect() as conn:
            raw = (await conn.get_raw_connection()).driver_connection
            await raw.execute("BEGIN")  # behind SQLAlchemy's back
            leaked_pid = await raw.fetchval("SELECT pg_backend_pid()")
        async with engine.connect() as conn:
            raw = (await conn.get_raw_connection()).driver_connection
            assert not raw.is_in_transaction()
            assert await raw.fetchval("SELECT pg_backend_pid()") != leaked_pid
    finally:
        await engine.dispose()

"""Fair share at dispatch (issue 21, finding 5): a wfms task of 150 jobs at priority 1000 kept another client's
priority-1 task at zero running jobs for 97 s, claims being ordered strictly by priority. Jobs registered by the
job-manager now carry dispatch keys (common.policies.fair_keys) and claims take them in key order: while two tasks
have ready jobs, each is served in proportion to its priority, and even at 1000:1 the low task gets its share."""
from __future__ import annotations

import uuid

import sqlalchemy as sa
from hypothesis import given
from hypothesis import strategies as st

from common.db.models import jobs
from common.messages import JOB_CHUNK, JobChunk, wrap
from common.policies import fair_keys, fair_start
from services.job_executor import exchange_queries as hot
from services.job_manager.registration import ChunkRegistrar
from tests.factories import insert_task


async def _register(db, task_id: int, priority: int, n: int) -> None:
    chunk = JobChunk(task_id=task_id, dataset=f"in.{task_id}", resource_type="cpu", priority=priority,
                     cursor_after=n, files_per_job=[1] * n, lfns=[f"in.{task_id}/{uuid.uuid4().hex}" for _ in range(n)],
                     urls=["file:///x"] * n, sizes=[1] * n, adler32s=["00000001"] * n, events=[None] * n)
    await ChunkRegistrar(db).register(wrap(JOB_CHUNK, chunk), chunk)


async def _claim_order(db, claims: int, per_claim: int) -> list[int]:
    """Task ids of the claimed jobs, in claim order, by a pilot with room for ``per_claim`` jobs per claim."""
    async with db.begin() as conn:
        pilot_id = (await conn.execute(sa.text(
            "INSERT INTO pilot_dat (host, resource_type, cores, memory_mb, version, status) "
            "VALUES ('wn', 'cpu', 100000, 100000000, 't', 'idle') RETURNING id"))).scalar_one()
    order: list[int] = []
    for _ in range(claims):
        async with db.begin() as conn:
            raw = await hot.hot_transaction(conn)
            got, _ = await hot.claim_jobs(raw, pilot_id, "cpu", 100000, 100000000, per_claim, None, 100000, 100000000)
            task_of = dict((await conn.execute(sa.select(jobs.c.id, jobs.c.task_id).where(
                jobs.c.id.in_([g.id for g in got])))).all())
            order += [task_of[g.id] for g in got]
    return order


async def test_two_tasks_share_the_pilots_in_proportion_to_their_priorities(db) -> None:
    for ratio in ((3, 1), (1, 1)):
        async with db.begin() as conn:
            await conn.execute(sa.text("DELETE FROM job_dat"))
            high = await insert_task(conn, status="running", priority=ratio[0], output_dataset=f"o.{uuid.uuid4().hex}")
            low = await insert_task(conn, status="running", priority=ratio[1], output_dataset=f"o.{uuid.uuid4().hex}")
        await _register(db, high, ratio[0], 300)
        await _register(db, low, ratio[1], 300)  # registered later: it must not wait behind the first task
        window = (await _claim_order(db, 50, 4))[:200]
        share = window.count(high) / len(window)
        target = ratio[0] / sum(ratio)
        assert abs(share - target) <= 0.10, (ratio, share)


async def test_at_1000_to_1_the_low_task_is_served_within_about_a_thousand_jobs(db) -> None:
    async with db.begin() as conn:
        high = await insert_task(conn, status="running", priority=1000, output_dataset="o.high")
        low = await insert_task(conn, status="running", priority=1, output_dataset="o.low")
    await _register(db, high, 1000, 1500)
    await _register(db, low, 1, 5)
    order = await _claim_order(db, 40, 50)
    first_low = order.index(low)
    assert 900 <= first_low <= 1100, first_low  # not after all 1,500 of the high task's jobs
    assert order.count(low) >= 1


@given(st.floats(0, 1e6), st.one_of(st.none(), st.floats(0, 1e6)), st.integers(1, 1000), st.integers(1, 50))
def test_fair_keys_advance_by_the_inverse_of_the_priority(task_vt, current, priority, n) -> None:
    start = fair_start(task_vt, current)
    assert start >= task_vt and (current is None or start >= current)
    keys = fair_keys(start, priority, n)
    assert len(keys) == n and all(b > a for a, b in zip(keys, keys[1:], strict=False))
    assert abs(keys[-1] - (start + n / priority)) < 1e-6 * max(1.0, start)


async def test_a_new_priority_applies_to_the_jobs_already_queued(db) -> None:
    from services.job_executor.queries import set_queued_jobs_priority

    async with db.begin() as conn:
        first = await insert_task(conn, status="running", priority=1, output_dataset="o.first")
        second = await insert_task(conn, status="running", priority=1, output_dataset="o.second")
    await _register(db, first, 1, 300)
    await _register(db, second, 1, 300)
    async with db.begin() as conn:
        await conn.execute(sa.text("UPDATE task_dat SET priority = 3 WHERE id = :id"), {"id": second})
        await set_queued_jobs_priority(conn, second, 3)  # what the job-executor does on task.reprioritised
    window = (await _claim_order(db, 50, 4))[:200]
    assert abs(window.count(second) / len(window) - 0.75) <= 0.10

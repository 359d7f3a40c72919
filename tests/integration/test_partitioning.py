"""Task partitioning end to end in one process: task-manager, reference DSM (HTTP), task-executor, job-manager,
against the real database and broker."""
from __future__ import annotations

import contextlib
from typing import Any

import pytest
import sqlalchemy as sa

from common.db.models import files, jobs, outbox, pilots, tasks
from common.dsm import DsmClient, DsmFile
from tests.conftest import OPERATOR_TOKEN, WFMS_TOKEN, running_app, wait_for
from tests.factories import task_description

WFMS = {"Authorization": f"Bearer {WFMS_TOKEN}"}
OPERATOR = {"Authorization": f"Bearer {OPERATOR_TOKEN}"}


def dataset_files(prefix: str, start: int, n: int, size: int = 1000, events: int | None = 10) -> list[DsmFile]:
    return [DsmFile(lfn=f"{prefix}/f{i:06d}", url=f"file:///data/{prefix}/f{i:06d}", size=size,
                    adler32=f"{i:08x}", events=events) for i in range(start, start + n)]


async def make_dataset(dsm: DsmClient, name: str, n: int, close: bool = True, **kw: Any) -> None:
    await dsm.create_dataset(name)
    for start in range(0, n, 5000):
        await dsm.register_files(name, dataset_files(name, start, min(5000, n - start), **kw))
    if close:
        await dsm.close_dataset(name)


@contextlib.asynccontextmanager
async def executors(settings, **overrides: Any):
    """job-manager and task-executor apps running (consumers and loops) with these settings."""
    from services.job_manager.app import create_app as job_manager_app
    from services.task_executor.app import create_app as task_executor_app

    tuned = settings.model_copy(update=overrides)
    async with running_app(job_manager_app(tuned)), running_app(task_executor_app(tuned)) as te:
        yield te


@pytest.fixture
def pipeline_settings(settings, dsm_url):
    return settings.model_copy(update={"dsm_url": dsm_url, "chunk_files": 100, "dsm_poll_interval_s": 0.2})


async def submit(task_manager, **overrides: Any) -> int:
    response = await task_manager.post("/api/v1/tasks", json=task_description(**overrides), headers=WFMS)
    assert response.status_code == 201, response.text
    return response.json()["id"]


async def task_row(db, task_id: int) -> sa.Row:
    async with db.connect() as conn:
        return (await conn.execute(sa.select(tasks).where(tasks.c.id == task_id))).one()


async def generation_complete(db, task_id: int) -> bool:
    t = await task_row(db, task_id)
    return t.files_total is not None and t.jobs_registered == t.jobs_total


async def input_files(db, task_id: int) -> list[str]:
    async with db.connect() as conn:
        return list((await conn.execute(
            sa.select(files.c.lfn).where(files.c.task_id == task_id, files.c.role == "input"))).scalars())


async def job_sizes(db, task_id: int) -> list[int]:
    async with db.connect() as conn:
        return list((await conn.execute(
            sa.select(jobs.c.n_files).where(jobs.c.task_id == task_id).order_by(jobs.c.id))).scalars())


async def test_every_file_in_exactly_one_job(pipeline_settings, task_manager, dsm, db) -> None:
    await make_dataset(dsm, "spd.raw.a", 500)
    task_id = await submit(task_manager, input_dataset="spd.raw.a", split={"by": "files", "size": 7})
    async with executors(pipeline_settings):
        await wait_for(lambda: generation_complete(db, task_id))
    lfns = await input_files(db, task_id)
    assert sorted(lfns) == [f"spd.raw.a/f{i:06d}" for i in range(500)]
    sizes = await job_sizes(db, task_id)
    assert sorted(sizes) == [3] + [7] * 71  # chunks may register in any order
    t = await task_row(db, task_id)
    assert (t.status, t.files_total, t.files_assigned, t.jobs_total, t.dsm_cursor) == ("running", 500, 500, 72, 500)
    assert t.started_at is not None
    progress = (await task_manager.get(f"/api/v1/tasks/{task_id}", headers=WFMS)).json()["progress"]
    assert progress["files"]["total"] == 500 and progress["files"]["pending"] == 500
    assert progress["jobs"]["ready"] == 72


@pytest.mark.parametrize(("rule", "expected"), [
    ({"by": "bytes", "size": 3500}, [3] * 33 + [1]),  # 1000-byte files: 3 fit in 3500 bytes
    ({"by": "events", "size": 25}, [3] * 33 + [1]),  # 10-event files: 3 reach 25 events
])
async def test_bytes_and_events_rules(pipeline_settings, task_manager, dsm, db, rule, expected) -> None:
    await make_dataset(dsm, "spd.raw.r", 100)
    task_id = await submit(task_manager, input_dataset="spd.raw.r", split=rule)
    async with executors(pipeline_settings):
        await wait_for(lambda: generation_complete(db, task_id))
    assert await job_sizes(db, task_id) == expected


async def test_growing_dataset_is_followed_until_closed(pipeline_settings, task_manager, dsm, db) -> None:
    await make_dataset(dsm, "spd.raw.live", 100, close=False)
    task_id = await submit(task_manager, input_dataset="spd.raw.live", split={"by": "files", "size": 10})
    async with executors(pipeline_settings):
        await wait_for(lambda: _files_assigned(db, task_id, 100))
        await dsm.register_files("spd.raw.live", dataset_files("spd.raw.live", 100, 55))
        await wait_for(lambda: _files_assigned(db, task_id, 150))
        t = await task_row(db, task_id)
        assert t.files_total is None  # open: the 5 last files wait for more, and the task is not complete
        assert t.files_assigned == 150
        await dsm.close_dataset("spd.raw.live")
        await wait_for(lambda: generation_complete(db, task_id))
    assert sorted(await input_files(db, task_id)) == [f"spd.raw.live/f{i:06d}" for i in range(155)]
    assert await job_sizes(db, task_id) == [10] * 15 + [5]
    assert (await task_row(db, task_id)).files_total == 155


async def _files_assigned(db, task_id: int, n: int) -> bool:
    return (await task_row(db, task_id)).files_assigned >= n


async def _jobs_registered(db, task_id: int) -> int:
    return (await task_row(db, task_id)).jobs_registered


async def test_backlog_follows_live_pilot_capacity(pipeline_settings, task_manager, dsm, db) -> None:
    await make_dataset(dsm, "spd.raw.big", 1000)
    task_id = await submit(task_manager, input_dataset="spd.raw.big", split={"by": "files", "size": 1})
    async with executors(pipeline_settings, backlog_floor=20, backlog_per_slot=2, chunk_files=15) as te:
        await wait_for(lambda: _jobs_registered(db, task_id))
        await wait_for(lambda: _equals(_jobs_registered(db, task_id), 20))
        assert (await task_row(db, task_id)).jobs_total == 20  # the floor: no more while no pilot takes any

        # 20 live pilots with 30 slots (10 GPU pilots of one slot, which also take CPU work, and 10 CPU pilots of two
        # slots): bound 2 x 30 = 60
        async with db.begin() as conn:
            await conn.execute(sa.insert(pilots), [
                {"host": f"wn{i}", "resource_type": "gpu" if i < 10 else "cpu", "cores": 8, "memory_mb": 16000,
                 "gpus": 1 if i < 10 else 0, "slots": 1 if i < 10 else 2, "version": "test"} for i in range(20)])
        await wait_for(lambda: _equals(_jobs_registered(db, task_id), 60))

        # pilots take 25 jobs: exactly 25 more are generated
        async with db.begin() as conn:
            await conn.execute(sa.update(jobs).where(jobs.c.id.in_(
                sa.select(jobs.c.id).where(jobs.c.task_id == task_id).order_by(jobs.c.id).limit(25).scalar_subquery()
            )).values(status="dispatched"))
        await wait_for(lambda: _equals(_jobs_registered(db, task_id), 85))
        await _settle(te)
        assert (await task_row(db, task_id)).jobs_total == 85


async def _equals(awaitable, expected: int) -> bool:
    return (await awaitable) == expected


async def _settle(task_executor) -> None:
    """Let the generation loop run a few more rounds (each would have generated what it was going to)."""
    generation = task_executor.app.state.loop.loop
    target = generation.rounds + 3

    async def later() -> bool:
        generation.wake()
        return generation.rounds >= target
    await wait_for(later, timeout=20)


async def chunk_log(db) -> list[tuple[str, int, int]]:
    """(kind, task id, jobs) of every chunk and task event, in the order their transactions wrote them."""
    async with db.connect() as conn:
        rows = (await conn.execute(sa.select(outbox.c.routing_key, outbox.c.body).order_by(outbox.c.id))).all()
    out = []
    for key, body in rows:
        payload = body["payload"]
        if key == "jobs.chunk":
            out.append(("chunk", payload["task_id"], len(payload["files_per_job"])))
        elif key.startswith("task."):
            out.append((key, payload["task_id"], 0))
    return out


async def test_fair_share_follows_priorities_and_their_changes(pipeline_settings, task_manager, dsm, db) -> None:
    await make_dataset(dsm, "spd.raw.p", 3000)
    high = await submit(task_manager, input_dataset="spd.raw.p", priority=3, split={"by": "files", "size": 10})
    low = await submit(task_manager, input_dataset="spd.raw.p", priority=1, split={"by": "files", "size": 10})
    async with executors(pipeline_settings, chunk_files=50, backlog_floor=10**6):
        await wait_for(lambda: generation_complete(db, high))
        await wait_for(lambda: generation_complete(db, low))
    log = [e for e in await chunk_log(db) if e[0] == "chunk"]
    last_high = max(i for i, e in enumerate(log) if e[1] == high)
    jobs_high = sum(n for _, t, n in log[: last_high + 1] if t == high)
    jobs_low = sum(n for _, t, n in log[: last_high + 1] if t == low)
    assert jobs_high == 300
    assert abs(jobs_high / jobs_low - 3) <= 0.3, (jobs_high, jobs_low)  # 3:1 within 10% while both were active


async def test_priority_change_takes_effect_at_the_next_chunk(pipeline_settings, task_manager, dsm, db) -> None:
    await make_dataset(dsm, "spd.raw.q", 4000)
    a = await submit(task_manager, input_dataset="spd.raw.q", priority=1, split={"by": "files", "size": 10})
    b = await submit(task_manager, input_dataset="spd.raw.q", priority=1, split={"by": "files", "size": 10})
    async with executors(pipeline_settings, chunk_files=50, backlog_floor=10**6):
        await wait_for(lambda: _files_assigned(db, a, 500))
        response = await task_manager.patch(f"/api/v1/tasks/{b}", json={"priority": 4}, headers=WFMS)
        assert response.status_code == 200
        await wait_for(lambda: generation_complete(db, b))
    log = await chunk_log(db)
    change = next(i for i, e in enumerate(log) if e[0] == "task.reprioritised")
    before = [e for e in log[:change] if e[0] == "chunk"]
    after = [e for e in log[change + 2:] if e[0] == "chunk"]  # from the chunk after the one in progress
    last_b = max(i for i, e in enumerate(after) if e[1] == b)
    after = after[: last_b + 1]
    assert abs(count(before, a) - count(before, b)) <= 5  # equal before
    assert abs(count(after, b) / count(after, a) - 4) <= 0.4, (count(after, a), count(after, b))


def count(entries: list[tuple[str, int, int]], task_id: int) -> int:
    return sum(n for _, t, n in entries if t == task_id)


async def test_cancel_and_pause_stop_generation_at_once(pipeline_settings, task_manager, dsm, db) -> None:
    await make_dataset(dsm, "spd.raw.c", 3000)
    cancelled = await submit(task_manager, input_dataset="spd.raw.c", split={"by": "files", "size": 1})
    paused = await submit(task_manager, input_dataset="spd.raw.c", split={"by": "files", "size": 1})
    async with executors(pipeline_settings, chunk_files=20, backlog_floor=10**6) as te:
        await wait_for(lambda: _files_assigned(db, cancelled, 200))
        assert (await task_manager.post(f"/api/v1/tasks/{cancelled}/cancel", headers=WFMS)).status_code == 200
        assert (await task_manager.post(f"/api/v1/tasks/{paused}/pause", headers=OPERATOR)).status_code == 200
        await _settle(te)
        assigned_while_paused = (await task_row(db, paused)).files_assigned
        await _settle(te)
        assert (await task_row(db, paused)).files_assigned == assigned_while_paused
        assert (await task_manager.post(f"/api/v1/tasks/{paused}/resume", headers=OPERATOR)).status_code == 200
        await wait_for(lambda: generation_complete(db, paused))
        # jobs of the cancelled task that were in flight are registered as cancelled, none is lost
        await wait_for(lambda: generation_in_flight_done(db, cancelled))
    log = await chunk_log(db)
    cancel_at = next(i for i, e in enumerate(log) if e[0] == "task.cancelled")
    assert not [e for e in log[cancel_at:] if e[0] == "chunk" and e[1] == cancelled]
    t = await task_row(db, cancelled)
    assert t.status == "cancelled" and t.files_total is None and t.files_assigned < 3000
    assert len(await input_files(db, cancelled)) == t.files_assigned
    assert sorted(await input_files(db, paused)) == sorted(f"spd.raw.c/f{i:06d}" for i in range(3000))


async def generation_in_flight_done(db, task_id: int) -> bool:
    t = await task_row(db, task_id)
    return t.jobs_registered == t.jobs_total


async def test_tasks_that_cannot_be_split_fail_with_a_reason(pipeline_settings, task_manager, dsm, db) -> None:
    await make_dataset(dsm, "spd.raw.noevents", 10, events=None)
    missing = await submit(task_manager, input_dataset="spd.raw.nowhere")
    no_events = await submit(task_manager, input_dataset="spd.raw.noevents", split={"by": "events", "size": 5})
    async with executors(pipeline_settings, dataset_wait_s=1.0):
        await wait_for(lambda: _status(db, missing, "failed"))
        await wait_for(lambda: _status(db, no_events, "failed"))
    assert "spd.raw.nowhere not found" in (await task_row(db, missing)).error
    assert "needs event counts" in (await task_row(db, no_events)).error
    failed_events = sorted(e[1] for e in await chunk_log(db) if e[0] == "task.failed")
    assert failed_events == sorted([missing, no_events])


async def _status(db, task_id: int, status: str) -> bool:
    return (await task_row(db, task_id)).status == status

"""job-manager: bulk, idempotent registration of job chunks from RabbitMQ, and its internal API."""
from __future__ import annotations

import pytest
import sqlalchemy as sa

from common.broker import Broker
from common.db.models import files, jobs, tasks
from common.messages import JOB_CHUNK, JobChunk, decode, wrap
from tests.conftest import OPERATOR_TOKEN, PILOT_TOKEN, get_message, wait_for
from tests.factories import insert_task

AUTH = {"Authorization": f"Bearer {OPERATOR_TOKEN}"}


def chunk(task_id: int, first: int, n_jobs: int, files_per_job: int = 2, resource_type: str = "cpu") -> JobChunk:
    numbers = range(first, first + n_jobs * files_per_job)
    return JobChunk(
        task_id=task_id,
        dataset="spd.raw",
        resource_type=resource_type,
        priority=4,
        cursor_after=first + n_jobs * files_per_job,
        files_per_job=[files_per_job] * n_jobs,
        lfns=[f"raw/f{i:06d}.tsl" for i in numbers],
        urls=[f"file:///d/f{i:06d}" for i in numbers],
        sizes=[100] * len(numbers),
        adler32s=["0000abcd"] * len(numbers),
        events=[7] * len(numbers),
    )


@pytest.fixture
async def broker(settings):
    b = Broker(settings)
    await b.connect()
    yield b
    await b.close()


async def publish(broker: Broker, envelope) -> None:
    await broker.publish(broker.topology.exchange("jobs"), JOB_CHUNK, envelope)


async def counts(db, task_id: int) -> tuple[int, int, dict[str, int]]:
    async with db.connect() as conn:
        n_jobs = (await conn.execute(sa.select(sa.func.count()).where(jobs.c.task_id == task_id))).scalar_one()
        n_files = (await conn.execute(sa.select(sa.func.count()).where(files.c.task_id == task_id))).scalar_one()
        states = dict((await conn.execute(
            sa.select(jobs.c.status, sa.func.count()).where(jobs.c.task_id == task_id).group_by(jobs.c.status))).all())
    return n_jobs, n_files, states


async def test_chunk_is_registered_once_and_made_ready(job_manager, broker, db) -> None:
    async with db.begin() as conn:
        task_id = await insert_task(conn, status="running", jobs_total=50, priority=4)
    envelope = wrap(JOB_CHUNK, chunk(task_id, 0, 50))
    await publish(broker, envelope)
    await wait_for(lambda: _has_jobs(db, task_id, 50))
    await publish(broker, envelope)  # redelivered / republished: the same message id registers nothing
    await publish(broker, wrap(JOB_CHUNK, chunk(task_id, 100, 10)))  # the next chunk still does
    await wait_for(lambda: _has_jobs(db, task_id, 60))

    n_jobs, n_files, states = await counts(db, task_id)
    assert (n_jobs, n_files, states) == (60, 120, {"ready": 60})
    async with db.connect() as conn:
        task = (await conn.execute(sa.select(tasks).where(tasks.c.id == task_id))).one()
        job = (await conn.execute(sa.select(jobs).where(jobs.c.task_id == task_id).limit(1))).one()
    assert task.jobs_registered == 60
    assert (job.n_files, job.n_bytes, job.n_events, job.priority, job.attempt) == (2, 200, 14, 4, 0)
    assert job.queued_at is not None


async def _has_jobs(db, task_id: int, n: int) -> bool:
    return (await counts(db, task_id))[0] >= n


@pytest.mark.parametrize(("task_state", "job_state", "file_state"),
                         [("paused", "held", "pending"), ("cancelled", "cancelled", "cancelled"),
                          ("done", "cancelled", "cancelled")])
async def test_jobs_follow_their_tasks_state(job_manager, broker, db, task_state, job_state, file_state) -> None:
    async with db.begin() as conn:
        task_id = await insert_task(conn, status=task_state)
    await publish(broker, wrap(JOB_CHUNK, chunk(task_id, 0, 5)))
    await wait_for(lambda: _has_jobs(db, task_id, 5))
    assert (await counts(db, task_id))[2] == {job_state: 5}
    async with db.connect() as conn:
        file_states = set((await conn.execute(sa.select(files.c.status).where(files.c.task_id == task_id))).scalars())
    assert file_states == {file_state}


async def test_unprocessable_chunks_are_dead_lettered_without_partial_rows(job_manager, broker, db, amqp) -> None:
    async with db.begin() as conn:
        task_id = await insert_task(conn, status="running")
    await publish(broker, wrap(JOB_CHUNK, chunk(task_id + 999, 0, 3)))  # no such task
    await publish(broker, wrap(JOB_CHUNK, chunk(task_id, 0, 3)))
    await wait_for(lambda: _has_jobs(db, task_id, 3))
    # another message carrying a file already in a job of the task: refused by the unique index, never twice
    await publish(broker, wrap(JOB_CHUNK, chunk(task_id, 4, 2)))

    dlq = await (await amqp.channel()).get_queue(broker.topology.dead_letter_queue("job-manager.job-chunks"))
    dead = sorted([decode((await get_message(dlq)).body)[1].task_id for _ in range(2)])
    assert dead == [task_id, task_id + 999]
    assert (await counts(db, task_id))[:2] == (3, 6)


async def test_internal_api(job_manager, broker, db) -> None:
    async with db.begin() as conn:
        task_id = await insert_task(conn, status="running")
        other = await insert_task(conn, status="paused")
    await publish(broker, wrap(JOB_CHUNK, chunk(task_id, 0, 3)))
    await publish(broker, wrap(JOB_CHUNK, chunk(other, 0, 2)))
    await wait_for(lambda: _has_jobs(db, other, 2))
    await wait_for(lambda: _has_jobs(db, task_id, 3))

    page = (await job_manager.get("/internal/v1/jobs", params={"task_id": task_id, "limit": 2}, headers=AUTH)).json()
    assert len(page["items"]) == 2 and page["next_after"] is not None
    rest = (await job_manager.get("/internal/v1/jobs", params={"task_id": task_id, "after": page["next_after"]},
                                  headers=AUTH)).json()
    assert len(rest["items"]) == 1 and rest["next_after"] is None
    held = (await job_manager.get("/internal/v1/jobs", params={"status": "held"}, headers=AUTH)).json()
    assert {j["task_id"] for j in held["items"]} == {other}

    job_id = page["items"][0]["id"]
    job = (await job_manager.get(f"/internal/v1/jobs/{job_id}", headers=AUTH)).json()
    assert [f["lfn"] for f in job["files"]] == ["raw/f000000.tsl", "raw/f000001.tsl"]
    assert all(f["role"] == "input" and f["job_id"] == job_id for f in job["files"])

    by_lfn = (await job_manager.get("/internal/v1/files", params={"lfn": "raw/f000000.tsl"}, headers=AUTH)).json()
    assert {f["task_id"] for f in by_lfn} == {task_id, other}
    assert (await job_manager.get("/internal/v1/jobs/99999", headers=AUTH)).status_code == 404
    assert (await job_manager.get("/internal/v1/jobs", params={"status": "bogus"}, headers=AUTH)).status_code == 422
    assert (await job_manager.get("/internal/v1/jobs")).status_code == 401
    forbidden = await job_manager.get("/internal/v1/jobs", headers={"Authorization": f"Bearer {PILOT_TOKEN}"})
    assert forbidden.status_code == 403

"""Every rule of a claim and a report, each tested on the exchange: the one door pilots use (issue 23).

Resources and slots: test_exchange.py (a multi-slot pilot, prefetch). Here: GPUs, fencing, idempotent retries, and
the exit codes and error categories of failed reports (what is recorded, which budget, what the next attempt gets).
"""
from __future__ import annotations

import uuid

import pytest
import sqlalchemy as sa

from common.db.models import files, job_attempts, jobs, tasks
from tests.integration import test_job_executor_api as api
from tests.integration.test_exchange import exchange
from tests.integration.test_job_executor_api import make_jobs, output_of, register

job_executor = api.job_executor  # the same in-process job-executor fixture


async def job_row(db, job_id: int) -> sa.Row:
    async with db.connect() as conn:
        return (await conn.execute(sa.select(jobs).where(jobs.c.id == job_id))).one()


async def attempt_row(db, job_id: int, attempt: int) -> sa.Row:
    async with db.connect() as conn:
        return (await conn.execute(sa.select(job_attempts).where(
            job_attempts.c.job_id == job_id, job_attempts.c.attempt == attempt))).one()


# --- GPUs -------------------------------------------------------------------------------------------------------


async def test_a_gpu_pilot_with_no_gpu_gets_no_gpu_job_but_falls_back_to_cpu_work(job_executor, db) -> None:
    """The drift issue 23 found: protocol 1 let a GPU pilot registered with 0 GPUs claim GPU jobs."""
    await make_jobs(db, 2, resource_type="gpu")
    (cpu_job,) = await make_jobs(db, 1)
    pilot_id, auth = await register(job_executor, resource_type="gpu", gpus=0, slots=4)
    got = (await exchange(job_executor, pilot_id, auth, want=4))["jobs"]
    assert [j["job_id"] for j in got] == [cpu_job]


async def test_a_gpu_job_takes_one_gpu_and_a_cpu_pilot_never_gets_one(job_executor, db) -> None:
    gpu_jobs = await make_jobs(db, 3, resource_type="gpu")
    cpu_jobs = await make_jobs(db, 2)
    cpu_pilot, cpu_auth = await register(job_executor, host="cpu1", slots=4)
    assert sorted(j["job_id"] for j in (await exchange(job_executor, cpu_pilot, cpu_auth, want=4))["jobs"]) \
        == cpu_jobs
    pilot_id, auth = await register(job_executor, resource_type="gpu", gpus=2, slots=4)
    got = (await exchange(job_executor, pilot_id, auth, want=4))["jobs"]
    assert [j["job_id"] for j in got] == gpu_jobs[:2]  # two GPUs: two GPU jobs, the third waits
    assert [j["gpus"] for j in got] == [1, 1]


# --- fencing ----------------------------------------------------------------------------------------------------


async def test_only_the_pilot_holding_the_current_attempt_changes_the_job(job_executor, db) -> None:
    (job_id,) = await make_jobs(db, 1)
    pilot_id, auth = await register(job_executor)
    (spec,) = (await exchange(job_executor, pilot_id, auth, want=1))["jobs"]
    other, other_auth = await register(job_executor, host="wn2")
    finished = {"job_id": job_id, "attempt": 1, "state": "finished", "exit_code": 0, "outputs": [output_of(spec)]}
    reply = await exchange(job_executor, other, other_auth, reports=[finished])
    assert reply["reports"][0]["status"] == 409 and reply["reports"][0]["current_state"] == "dispatched"
    stale = await exchange(job_executor, pilot_id, auth, reports=[
        {"job_id": job_id, "attempt": 2, "state": "running"},
        {"job_id": job_id, "attempt": 2, "state": "failed", "error_category": "payload"}])
    assert [r["status"] for r in stale["reports"]] == [409, 409]  # an attempt that is not the current one
    missing = await exchange(job_executor, pilot_id, auth, reports=[{**finished, "job_id": job_id + 1000}])
    assert missing["reports"][0]["status"] == 422  # its files cannot be this attempt's
    unknown = await exchange(job_executor, pilot_id, auth, reports=[
        {"job_id": job_id + 1000, "attempt": 1, "state": "running"}])
    assert (unknown["reports"][0]["status"], unknown["reports"][0]["current_state"]) == (409, None)
    assert (await job_row(db, job_id)).status == "dispatched"  # nothing moved
    async with db.connect() as conn:
        assert (await conn.execute(sa.select(sa.func.count()).where(files.c.role == "output"))).scalar_one() == 0


async def test_a_session_is_the_pilots_own(job_executor, db) -> None:
    await make_jobs(db, 1)
    pilot_id, _ = await register(job_executor)
    _, other_auth = await register(job_executor, host="wn2")
    response = await job_executor.post(f"/pilot/v1/pilots/{pilot_id}/exchange", json={"want": 1},
                                       headers=other_auth)
    assert response.status_code == 403 and "wrong session" in response.text


# --- idempotent retries -----------------------------------------------------------------------------------------


async def test_a_repeated_final_report_is_a_repeat_and_registers_its_files_once(job_executor, db) -> None:
    (job_id,) = await make_jobs(db, 1)
    pilot_id, auth = await register(job_executor)
    (spec,) = (await exchange(job_executor, pilot_id, auth, want=1))["jobs"]
    finished = {"job_id": job_id, "attempt": 1, "state": "finished", "exit_code": 0, "outputs": [output_of(spec)]}
    first = await exchange(job_executor, pilot_id, auth, reports=[{**finished, "state": "running"}, finished])
    again = await exchange(job_executor, pilot_id, auth, reports=[finished])  # its answer was lost
    assert [r["status"] for r in first["reports"]] == [200, 200]
    assert (again["reports"][0]["status"], again["reports"][0]["detail"]) == (200, "repeat")
    async with db.connect() as conn:
        assert (await conn.execute(sa.select(sa.func.count()).where(files.c.role == "output"))).scalar_one() == 1


async def test_a_retried_claim_gets_its_jobs_again_not_more(job_executor, db) -> None:
    await make_jobs(db, 4)
    pilot_id, auth = await register(job_executor, slots=4)
    request_id = str(uuid.uuid4())
    first = await exchange(job_executor, pilot_id, auth, want=2, request_id=request_id)
    again = await exchange(job_executor, pilot_id, auth, want=2, request_id=request_id)
    assert [j["job_id"] for j in again["jobs"]] == [j["job_id"] for j in first["jobs"]]
    async with db.connect() as conn:
        assert (await conn.execute(sa.select(sa.func.count()).select_from(job_attempts))).scalar_one() == 2


# --- exit codes and error categories ----------------------------------------------------------------------------


async def _fail(job_executor, db, category: str, exit_code: int | None = 3, max_attempts: int = 3) -> tuple:
    (job_id,) = await make_jobs(db, 1)
    async with db.begin() as conn:
        await conn.execute(sa.update(tasks).values(max_attempts=max_attempts))
    pilot_id, auth = await register(job_executor)
    await exchange(job_executor, pilot_id, auth, want=1)
    reply = await exchange(job_executor, pilot_id, auth, reports=[
        {"job_id": job_id, "attempt": 1, "state": "running"},
        {"job_id": job_id, "attempt": 1, "state": "failed", "exit_code": exit_code, "error_category": category,
         "error_message": f"{category} went wrong"}])
    assert [r["status"] for r in reply["reports"]] == [200, 200]
    return job_id, await job_row(db, job_id), await attempt_row(db, job_id, 1)


async def test_a_payload_failure_is_recorded_and_retried_within_max_attempts(job_executor, db) -> None:
    _, job, attempt = await _fail(job_executor, db, "payload", exit_code=3)
    assert (attempt.outcome, attempt.exit_code, attempt.error_category) == ("failed", 3, "payload")
    assert attempt.error_message == "payload went wrong"
    assert (job.status, job.lost_attempts, job.error_category) == ("ready", 0, "payload")


async def test_a_payload_failure_at_the_last_attempt_fails_the_job_and_its_input(job_executor, db) -> None:
    job_id, job, _ = await _fail(job_executor, db, "payload", max_attempts=1)
    assert (job.status, job.exit_code) == ("failed", 3)
    async with db.connect() as conn:
        inputs = (await conn.execute(sa.select(files.c.status).where(files.c.job_id == job_id))).scalars().all()
    assert inputs == ["failed"]


@pytest.mark.parametrize("category", ["manifest", "output_too_large"])
async def test_a_failure_the_same_input_would_repeat_is_never_retried(job_executor, db, category) -> None:
    _, job, _ = await _fail(job_executor, db, category)
    assert (job.status, job.error_category) == ("failed", category)


async def test_a_pilot_failure_counts_against_the_loss_budget_not_max_attempts(job_executor, db) -> None:
    _, job, attempt = await _fail(job_executor, db, "pilot", exit_code=None, max_attempts=1)
    assert (job.status, job.lost_attempts) == ("ready", 1)  # max_attempts 1 would have failed a payload failure
    assert attempt.error_category == "pilot"


async def test_a_memory_failure_is_retried_once_with_more_memory(job_executor, db) -> None:
    job_id, job, _ = await _fail(job_executor, db, "memory", exit_code=None)
    assert job.status == "ready"
    async with db.begin() as conn:
        await conn.execute(sa.update(jobs).values(not_before=None))
        task_memory = (await conn.execute(sa.select(tasks.c.memory_mb))).scalar_one()
    pilot_id, auth = await register(job_executor, host="wn9", memory_mb=64000)
    (spec,) = (await exchange(job_executor, pilot_id, auth, want=1))["jobs"]
    factor = job_executor.app.state.settings.memory_retry_factor
    assert (spec["attempt"], spec["memory_mb"]) == (2, int(task_memory * factor))
    reply = await exchange(job_executor, pilot_id, auth, reports=[
        {"job_id": job_id, "attempt": 2, "state": "failed", "error_category": "memory", "error_message": "again"}])
    assert reply["reports"][0]["status"] == 200
    assert (await job_row(db, job_id)).status == "failed"  # a second memory failure is final


async def test_jobs_an_answer_could_not_deliver_are_given_back_unless_a_retry_delivered_them(job_executor,
                                                                                            db) -> None:
    """Over RabbitMQ an answer returned by the broker (the pilot's reply queue is gone) gives its jobs back at
    once; but if the pilot's retry of that exchange got the same jobs meanwhile, they are its own and stay."""
    exchanges = job_executor.app.state.exchanges
    first, second = await make_jobs(db, 2)
    pilot_id, auth = await register(job_executor, slots=2)
    lost_request, retried_request = str(uuid.uuid4()), str(uuid.uuid4())
    (spec,) = (await exchange(job_executor, pilot_id, auth, want=1, request_id=lost_request))["jobs"]
    assert await exchanges.give_back(pilot_id, [(spec["job_id"], 1)], "undelivered") == 1
    assert (await job_row(db, spec["job_id"])).status == "ready"
    assert (await attempt_row(db, spec["job_id"], 1)).outcome == "lost"

    (spec,) = (await exchange(job_executor, pilot_id, auth, want=1, request_id=retried_request))["jobs"]
    again = await exchange(job_executor, pilot_id, auth, want=1, request_id=retried_request)  # the retry
    assert [j["job_id"] for j in again["jobs"]] == [spec["job_id"]]
    assert await exchanges.give_back(pilot_id, [(spec["job_id"], spec["attempt"])], "undelivered") == 0
    assert (await job_row(db, spec["job_id"])).status == "dispatched"  # delivered by the retry: the pilot's
    assert {first, second} >= {spec["job_id"]}

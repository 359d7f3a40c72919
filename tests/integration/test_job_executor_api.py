"""The pilot REST API of the job-executor, in process, against the real database and broker."""
from __future__ import annotations

import pytest
import sqlalchemy as sa

from common.db.models import files, job_attempts, jobs
from tests.conftest import PILOT_TOKEN, WFMS_TOKEN, running_app
from tests.factories import insert_jobs, insert_task

PILOT = {"Authorization": f"Bearer {PILOT_TOKEN}"}
REGISTRATION = {"host": "wn1", "resource_type": "cpu", "cores": 4, "memory_mb": 8000, "gpus": 0, "version": "t"}


@pytest.fixture
async def job_executor(settings, tmp_path):
    from services.job_executor.app import create_app

    tuned = settings.model_copy(update={"storage_root": str(tmp_path), "oversight_interval_s": 60})
    async with running_app(create_app(tuned)) as client:
        yield client


async def register(client, **overrides) -> tuple[int, dict[str, str]]:
    response = await client.post("/pilot/v1/pilots", json={**REGISTRATION, **overrides}, headers=PILOT)
    assert response.status_code == 201, response.text
    body = response.json()
    return body["pilot_id"], {**PILOT, "X-Pilot-Session": body["session"]}


async def make_jobs(db, n: int = 1, resource_type: str = "cpu", priorities: list[int] | None = None) -> list[int]:
    async with db.begin() as conn:
        task_id = await insert_task(conn, status="running", output_dataset="out")
        ids = []
        for p in priorities or [1] * n:
            (job_id,) = await insert_jobs(conn, task_id, 1, status="ready", resource_type=resource_type, priority=p)
            await conn.execute(sa.insert(files).values(lfn=f"in/{job_id}", dataset="in", task_id=task_id,
                                                       job_id=job_id, role="input", url="file:///x", size=1,
                                                       adler32="00000001", status="pending"))
            ids.append(job_id)
    return ids


def output_of(spec: dict, name: str = "a.out") -> dict:
    """A staged output as the pilot reports it: in its attempt's directory, named under its job."""
    return {"lfn": f"out/{spec['job_id']}/{name}", "url": spec["output_url_prefix"] + name, "size": 3,
            "adler32": "0000000a", "events": 2}


async def test_claim_run_finish_and_a_repeated_final_report(job_executor, db) -> None:
    (job_id,) = await make_jobs(db)
    pilot_id, auth = await register(job_executor)
    claim = await job_executor.post(f"/pilot/v1/pilots/{pilot_id}/claim", headers=auth)
    assert claim.status_code == 200
    spec = claim.json()
    assert (spec["job_id"], spec["attempt"], spec["inputs"][0]["lfn"]) == (job_id, 1, f"in/{job_id}")
    assert spec["output_url_prefix"].endswith(f"/out/{job_id}/1/")  # a directory per attempt
    busy = await job_executor.post(f"/pilot/v1/pilots/{pilot_id}/claim", headers=auth)
    assert busy.status_code == 204  # one slot, held: no more work for it (protocol 1 is an exchange adapter)

    url = f"/pilot/v1/pilots/{pilot_id}/jobs/{job_id}/report"
    assert (await job_executor.post(url, json={"attempt": 1, "state": "running"}, headers=auth)).status_code == 200
    final = {"attempt": 1, "state": "finished", "exit_code": 0, "outputs": [output_of(spec)]}
    assert (await job_executor.post(url, json=final, headers=auth)).status_code == 200
    assert (await job_executor.post(url, json=final, headers=auth)).status_code == 200  # the same report again
    async with db.connect() as conn:
        outs = (await conn.execute(sa.select(files).where(files.c.role == "output"))).all()
        job = (await conn.execute(sa.select(jobs).where(jobs.c.id == job_id))).one()
        attempt = (await conn.execute(sa.select(job_attempts))).one()
    # (recorded once; the oversight may already have checked it against the storage, where this test put nothing)
    assert [(f.lfn, f.events) for f in outs] == [(f"out/{job_id}/a.out", 2)]
    assert (job.status, job.exit_code) == ("finished", 0)
    assert (attempt.outcome, attempt.pilot_id) == ("finished", pilot_id)


async def test_only_the_holder_of_the_attempt_may_report(job_executor, db) -> None:
    (job_id,) = await make_jobs(db)
    holder, holder_auth = await register(job_executor)
    other, other_auth = await register(job_executor, host="wn2")
    await job_executor.post(f"/pilot/v1/pilots/{holder}/claim", headers=holder_auth)
    report = {"attempt": 1, "state": "finished", "exit_code": 0}
    refused = await job_executor.post(f"/pilot/v1/pilots/{other}/jobs/{job_id}/report", json=report, headers=other_auth)
    assert refused.status_code == 409 and refused.json()["current_state"] == "dispatched"
    stale = await job_executor.post(f"/pilot/v1/pilots/{holder}/jobs/{job_id}/report",
                                    json={**report, "attempt": 2}, headers=holder_auth)
    assert stale.status_code == 409
    # a pilot cannot speak for another one
    impostor = await job_executor.post(f"/pilot/v1/pilots/{holder}/jobs/{job_id}/report", json=report,
                                       headers=other_auth)
    assert impostor.status_code == 403


async def test_auth_and_unknown_pilot(job_executor, db) -> None:
    assert (await job_executor.post("/pilot/v1/pilots", json=REGISTRATION)).status_code == 401
    wfms = {"Authorization": f"Bearer {WFMS_TOKEN}"}
    assert (await job_executor.post("/pilot/v1/pilots", json=REGISTRATION, headers=wfms)).status_code == 403
    assert (await job_executor.post("/pilot/v1/pilots/999/claim", headers=PILOT)).status_code == 404
    bad = await job_executor.post("/pilot/v1/pilots", json={**REGISTRATION, "resource_type": "tpu"}, headers=PILOT)
    assert bad.status_code == 422
    pilot_id, auth = await register(job_executor)
    missing = await job_executor.post(f"/pilot/v1/pilots/{pilot_id}/claim", headers=PILOT)
    assert missing.status_code == 403
    assert (await job_executor.post(f"/pilot/v1/pilots/{pilot_id}/exit", headers=auth)).status_code == 204
    gone = await job_executor.post(f"/pilot/v1/pilots/{pilot_id}/claim", headers=auth)
    assert gone.status_code == 409 and "exited" in gone.json()["detail"]


async def test_priority_order_and_gpu_pilots_fall_back_to_cpu(job_executor, db) -> None:
    low, high, mid = await make_jobs(db, priorities=[1, 9, 5])
    (gpu_job,) = await make_jobs(db, resource_type="gpu")
    cpu_pilot, cpu_auth = await register(job_executor)
    gpu_pilot, gpu_auth = await register(job_executor, resource_type="gpu", gpus=1)
    assert (await job_executor.post(f"/pilot/v1/pilots/{cpu_pilot}/claim", headers=cpu_auth)).json()["job_id"] == high
    claims = []
    for _ in range(3):  # one job at a time: each is reported finished before the next claim
        spec = (await job_executor.post(f"/pilot/v1/pilots/{gpu_pilot}/claim", headers=gpu_auth)).json()
        claims.append(spec["job_id"])
        done = {"attempt": spec["attempt"], "state": "finished", "exit_code": 0}
        report = f"/pilot/v1/pilots/{gpu_pilot}/jobs/{spec['job_id']}/report"
        assert (await job_executor.post(report, json=done, headers=gpu_auth)).status_code == 200
    assert claims == [gpu_job, mid, low]  # GPU work first, then CPU work by priority


async def test_claims_fit_the_pilots_cores_and_memory(job_executor, db) -> None:
    async with db.begin() as conn:
        big = await insert_task(conn, status="running", output_dataset="big", cores=8, memory_mb=64000)
        (big_job,) = await insert_jobs(conn, big, 1, status="ready")
    small_pilot, small_auth = await register(job_executor, cores=4, memory_mb=8000)
    assert (await job_executor.post(f"/pilot/v1/pilots/{small_pilot}/claim", headers=small_auth)).status_code == 204
    large_pilot, large_auth = await register(job_executor, host="wn-big", cores=16, memory_mb=128000)
    claim = await job_executor.post(f"/pilot/v1/pilots/{large_pilot}/claim", headers=large_auth)
    assert claim.json()["job_id"] == big_job


async def test_heartbeat_tells_the_pilot_to_abort_a_cancelled_job(job_executor, db) -> None:
    (job_id,) = await make_jobs(db)
    pilot_id, auth = await register(job_executor)
    await job_executor.post(f"/pilot/v1/pilots/{pilot_id}/claim", headers=auth)
    beat = {"job_id": job_id, "attempt": 1}
    ok = await job_executor.post(f"/pilot/v1/pilots/{pilot_id}/heartbeat", json=beat, headers=auth)
    assert ok.json() == {"abort": False, "reason": None}
    async with db.begin() as conn:
        await conn.execute(sa.update(jobs).where(jobs.c.id == job_id).values(status="cancelled"))
    abort = (await job_executor.post(f"/pilot/v1/pilots/{pilot_id}/heartbeat", json=beat, headers=auth)).json()
    assert abort["abort"] is True and "cancelled" in abort["reason"]

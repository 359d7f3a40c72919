"""Hostile or broken pilots and clients (first part of the zero-trust work): what they say is checked, not
trusted; each attempt is refused with a clear 4xx and changes nothing."""
from __future__ import annotations

import os

import pytest
import sqlalchemy as sa

from common.db.models import files, jobs
from tests.conftest import OPERATOR_TOKEN, WFMS_TOKEN, running_app
from tests.factories import task_description
from tests.integration.test_job_executor_api import job_executor, make_jobs, output_of, register  # noqa: F401

WFMS = {"Authorization": f"Bearer {WFMS_TOKEN}"}
OPERATOR = {"Authorization": f"Bearer {OPERATOR_TOKEN}"}


class RunningJob:
    """A job a pilot holds and runs, and the door its reports go through: the exchange (what pilots speak) or
    protocol 1's single report (an adapter over the exchange); each hostile report is tried through both."""

    def __init__(self, client, spec: dict, pilot_id: int, auth: dict, door: str) -> None:
        self.client, self.spec, self.pilot_id, self.auth, self.door = client, spec, pilot_id, auth, door

    async def report(self, final: dict) -> int:
        """The report's status: the exchange's outcome for it, or protocol 1's HTTP status."""
        if self.door == "single-call":
            url = f"/pilot/v1/pilots/{self.pilot_id}/jobs/{self.spec['job_id']}/report"
            return (await self.client.post(url, json=final, headers=self.auth)).status_code
        reply = await self.client.post(f"/pilot/v1/pilots/{self.pilot_id}/exchange", headers=self.auth,
                                       json={"reports": [{"job_id": self.spec["job_id"], **final}]})
        if reply.status_code != 200:  # refused whole (malformed): nothing of it applied
            return reply.status_code
        (outcome,) = reply.json()["reports"]
        return int(outcome["status"])


@pytest.fixture(params=["exchange", "single-call"])
def door(request) -> str:
    return str(request.param)


async def _running_job(job_executor, db, door: str = "exchange") -> RunningJob:  # noqa: F811
    (job_id,) = await make_jobs(db)
    pilot_id, auth = await register(job_executor)
    reply = await job_executor.post(f"/pilot/v1/pilots/{pilot_id}/exchange", json={"want": 1}, headers=auth)
    (spec,) = reply.json()["jobs"]
    job = RunningJob(job_executor, spec, pilot_id, auth, door)
    assert await job.report({"attempt": 1, "state": "running"}) == 200
    return job


async def _unchanged(db, job_id: int) -> None:
    async with db.connect() as conn:
        status = (await conn.execute(sa.select(jobs.c.status).where(jobs.c.id == job_id))).scalar_one()
        staged = (await conn.execute(sa.select(sa.func.count()).where(files.c.role != "input"))).scalar_one()
    assert (status, staged) == ("running", 0)


@pytest.mark.parametrize("forge", [
    # another attempt's or another job's directory, a file elsewhere, a way out with '..'
    lambda spec: {**output_of(spec), "url": spec["output_url_prefix"].replace("/1/", "/2/") + "a.out"},
    lambda spec: {**output_of(spec), "url": "file:///etc/passwd"},
    lambda spec: {**output_of(spec), "url": spec["output_url_prefix"] + "../../other/a.out"},
    # a name outside its job: another job's lfn, taken first
    lambda spec: {**output_of(spec), "lfn": f"out/{spec['job_id'] + 1}/a.out"},
    lambda spec: {**output_of(spec), "lfn": "elsewhere/a.out"},
])
async def test_outputs_outside_the_attempt_are_refused(job_executor, db, forge, door) -> None:  # noqa: F811
    job = await _running_job(job_executor, db, door)
    final = {"attempt": 1, "state": "finished", "exit_code": 0, "outputs": [forge(job.spec)]}
    assert await job.report(final) == 422
    await _unchanged(db, job.spec["job_id"])


@pytest.mark.parametrize("url", ["file:///proc/self/environ", "file:///dev/zero"])
async def test_a_log_outside_the_attempt_is_refused(job_executor, db, url, door) -> None:  # noqa: F811
    job = await _running_job(job_executor, db, door)
    log = {"lfn": f"out.log/{job.spec['job_id']}.1.log", "url": url, "size": 1, "adler32": "00000001"}
    final = {"attempt": 1, "state": "failed", "error_category": "payload", "log": log}
    assert await job.report(final) == 422
    await _unchanged(db, job.spec["job_id"])


@pytest.mark.parametrize("lfn", ["out/1/../2/a.out", "/abs/a.out", "out//a.out", "./a.out"])
async def test_dot_dot_and_empty_lfn_parts_are_refused(job_executor, db, lfn, door) -> None:  # noqa: F811
    job = await _running_job(job_executor, db, door)
    final = {"attempt": 1, "state": "finished", "exit_code": 0, "outputs": [{**output_of(job.spec), "lfn": lfn}]}
    assert await job.report(final) == 422
    await _unchanged(db, job.spec["job_id"])


async def test_an_oversized_body_is_refused_with_413(job_executor) -> None:  # noqa: F811
    limit = job_executor.app.state.settings.max_request_bytes
    response = await job_executor.post("/pilot/v1/pilots", content=b"x" * (limit + 1),
                                       headers={"Content-Type": "application/json"})
    assert response.status_code == 413 and "larger than" in response.json()["detail"]


async def test_a_nul_character_in_a_url_is_422_not_a_database_error(task_manager, db) -> None:
    """Found by schemathesis: a NUL in a query parameter reached PostgreSQL (503 "database unavailable")."""
    for url in ("/api/v1/jobs?status=%00", "/api/v1/dead-letters?queue=a%00b", "/api/v1/tasks/1%00"):
        response = await task_manager.get(url, headers=OPERATOR)
        assert response.status_code == 422 and response.json()["detail"] == "NUL character in the URL", url


@pytest.mark.parametrize(("change", "reason"), [
    ({"output_dataset": ".."}, "output_dataset"),
    ({"input_dataset": "a..b"}, "input_dataset"),
    ({"output_dataset": "x/../y"}, "output_dataset"),
    ({"payload": {"command": "x", "env": {"LD_PRELOAD": "/tmp/evil.so"}}}, "LD_PRELOAD"),
    ({"payload": {"command": "x", "env": {"PATH": "/tmp"}}}, "PATH"),
    ({"payload": {"command": "x", "env": {"WMS_PILOT_TOKEN": "t"}}}, "WMS_PILOT_TOKEN"),
    ({"payload": {"command": "x", "container_image": "docker://evil"}}, "container_image"),
])
async def test_submissions_that_would_escape_are_refused(task_manager, db, change, reason) -> None:
    response = await task_manager.post("/api/v1/tasks", json=task_description(**change), headers=WFMS)
    assert response.status_code == 422 and reason in response.text


async def test_explain_reads_only_regular_files_under_the_storage_root(settings, db, tmp_path) -> None:
    """Log rows written by an older version (or by hand) may point anywhere: explain must not read them."""
    from services.task_manager.app import create_app
    from tests.factories import insert_jobs, insert_task

    storage = tmp_path / "storage"
    storage.mkdir()
    fifo = storage / "a.fifo"
    os.mkfifo(fifo)
    good = storage / "job.log"
    good.write_text("the payload said hello\n")
    urls = [f"file://{good}", "file:///proc/self/environ", "file:///dev/zero", f"file://{fifo}",
            f"file://{storage}/../outside.log"]
    (tmp_path / "outside.log").write_text("outside\n")
    async with db.begin() as conn:
        task_id = await insert_task(conn, output_dataset="o")
        job_ids = await insert_jobs(conn, task_id, len(urls), status="failed")
        for i, (job_id, url) in enumerate(zip(job_ids, urls, strict=True)):
            await conn.execute(sa.insert(files).values(lfn=f"o.log/{i}.log", dataset="o.log", task_id=task_id,
                                                       job_id=job_id, role="log", url=url, size=1,
                                                       adler32="00000001", status="registered"))
    async with running_app(create_app(settings.model_copy(update={"storage_root": str(storage)}))) as tm:
        tails = [(await tm.get(f"/api/v1/jobs/{job_id}/explain", headers=OPERATOR)).json()["log_tail"]
                 for job_id in job_ids]
    assert tails == ["the payload said hello\n", None, None, None, None]


@pytest.mark.parametrize("change", [{"memory_mb": True}, {"cores": "4"}, {"host": "wn\x00"}, {"version": "a b"}])
async def test_pilot_registrations_are_validated_strictly(job_executor, change) -> None:  # noqa: F811
    from tests.integration.test_job_executor_api import PILOT, REGISTRATION

    response = await job_executor.post("/pilot/v1/pilots", json={**REGISTRATION, **change}, headers=PILOT)
    assert response.status_code == 422, response.text


@pytest.mark.parametrize("url", ["not a url at all", "file:///data/a\x00b", "file:///with space", ""])
async def test_the_dsm_refuses_a_file_url_that_is_not_one(dsm_url, url) -> None:
    import httpx

    from tests.conftest import SERVICE_TOKEN

    auth = {"Authorization": f"Bearer {SERVICE_TOKEN}"}
    async with httpx.AsyncClient(base_url=dsm_url) as client:
        created = await client.post("/dsm/v1/datasets", json={"name": "spd.raw.v"}, headers=auth)
        assert created.status_code in (200, 201)
        entry = {"lfn": "spd.raw.v/a", "url": url, "size": 1, "adler32": "00000001"}
        response = await client.post("/dsm/v1/datasets/spd.raw.v/files", json={"files": [entry]},
                                     headers=auth)
    assert response.status_code == 422, response.text


@pytest.mark.parametrize("token", [WFMS_TOKEN, OPERATOR_TOKEN])
async def test_only_the_service_role_writes_to_the_dsm(dsm_url, dsm, token) -> None:
    import httpx

    await dsm.create_dataset("spd.raw.w")
    auth = {"Authorization": f"Bearer {token}"}
    entry = {"lfn": "spd.raw.w/a", "url": "file:///data/a", "size": 1, "adler32": "00000001"}
    async with httpx.AsyncClient(base_url=dsm_url) as client:
        writes = [await client.post("/dsm/v1/datasets", json={"name": "spd.raw.x"}, headers=auth),
                  await client.post("/dsm/v1/datasets/spd.raw.w/files", json={"files": [entry]}, headers=auth),
                  await client.post("/dsm/v1/datasets/spd.raw.w/close", headers=auth)]
        read = await client.get("/dsm/v1/datasets/spd.raw.w", headers=auth)
    assert [w.status_code for w in writes] == [403, 403, 403]
    assert read.status_code == 200 and read.json()["status"] == "open" and read.json()["n_files"] == 0


async def test_the_server_enforces_wall_time(settings, db, tmp_path) -> None:
    """A pilot that lets its payload run past the wall time (broken, hostile, frozen) is overruled."""
    from services.job_executor.app import create_app

    tuned = settings.model_copy(update={"storage_root": str(tmp_path), "oversight_interval_s": 60,
                                        "job_wall_time_s": 5, "wall_time_grace_s": 1.0})
    async with running_app(create_app(tuned)) as je:
        (job_id,) = await make_jobs(db)
        pilot_id, auth = await register(je)
        await je.post(f"/pilot/v1/pilots/{pilot_id}/exchange", json={"want": 1}, headers=auth)
        oversight = je.app.state.oversight
        assert await oversight.sweep_overrun_jobs() == 0  # within its wall time
        async with db.begin() as conn:
            await conn.execute(sa.update(jobs).where(jobs.c.id == job_id)
                               .values(started_at=sa.func.now() - sa.text("interval '10 seconds'")))
        assert await oversight.sweep_overrun_jobs() == 1
        async with db.connect() as conn:
            job = (await conn.execute(sa.select(jobs).where(jobs.c.id == job_id))).one()
        assert (job.status, job.error_category) == ("ready", "timeout")  # retried within max_attempts
        beat = await je.post(f"/pilot/v1/pilots/{pilot_id}/exchange", json={"running": [
            {"job_id": job_id, "attempt": 1}]}, headers=auth)
        assert [o["job_id"] for o in beat.json()["abort"]] == [job_id]  # the pilot is told to kill its payload


async def test_staged_files_are_verified_on_storage_before_registration(job_executor, db, tmp_path) -> None:  # noqa: F811
    """A pilot that reports a size or checksum its file does not have (or a file that is not there) gets it
    rejected, with the reason, and the DSM never hears of it."""
    from pathlib import Path

    from common.checksums import adler32_of

    job = await _running_job(job_executor, db)
    spec = job.spec
    directory = Path(spec["output_url_prefix"].removeprefix("file://"))
    directory.mkdir(parents=True)
    (directory / "good.out").write_bytes(b"abc")
    (directory / "lying.out").write_bytes(b"abc")
    outputs = [{**output_of(spec, "good.out"), "size": 3, "adler32": adler32_of(directory / "good.out")},
               {**output_of(spec, "lying.out"), "size": 3, "adler32": "0badc0de"},
               {**output_of(spec, "missing.out"), "size": 3, "adler32": "00000001"}]
    final = {"attempt": 1, "state": "finished", "exit_code": 0, "outputs": outputs}
    assert await job.report(final) == 200
    await job_executor.app.state.oversight.register_staged_files()  # (the DSM of this test is unreachable)
    async with db.connect() as conn:
        rows = (await conn.execute(sa.select(files).where(files.c.role == "output"))).all()
        task_error = (await conn.execute(sa.text("SELECT error FROM task_dat"))).scalar_one()
    by_name = {r.lfn.rsplit("/", 1)[1]: r for r in rows}
    assert by_name["good.out"].status == "staged"  # verified; waits for the DSM, which is down here
    assert (by_name["lying.out"].status, by_name["missing.out"].status) == ("rejected", "rejected")
    assert "adler32 " in by_name["lying.out"].error and "0badc0de" in by_name["lying.out"].error
    assert "cannot be read" in by_name["missing.out"].error
    assert task_error.startswith("an output was refused")


def test_registration_limiter_is_a_token_bucket_per_credential() -> None:
    from services.job_executor.pilot_sessions import RegistrationLimiter, TooManyRegistrations

    limiter = RegistrationLimiter(rate_per_s=2.0, burst=3)
    for _ in range(3):
        limiter.take("a", now=100.0)
    with pytest.raises(TooManyRegistrations) as refused:
        limiter.take("a", now=100.0)
    assert refused.value.retry_after_s == pytest.approx(0.5)
    limiter.take("b", now=100.0)  # another credential has its own bucket
    limiter.take("a", now=100.5)  # half a second later: one more token
    with pytest.raises(TooManyRegistrations):
        limiter.take("a", now=100.5)


async def test_pilot_registrations_are_rate_limited_per_credential(settings, db, tmp_path) -> None:
    from services.job_executor.app import create_app
    from tests.integration.test_job_executor_api import PILOT, REGISTRATION

    tuned = settings.model_copy(update={"storage_root": str(tmp_path), "oversight_interval_s": 60,
                                        "pilot_registrations_per_s": 0.01, "pilot_registration_burst": 2})
    async with running_app(create_app(tuned)) as je:
        codes = [(await je.post("/pilot/v1/pilots", json=REGISTRATION, headers=PILOT)).status_code
                 for _ in range(3)]
    assert codes == [201, 201, 429]

"""Protocol 2: one exchange per pilot cycle carries reports, heartbeats and a claim of several jobs."""
from __future__ import annotations

import asyncio

import sqlalchemy as sa

from common.db.models import files, job_attempts, jobs, tasks
from tests.integration import test_job_executor_api as api
from tests.integration.test_job_executor_api import make_jobs, output_of, register

job_executor = api.job_executor  # the same in-process job-executor fixture


async def exchange(client, pilot_id: int, auth: dict, **body) -> dict:
    response = await client.post(f"/pilot/v1/pilots/{pilot_id}/exchange", json=body, headers=auth)
    assert response.status_code == 200, response.text
    return response.json()


async def test_a_multi_slot_pilot_claims_what_fits_its_free_slots_cores_and_memory(job_executor, db) -> None:
    await make_jobs(db, 6)
    pilot_id, auth = await register(job_executor, cores=4, memory_mb=8000, slots=3)
    first = await exchange(job_executor, pilot_id, auth, want=8)
    assert len(first["jobs"]) == 3  # its slots, not what it asked for
    assert (await exchange(job_executor, pilot_id, auth, want=8))["jobs"] == []  # full
    async with db.begin() as conn:  # bigger jobs: a 2-core, 3000 MB task
        await conn.execute(sa.update(tasks).values(cores=2, memory_mb=3000))
    other_id, other = await register(job_executor, host="wn2", cores=4, memory_mb=8000, slots=4)
    got = await exchange(job_executor, other_id, other, want=4)
    assert len(got["jobs"]) == 2  # 2 x 2 cores fill its 4 cores
    async with db.connect() as conn:
        attempts = (await conn.execute(sa.select(sa.func.count()).select_from(job_attempts))).scalar_one()
    assert attempts == 5


async def test_reports_are_applied_in_bulk_each_with_its_own_outcome(job_executor, db) -> None:
    await make_jobs(db, 3)
    pilot_id, auth = await register(job_executor, slots=3)
    specs = (await exchange(job_executor, pilot_id, auth, want=3))["jobs"]
    a, b, c = specs
    running = [{"job_id": s["job_id"], "attempt": s["attempt"], "state": "running"} for s in specs]
    reply = await exchange(job_executor, pilot_id, auth, reports=running)
    assert [r["status"] for r in reply["reports"]] == [200, 200, 200]
    outside = {**output_of(b), "url": "file:///proc/self/environ"}
    reply = await exchange(job_executor, pilot_id, auth, reports=[
        {"job_id": a["job_id"], "attempt": 1, "state": "finished", "exit_code": 0, "outputs": [output_of(a)]},
        {"job_id": b["job_id"], "attempt": 1, "state": "finished", "exit_code": 0, "outputs": [outside]},
        {"job_id": c["job_id"], "attempt": 1, "state": "failed", "exit_code": 3, "error_category": "payload",
         "error_message": "boom"},
        {"job_id": a["job_id"], "attempt": 1, "state": "finished", "exit_code": 0, "outputs": [output_of(a)]},
    ], running=[{"job_id": b["job_id"], "attempt": 1}])
    assert [r["status"] for r in reply["reports"]] == [200, 422, 200, 200]  # the repeat of a is no error
    assert "storage directory" in reply["reports"][1]["detail"]
    assert reply["abort"] == []
    async with db.connect() as conn:
        states = dict((await conn.execute(sa.select(jobs.c.id, jobs.c.status))).all())
        staged = (await conn.execute(sa.select(files.c.lfn).where(files.c.role == "output"))).scalars().all()
    assert states == {a["job_id"]: "finished", b["job_id"]: "running", c["job_id"]: "ready"}  # c retried
    assert staged == [f"out/{a['job_id']}/a.out"]
    # another pilot's report, and a beat for a job this pilot no longer holds
    other_id, other = await register(job_executor, host="wn2")
    reply = await exchange(job_executor, other_id, other,
                           reports=[{"job_id": b["job_id"], "attempt": 1, "state": "finished", "exit_code": 0}],
                           running=[{"job_id": c["job_id"], "attempt": 1}])
    assert reply["reports"][0]["status"] == 409 and "no longer current" in reply["reports"][0]["detail"]
    assert [(o["job_id"], o["attempt"]) for o in reply["abort"]] == [(c["job_id"], 1)]


async def test_a_claim_waits_for_work_and_is_woken_when_a_job_becomes_ready(job_executor, db) -> None:
    pilot_id, auth = await register(job_executor)
    waiting = asyncio.create_task(exchange(job_executor, pilot_id, auth, want=1, wait_s=10))
    await asyncio.sleep(1.0)
    assert not waiting.done()  # nothing ready: the claim waits instead of answering "no work"
    (job_id,) = await make_jobs(db, 1)
    reply = await asyncio.wait_for(waiting, 5)
    assert [j["job_id"] for j in reply["jobs"]] == [job_id]
    idle = await exchange(job_executor, pilot_id, auth, want=0, wait_s=10)  # wants nothing: answers at once
    assert idle["jobs"] == []


async def test_an_announcement_of_ready_jobs_wakes_a_waiting_claim_without_its_poll(job_executor, db,
                                                                                  monkeypatch) -> None:
    """The poll is pushed past the claim's wait: only the job-manager's announcement (a PostgreSQL notification
    delivered at commit) can wake it; without one the claim would end empty."""
    from common.db import ready_jobs
    from services.job_executor import exchange as exchange_module

    monkeypatch.setattr(exchange_module, "READY_POLL_S", 60.0)
    pilot_id, auth = await register(job_executor)
    watcher = job_executor.app.state.exchanges.watcher
    for _ in range(100):  # the listener takes its connection at start-up
        if watcher.listener.listening:
            break
        await asyncio.sleep(0.05)
    assert watcher.listener.listening
    waiting = asyncio.create_task(exchange(job_executor, pilot_id, auth, want=1, wait_s=8))
    await asyncio.sleep(0.5)  # the claim waits, and its watcher has taken its one (first) look
    (job_id,) = await make_jobs(db, 1)
    await asyncio.sleep(0.5)
    assert not waiting.done()  # a job became ready unannounced: nothing wakes the claim before its poll
    async with db.begin() as conn:
        await ready_jobs.announce(conn, ready_jobs.Ready("gpu", 1))
    await asyncio.sleep(1.0)
    assert not waiting.done()  # a CPU pilot is not woken for GPU jobs
    async with db.begin() as conn:
        await ready_jobs.announce(conn, ready_jobs.Ready("cpu", 1))
    reply = await asyncio.wait_for(waiting, 5)
    assert [j["job_id"] for j in reply["jobs"]] == [job_id]


async def test_a_wake_up_that_finds_nothing_keeps_the_claim_waiting(job_executor, db) -> None:
    """Wake-ups can be spurious (a listener that reconnects wakes everybody; another pilot takes the jobs first):
    a claim that finds nothing waits on for the rest of its time instead of answering "no work". Found in CI: the
    listener's start-up wake-up ended a claim that had just begun to wait."""
    from common.db import ready_jobs

    pilot_id, auth = await register(job_executor)
    watcher = job_executor.app.state.exchanges.watcher
    for _ in range(100):
        if watcher.listener.listening:
            break
        await asyncio.sleep(0.05)
    assert watcher.listener.listening
    waiting = asyncio.create_task(exchange(job_executor, pilot_id, auth, want=1, wait_s=8))
    await asyncio.sleep(0.5)
    async with db.begin() as conn:
        await ready_jobs.announce(conn)  # "something may be ready" for everybody, and nothing is
    await asyncio.sleep(1.0)
    assert not waiting.done()
    (job_id,) = await make_jobs(db, 1)
    reply = await asyncio.wait_for(waiting, 5)
    assert [j["job_id"] for j in reply["jobs"]] == [job_id]


async def test_a_job_reported_ended_in_an_exchange_gets_no_abort_order_there(job_executor, db) -> None:
    """Issue 22, finding 3: every successful job logged "abort requested ... no longer this pilot's" in the same
    millisecond as "job finished" (104 of 104 jobs): the pilot's exchange carried the job's final report and its
    beat, and the beat, applied after the report, found the job no longer held. A job ended by a report of the
    same exchange is not aborted; a job that really is no longer the pilot's still is."""
    await make_jobs(db, 3)
    pilot_id, auth = await register(job_executor, slots=3)
    a, b, c = (await exchange(job_executor, pilot_id, auth, want=3))["jobs"]
    await exchange(job_executor, pilot_id, auth,
                   reports=[{"job_id": s["job_id"], "attempt": 1, "state": "running"} for s in (a, b, c)])
    async with db.begin() as conn:  # c is cancelled meanwhile: no longer this pilot's
        await conn.execute(sa.update(jobs).where(jobs.c.id == c["job_id"]).values(status="cancelled"))
    reply = await exchange(job_executor, pilot_id, auth, reports=[
        {"job_id": a["job_id"], "attempt": 1, "state": "finished", "exit_code": 0, "outputs": [output_of(a)]},
        {"job_id": b["job_id"], "attempt": 1, "state": "failed", "exit_code": 3, "error_category": "payload",
         "error_message": "boom"},
    ], running=[{"job_id": s["job_id"], "attempt": 1} for s in (a, b, c)])
    assert [r["status"] for r in reply["reports"]] == [200, 200]
    assert [(o["job_id"], o["attempt"]) for o in reply["abort"]] == [(c["job_id"], 1)]


async def test_a_beat_writes_only_heartbeats_that_are_getting_old(job_executor, db) -> None:
    """Issue 23: a beat rewrote every held job's row on every exchange. Now it writes a job's heartbeat only when
    the last one is older than a quarter of the pilot timeout; a fresh job still counts as held (no abort)."""
    await make_jobs(db, 2)
    pilot_id, auth = await register(job_executor, slots=2)
    fresh, old = (await exchange(job_executor, pilot_id, auth, want=2))["jobs"]
    timeout = job_executor.app.state.settings.pilot_timeout_s
    async with db.begin() as conn:
        await conn.execute(sa.update(jobs).where(jobs.c.id == fresh["job_id"]).values(
            heartbeat_at=sa.func.now() - sa.func.make_interval(0, 0, 0, 0, 0, 0, timeout * 0.1)))
        await conn.execute(sa.update(jobs).where(jobs.c.id == old["job_id"]).values(
            heartbeat_at=sa.func.now() - sa.func.make_interval(0, 0, 0, 0, 0, 0, timeout * 0.5)))
        before = dict((await conn.execute(sa.select(jobs.c.id, jobs.c.heartbeat_at))).all())
    reply = await exchange(job_executor, pilot_id, auth,
                           running=[{"job_id": s["job_id"], "attempt": 1} for s in (fresh, old)])
    assert reply["abort"] == []
    async with db.connect() as conn:
        after = dict((await conn.execute(sa.select(jobs.c.id, jobs.c.heartbeat_at))).all())
    assert after[fresh["job_id"]] == before[fresh["job_id"]]  # not rewritten
    assert after[old["job_id"]] > before[old["job_id"]]  # renewed


async def test_a_single_slot_pilot_prefetches_what_its_queue_allows_and_wall_time_counts_from_the_start(
        settings, db, tmp_path) -> None:
    """Prefetch (WMS_PILOT_PREFETCH, per queue): a 1-slot pilot holds up to 1 + prefetch jobs, each of which fits
    it on its own; a prefetched job is dispatched (waiting on the node), and its wall time counts from its start:
    waiting, it is overruled only after (prefetch + 1) wall times."""
    from services.job_executor.app import create_app
    from tests.conftest import running_app

    tuned = settings.model_copy(update={"storage_root": str(tmp_path), "oversight_interval_s": 60,
                                        "pilot_prefetch": {"cpu": 2, "gpu": 0}, "job_wall_time_s": 5,
                                        "wall_time_grace_s": 1.0})
    async with running_app(create_app(tuned)) as je:
        big = await make_jobs(db, 1)  # a job larger than the pilot: never prefetched, whatever the budget
        async with db.begin() as conn:
            await conn.execute(sa.update(tasks).where(tasks.c.id == sa.select(jobs.c.task_id).where(
                jobs.c.id == big[0]).scalar_subquery()).values(cores=5))
        small = await make_jobs(db, 4)
        response = await je.post("/pilot/v1/pilots", json={**api.REGISTRATION, "slots": 1, "cores": 4},
                                 headers=api.PILOT)
        assert response.json()["prefetch"] == 2  # the pilot learns what its queue allows
        pilot_id = response.json()["pilot_id"]
        auth = {**api.PILOT, "X-Pilot-Session": response.json()["session"]}
        got = (await exchange(je, pilot_id, auth, want=8))["jobs"]
        assert [j["job_id"] for j in got] == small[:3]  # 1 slot + 2 prefetched, the big one left
        assert (await exchange(je, pilot_id, auth, want=8))["jobs"] == []  # it holds all it may
        first, waiting, _ = got
        await exchange(je, pilot_id, auth, reports=[{"job_id": first["job_id"], "attempt": 1, "state": "running"}])

        async def ago(job_id: int, seconds: float) -> None:
            async with db.begin() as conn:
                await conn.execute(sa.update(jobs).where(jobs.c.id == job_id).values(
                    started_at=sa.func.now() - sa.func.make_interval(0, 0, 0, 0, 0, 0, seconds)))
        oversight = je.app.state.oversight
        await ago(waiting["job_id"], 12)  # waited longer than one wall time, less than three: still fine
        await ago(first["job_id"], 4)  # started running 4 s ago: within its wall time
        assert await oversight.sweep_overrun_jobs() == 0
        await ago(first["job_id"], 7)
        await ago(waiting["job_id"], 20)
        assert await oversight.sweep_overrun_jobs() == 2
        async with db.connect() as conn:
            states = dict((await conn.execute(sa.select(jobs.c.id, jobs.c.error_category).where(
                jobs.c.id.in_([first["job_id"], waiting["job_id"]])))).all())
        assert set(states.values()) == {"timeout"}


async def test_without_prefetch_a_pilot_holds_only_its_slots(job_executor, db) -> None:
    await make_jobs(db, 3)
    response = await job_executor.post("/pilot/v1/pilots", json={**api.REGISTRATION, "slots": 1},
                                       headers=api.PILOT)
    assert response.json()["prefetch"] == 0
    pilot_id, auth = response.json()["pilot_id"], {**api.PILOT, "X-Pilot-Session": response.json()["session"]}
    assert len((await exchange(job_executor, pilot_id, auth, want=8))["jobs"]) == 1

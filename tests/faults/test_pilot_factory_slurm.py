"""The pilot factory on a real (single-node) Slurm cluster: a task runs entirely on pilots it submitted; a running
pilot's batch job is cancelled under it (scancel) and its jobs are retried elsewhere; the factory is SIGKILLed and
restarted mid-run and finds its submissions instead of submitting again; when the backlog is gone, the queued
pilots are withdrawn and the running ones end by their idle limit."""
from __future__ import annotations

import asyncio
import datetime as dt
import json
import os
import signal
import subprocess

import pytest
import sqlalchemy as sa

from common.db.models import job_attempts, jobs, pilot_submissions, pilots
from tests.conftest import PILOT_TOKEN, wait_for
from tests.faults.harness import copy_payload, fault_run

pytestmark = pytest.mark.e2e
MAX_RUNNING = 4
N_FILES = 24  # 12 jobs of 2 files
PAYLOAD_S = 8.0  # longer than Slurm's KillWait (5 s): a cancelled pilot's payload is killed, not finished


async def test_a_task_runs_on_pilots_the_factory_submits_to_slurm(postgres_server_url, amqp_url, tmp_path,
                                                                   slurm_cluster) -> None:
    queues = tmp_path / "queues.json"
    queues.write_text(json.dumps([{
        "name": "cpu1", "batch_system": "slurm", "resource_type": "cpu", "cores": 1, "memory_mb": 4000, "slots": 2,
        "max_running": MAX_RUNNING, "max_queued": 2, "max_submit_per_cycle": 2, "pilot_idle_limit_s": 6,
        "pilot_env": {"WMS_PILOT_WORKDIR": str(tmp_path / "pilots"), "WMS_PILOT_IDLE_POLL_S": "0.2",
                      "WMS_PILOT_REQUEST_TIMEOUT_S": "5", "WMS_PILOT_RETRY_MAX_S": "1", "WMS_PILOT_LONG_POLL_S": "1"},
    }]))
    slurm_env = {**os.environ, "SLURM_CONF": str(slurm_cluster)}
    async with fault_run(postgres_server_url, amqp_url, tmp_path) as run:
        d = run.deployment
        factory_env = {"SLURM_CONF": str(slurm_cluster), "WMS_FACTORY_QUEUES_FILE": str(queues),
                       "WMS_FACTORY_INTERVAL_S": "1", "WMS_FACTORY_LOG_DIR": str(tmp_path / "batch-logs"),
                       "WMS_FACTORY_PILOT_SERVER_URLS": d.url("wms-job-executor"),
                       "WMS_FACTORY_PILOT_AMQP_URL": amqp_url, "WMS_FACTORY_PILOT_TOKEN": PILOT_TOKEN}
        await run.start_services()
        await run.make_dataset("raw.factory", N_FILES)
        task_id = await run.submit("raw.factory", "out.factory", payload=copy_payload(PAYLOAD_S))
        await d.start("wms-pilot-factory", **factory_env)  # no pilot is started by the test: Slurm runs them all

        async def live_submissions() -> list[sa.Row]:
            async with run.engine.connect() as conn:
                return list((await conn.execute(sa.select(pilot_submissions).where(
                    pilot_submissions.c.status.in_(["intended", "queued", "running"])))).all())

        async def busy_slurm_pilot() -> sa.Row | None:
            async with run.engine.connect() as conn:
                return (await conn.execute(sa.select(pilots).where(
                    pilots.c.status == "busy", pilots.c.batch_system == "slurm"))).first()

        victim = await wait_for(busy_slurm_pilot, timeout=120)
        await asyncio.sleep(1)  # its payloads under way
        async with run.engine.connect() as conn:
            victim_jobs = set((await conn.execute(sa.select(jobs.c.id).where(
                jobs.c.pilot_id == victim.id, jobs.c.status.in_(["dispatched", "running"])))).scalars())
        subprocess.run(["scancel", victim.batch_job_id], env=slurm_env, check=True, timeout=30)

        d.kill("wms-pilot-factory", signal.SIGKILL)
        async with run.engine.connect() as conn:
            submitted_before = (await conn.execute(sa.select(sa.func.count()).select_from(pilot_submissions))).scalar()
        await d.start("wms-pilot-factory", **factory_env)
        peak = 0
        for _ in range(20):  # the restarted factory counts what it had: never more live pilots than allowed
            peak = max(peak, len(await live_submissions()))
            await asyncio.sleep(0.25)
        assert peak <= MAX_RUNNING

        await run.wait_ended(task_id, timeout=240)
        await run.audit(task_id, N_FILES)

        # the backlog is gone: queued pilots withdrawn, running ones end by their idle limit
        await wait_for(lambda: _none(live_submissions()), timeout=90)
        async with run.engine.connect() as conn:
            submissions = (await conn.execute(sa.select(pilot_submissions))).all()
            slurm_pilots = (await conn.execute(sa.select(pilots))).all()
            victim_after = (await conn.execute(sa.select(pilots).where(pilots.c.id == victim.id))).one()
            retried = (await conn.execute(sa.select(job_attempts).where(
                job_attempts.c.job_id.in_(victim_jobs)))).all()
        by_status: dict[str, int] = {}
        for s in submissions:
            by_status[s.status] = by_status.get(s.status, 0) + 1
        assert set(by_status) <= {"ended", "withdrawn"}, by_status
        assert by_status.get("withdrawn", 0) >= 1, by_status  # two waited in the queue at the end
        assert len(submissions) >= submitted_before
        # every pilot ran in a batch job the factory submitted (none was started otherwise)
        batch_ids = {s.batch_job_id for s in submissions}
        assert slurm_pilots and all(p.batch_system == "slurm" and p.batch_job_id in batch_ids for p in slurm_pilots)
        # the cancelled pilot (scancel: SIGTERM, then SIGKILL after KillWait): exited if it wound down in time, dead
        # otherwise, with how its batch job ended; its interrupted jobs were retried and finished once
        assert victim_after.status in ("exited", "dead") and victim_after.batch_state == "CANCELLED", victim_after
        cancelled = next(s for s in submissions if s.batch_job_id == victim.batch_job_id)
        assert (cancelled.status, cancelled.batch_state) == ("ended", "CANCELLED")
        for job_id in victim_jobs:
            outcomes = sorted(a.outcome for a in retried if a.job_id == job_id)
            assert len(outcomes) >= 2 and outcomes.count("finished") == 1, (job_id, outcomes)


async def _none(rows) -> bool:
    return not await rows


async def test_a_restarted_factory_finds_its_submissions_by_name_and_never_submits_them_twice(
        settings, db, tmp_path, slurm_cluster, monkeypatch) -> None:
    """A factory that died between recording its intent and recording the batch job id: the job is found by its
    name and followed; an intent the batch system never saw is closed as unsubmitted once past its grace (a fresh
    one is left alone: it may be being submitted)."""
    from services.pilot_factory.batch import slurm
    from services.pilot_factory.factory import Factory
    from services.pilot_factory.queues import SiteQueue
    from services.pilot_factory.settings import FactorySettings

    monkeypatch.setenv("SLURM_CONF", str(slurm_cluster))
    factory_settings = FactorySettings(**settings.model_dump(), factory_intent_grace_s=30)
    queue = SiteQueue(name="cpu1", batch_system="slurm", memory_mb=500, max_running=0)  # submits nothing itself
    factory = Factory(db, factory_settings, [queue], {"slurm": slurm.create(factory_settings)})
    names = {k: f"{factory.prefix}cpu1-{k}" for k in ("submitted", "never", "fresh")}
    script = "#!/bin/sh\nsleep 60\n"
    sbatch = subprocess.run(["sbatch", "--parsable", f"--job-name={names['submitted']}", "--mem=100",
                             f"--output={tmp_path}/%j.log"], input=script, capture_output=True, text=True,
                            check=True, timeout=30)
    job_id = sbatch.stdout.strip()
    try:
        async with db.begin() as conn:
            for key, age_s in (("submitted", 60), ("never", 3600), ("fresh", 0)):
                await conn.execute(sa.insert(pilot_submissions).values(
                    queue="cpu1", resource_type="cpu", batch_system="slurm", batch_name=names[key],
                    created_at=sa.func.now() - dt.timedelta(seconds=age_s)))
        await factory.follow()  # the restarted factory's first look (its cycle would then withdraw the queued one)
        async with db.connect() as conn:
            rows = {r.batch_name: r for r in (await conn.execute(sa.select(pilot_submissions))).all()}
        found = rows[names["submitted"]]
        assert found.status in ("queued", "running") and found.batch_job_id == job_id, found
        assert rows[names["never"]].status == "unsubmitted" and "never submitted" in rows[names["never"]].error
        assert rows[names["fresh"]].status == "intended"
        assert len(rows) == 3  # nothing submitted anew
    finally:
        subprocess.run(["scancel", job_id], timeout=30)
        await factory.close()

"""Faults around pilots and the job-executor: a job-executor SIGKILLed during a storm of claims (REST and MQ
pilots), staging that outlasts three heartbeat timeouts, a zombie pilot that writes its outputs late, and a
burst of pause/resume commands. Everything runs as OS processes; see harness.py for the end-of-run audit."""
from __future__ import annotations

import asyncio
import signal
from pathlib import Path

import httpx
import pytest
import sqlalchemy as sa

from common.db.models import jobs
from tests.conftest import OPERATOR_TOKEN, wait_for
from tests.faults.harness import FILES_PER_JOB, N_FILES, copy_payload, fault_run, now_utc, record

pytestmark = pytest.mark.e2e
N_JOBS = N_FILES // FILES_PER_JOB


async def test_job_executor_sigkilled_during_a_storm_of_claims(postgres_server_url, amqp_url, tmp_path) -> None:
    async with fault_run(postgres_server_url, amqp_url, tmp_path) as run:
        await run.start_services()
        await run.make_dataset("raw.storm")
        task_id = await run.submit("raw.storm", "out.storm", payload=copy_payload(sleep_s=0.0))
        for channel in ("rest", "rest", "rest", "mq", "mq", "mq"):
            run.start_pilot(channel)
        await run.wait_finished_jobs(task_id, N_JOBS // 4)
        run.deployment.kill("wms-job-executor", signal.SIGKILL)
        await asyncio.sleep(1.0)  # pilots meet a dead server: connection refused, MQ requests pile up
        await run.start_services("wms-job-executor")
        fault_end = now_utc()
        await run.wait_ended(task_id)
        await run.audit(task_id)
        await run.audit_system()
        attempts = await run.attempts(task_id)
        # no claim produced a second job: each job ran exactly once, and no attempt was lost
        assert len(attempts) == N_JOBS and {a.outcome for a in attempts} == {"finished"}
        assert run.pilots_alive() == []
        record("job-executor SIGKILL during claims (3 REST + 3 MQ pilots)",
               "SIGKILL of the job-executor, restarted 1 s later", "done; every job exactly one attempt",
               await run.recovery_s(fault_end))


async def test_staging_longer_than_three_heartbeat_timeouts(postgres_server_url, amqp_url, tmp_path) -> None:
    # 200 files of 20 kB, 50 per job: 1 MB per job; at 0.25 MB/s a job stages ~12 s (checksums in, copy and
    # checksums out), more than three pilot timeouts (3 s): only heartbeats sent while staging keep it alive.
    async with fault_run(postgres_server_url, amqp_url, tmp_path) as run:
        await run.start_services()
        await run.make_dataset("raw.slow", size=20_000)
        task_id = await run.submit("raw.slow", "out.slow", split={"by": "files", "size": 50})
        for channel in ("rest", "rest", "mq", "mq"):
            run.start_pilot(channel, WMS_PILOT_STAGE_BANDWIDTH_MBPS="0.25")
        await run.wait_ended(task_id, timeout=240)
        await run.audit(task_id)
        await run.audit_system()
        attempts = await run.attempts(task_id)
        assert len(attempts) == 4 and {a.outcome for a in attempts} == {"finished"}  # none declared lost
        longest = max((a.finished_at - a.started_at).total_seconds() for a in attempts)
        assert longest > 3 * 3.0, longest  # staging really outlasted three timeouts
        record("staging longer than 3 heartbeat timeouts", f"staging at 0.25 MB/s: jobs of {longest:.0f} s, "
               "pilot timeout 3 s", "done; no attempt declared lost", None)


async def test_zombie_pilot_writes_late_and_overwrites_nothing(postgres_server_url, amqp_url, tmp_path) -> None:
    async with fault_run(postgres_server_url, amqp_url, tmp_path) as run:
        await run.start_services()
        await run.make_dataset("raw.zombie")
        task_id = await run.submit("raw.zombie", "out.zombie", payload=copy_payload(sleep_s=1.5))
        zombie = run.start_pilot("rest")

        async def zombie_running() -> sa.Row | None:
            async with run.engine.connect() as conn:
                return (await conn.execute(sa.select(jobs.c.id, jobs.c.attempt).where(
                    jobs.c.task_id == task_id, jobs.c.status == "running"))).first()

        victim = await wait_for(zombie_running, timeout=60)
        zombie.send_signal(signal.SIGSTOP)  # frozen while its payload (own session) goes on and finishes
        for _ in range(3):
            run.start_pilot("rest")
        # the job is declared lost, retried elsewhere, and its outputs registered
        async def retried_and_registered() -> bool:
            async with run.engine.connect() as conn:
                job = (await conn.execute(sa.select(jobs.c.status, jobs.c.attempt).where(
                    jobs.c.id == victim.id))).one()
            return job.status == "finished" and job.attempt > victim.attempt
        await wait_for(retried_and_registered, timeout=60)
        await run.wait_ended(task_id)
        zombie.send_signal(signal.SIGCONT)  # it stages out late and reports: refused, its files removed
        assert await asyncio.to_thread(zombie.wait, 60) == 4  # exit 4: declared dead
        await run.audit(task_id)  # the registered outputs are intact on storage (size and adler32)
        await run.audit_system()
        late_dir = Path(run.deployment.env["WMS_STORAGE_ROOT"]) / "out.zombie" / str(victim.id) / str(victim.attempt)
        assert not [p for p in late_dir.rglob("*") if p.is_file()], "the zombie left files behind"
        record("zombie pilot (SIGSTOP past the timeout, SIGCONT after the retry was registered)",
               "SIGSTOP 1 pilot mid-job", "done; late outputs went to the stale attempt's directory, refused "
               "and removed; registered files intact", None)


async def test_fifty_alternating_pause_resume_calls(postgres_server_url, amqp_url, tmp_path) -> None:
    async with fault_run(postgres_server_url, amqp_url, tmp_path) as run:
        await run.start_services()
        await run.make_dataset("raw.steer")
        task_id = await run.submit("raw.steer", "out.steer")
        for channel in ("rest", "rest", "mq"):
            run.start_pilot(channel)
        await run.wait_finished_jobs(task_id, 5)
        operator = {"Authorization": f"Bearer {OPERATOR_TOKEN}"}
        async with httpx.AsyncClient(base_url=run.deployment.url("wms-task-manager"), timeout=30) as client:
            async def command(i: int) -> int:
                verb = "pause" if i % 2 == 0 else "resume"
                return (await client.post(f"/api/v1/tasks/{task_id}/{verb}", headers=operator)).status_code
            # sent in order, without waiting for their events to be applied: the deliveries race
            codes = [await command(i) for i in range(50)]
        assert set(codes) <= {200, 409}
        fault_end = now_utc()
        assert (await run.task(task_id)).status == "running"  # the last call was a resume

        async def none_held() -> bool:
            async with run.engine.connect() as conn:
                return (await conn.execute(sa.select(sa.func.count()).where(
                    jobs.c.task_id == task_id, jobs.c.status == "held"))).scalar_one() == 0
        await wait_for(none_held, timeout=30)
        await run.wait_ended(task_id)
        await run.audit(task_id)
        await run.audit_system()
        record("50 alternating pause/resume calls", "pause, resume, ... (50 calls, no wait between)",
               "done; no job left held", await run.recovery_s(fault_end))

"""Two replicas of every service of the WMS at once (task-manager, task-executor, job-manager, job-executor); one
of each is SIGKILLed mid-run. The survivors carry the task to the end: every file processed and registered exactly
once, no job dispatched twice at once. REST pilots are given both job-executors' URLs and move on to the survivor
when theirs dies; MQ pilots are served by whichever replica consumes."""
from __future__ import annotations

import signal

import pytest
import sqlalchemy as sa

from common.db.models import job_attempts, pilots
from tests.faults.harness import N_JOBS_DEFAULT, fault_run, now_utc, record

pytestmark = pytest.mark.e2e
REPLICATED = ("wms-task-manager", "wms-task-executor", "wms-job-manager", "wms-job-executor")


async def test_two_replicas_of_each_service_one_of_each_killed_mid_run(postgres_server_url, amqp_url,
                                                                        tmp_path) -> None:
    async with fault_run(postgres_server_url, amqp_url, tmp_path) as run:
        d = run.deployment
        await run.start_services()
        for service in REPLICATED:
            await d.start(service, replica=f"{service}-b")
        await run.make_dataset("raw.replicas")
        task_id = await run.submit("raw.replicas", "out.replicas")
        both = f"{d.url('wms-job-executor')},{d.url('wms-job-executor-b')}"
        for _ in range(3):
            run.start_pilot("rest", WMS_PILOT_SERVER_URL=both, WMS_PILOT_SLOTS="2")
        run.start_pilot("mq", WMS_PILOT_SLOTS="2")
        await run.wait_finished_jobs(task_id, N_JOBS_DEFAULT // 4)
        for service in REPLICATED:  # the first of each: the REST pilots' first URL among them
            d.kill(service, signal.SIGKILL)
        fault_end = now_utc()
        await run.wait_ended(task_id)
        await run.audit(task_id)
        attempts = await run.audit_attempts()
        assert len({a.job_id for a in attempts}) == N_JOBS_DEFAULT
        async with run.engine.connect() as conn:
            rest_after_kill = (await conn.execute(
                sa.select(sa.func.count())
                .select_from(job_attempts.join(pilots, pilots.c.id == job_attempts.c.pilot_id))
                .where(pilots.c.channel == "rest", job_attempts.c.started_at > fault_end,
                       job_attempts.c.outcome == "finished"))).scalar()
        assert rest_after_kill > 0  # the REST pilots moved on to the surviving job-executor
        await run.audit_system()  # no dead letter; the survivors ready
        record("one replica of every service SIGKILLed", "2 replicas of task-manager, task-executor, job-manager "
               "and job-executor; SIGKILL one of each at 25% of the jobs", "task done by the survivors, every file "
               "once", await run.recovery_s(fault_end))

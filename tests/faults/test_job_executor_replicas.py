"""Two job-executor replicas serve one deployment; one is SIGKILLed mid-run. The other one (and its pilots, REST
and RabbitMQ) carries the task to the end: no job dispatched twice at once, no output lost or registered twice;
the sweeps (dead pilots, wall time, housekeeping) run in one replica at a time (advisory locks), so the survivor
takes them over without anything to hand over."""
from __future__ import annotations

import signal

import pytest

from tests.faults.harness import N_JOBS_DEFAULT, fault_run, now_utc, record

pytestmark = pytest.mark.e2e


async def test_a_replica_killed_mid_run_loses_nothing(postgres_server_url, amqp_url, tmp_path) -> None:
    async with fault_run(postgres_server_url, amqp_url, tmp_path) as run:
        d = run.deployment
        await run.start_services()
        await d.start("wms-job-executor", replica="job-executor-b")
        await run.make_dataset("raw.replicas")
        task_id = await run.submit("raw.replicas", "out.replicas")
        for server in ("wms-job-executor", "job-executor-b"):
            for _ in range(2):
                run.start_pilot("rest", WMS_PILOT_SERVER_URL=d.url(server), WMS_PILOT_SLOTS="2")
        run.start_pilot("mq", WMS_PILOT_SLOTS="2")  # MQ requests go to whichever replica consumes them
        await run.wait_finished_jobs(task_id, N_JOBS_DEFAULT // 4)
        d.kill("wms-job-executor", signal.SIGKILL)
        fault_end = now_utc()
        await run.wait_ended(task_id)
        await run.audit(task_id)
        attempts = await run.audit_attempts()
        lost = sum(a.outcome == "lost" for a in attempts)
        record("job-executor replica SIGKILLed", "2 replicas (REST pilots on each, MQ pilots shared), SIGKILL one "
               "at 25% of the jobs", f"task done by the survivor; {lost} attempts lost and retried, none twice",
               await run.recovery_s(fault_end))

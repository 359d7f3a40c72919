"""A pilot that has gone is given no job, and its jobs do not wait for its heartbeat to time out.

Found in a soak: a pilot killed while its long-poll claim waited got a job 0.5 s after its death, and the job was
stranded 71 s, until its heartbeat timed out. Over REST the job-executor looks whether the caller is still there
before it claims; over RabbitMQ the answer to a vanished caller comes back from the broker (its reply queue went
with its connection) and what it carried is given back at once. A pilot daemon whose pilot application died says
so (``lost``): that pilot's jobs are retried at once.
"""
from __future__ import annotations

import asyncio
import contextlib

import pytest
import sqlalchemy as sa

from common.db.models import job_attempts, jobs, pilots
from common.pilot_protocol import ExchangeRequest, PilotRegistration
from pilot.channels.mq import MqChannel
from pilot.channels.rest import RestChannel
from tests.conftest import PILOT_TOKEN, serve_in_process, wait_for
from tests.integration.test_job_executor_api import REGISTRATION, make_jobs


@pytest.fixture
async def job_executor_url(settings, tmp_path):
    from services.job_executor.app import create_app

    # claims may wait up to 5 s; pilots are declared dead only after a minute: nothing here may be explained by
    # a heartbeat timeout
    tuned = settings.model_copy(update={"storage_root": str(tmp_path), "oversight_interval_s": 0.2,
                                        "heartbeat_interval_s": 5.0, "pilot_timeout_s": 60.0})
    async with serve_in_process(create_app(tuned)) as url:
        yield url


def channel_of(kind: str, url: str, settings) -> RestChannel | MqChannel:
    if kind == "rest":
        return RestChannel(url, PILOT_TOKEN, 5.0)
    return MqChannel(settings.amqp_url, settings.broker_namespace, PILOT_TOKEN, 5.0)


async def job_row(db, job_id: int) -> sa.Row:
    async with db.connect() as conn:
        return (await conn.execute(sa.select(jobs).where(jobs.c.id == job_id))).one()


@pytest.mark.parametrize("kind", ["rest", "mq"])
async def test_a_waiting_claim_whose_pilot_has_gone_leaves_the_job_ready(kind, job_executor_url, settings,
                                                                        db) -> None:
    gone = channel_of(kind, job_executor_url, settings)
    await gone.register(PilotRegistration(**REGISTRATION))
    waiting = asyncio.create_task(gone.exchange(ExchangeRequest(want=1, wait_s=5.0)))
    await asyncio.sleep(1.0)  # the claim waits at the job-executor
    waiting.cancel()  # the pilot dies: its connection (and over MQ its reply queue) goes with it
    with contextlib.suppress(asyncio.CancelledError):
        await waiting
    await gone.close()
    await asyncio.sleep(0.3)
    (job_id,) = await make_jobs(db, 1)  # the waiting claim wakes for it
    # nobody is there to run it: it stays ready, or is given back at once; never held until a heartbeat timeout
    await asyncio.sleep(2.0)
    job = await job_row(db, job_id)
    assert job.status == "ready", f"the job went to a pilot that had gone: {job.status} (pilot {job.pilot_id})"

    alive = channel_of(kind, job_executor_url, settings)
    try:
        await alive.register(PilotRegistration(**{**REGISTRATION, "host": "wn2"}))
        reply = await alive.exchange(ExchangeRequest(want=1, wait_s=5.0))
        assert [j.job_id for j in reply.jobs] == [job_id]  # and the next live pilot gets it at once
    finally:
        await alive.close()


@pytest.mark.parametrize("kind", ["rest", "mq"])
async def test_a_pilot_said_lost_by_its_daemon_has_its_jobs_retried_at_once(kind, job_executor_url, settings,
                                                                           db) -> None:
    (job_id,) = await make_jobs(db, 1)
    pilot = channel_of(kind, job_executor_url, settings)
    session = await pilot.register(PilotRegistration(**REGISTRATION))
    reply = await pilot.exchange(ExchangeRequest(want=1))
    assert [j.job_id for j in reply.jobs] == [job_id]
    await pilot.close()  # the pilot application dies with the job

    daemon = channel_of(kind, job_executor_url, settings)  # its daemon, with the session the pilot left it
    daemon.resume(session.pilot_id, session.session)
    try:
        await daemon.lost("the pilot application was killed by signal 9")
        await daemon.lost("the pilot application was killed by signal 9")  # said twice: the same as once
    finally:
        await daemon.close()

    async def retried() -> bool:
        job = await job_row(db, job_id)
        return job.status == "ready" and job.attempt == 1
    await wait_for(retried, timeout=5)  # at once, not after the minute of its heartbeat timeout
    async with db.connect() as conn:
        attempt = (await conn.execute(sa.select(job_attempts).where(job_attempts.c.job_id == job_id))).one()
        pilot_status = (await conn.execute(sa.select(pilots.c.status).where(
            pilots.c.id == session.pilot_id))).scalar_one()
    assert (attempt.outcome, attempt.error_category) == ("lost", "lost")
    assert "killed by signal 9" in attempt.error_message
    assert pilot_status == "dead"

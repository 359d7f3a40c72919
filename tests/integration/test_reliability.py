"""Reliability rules of the job-executor, in process against the real database: idempotent claims, the
infrastructure-loss budget, no lost-job verdict right after an outage, outbox backoff that blocks nobody,
housekeeping of old rows."""
from __future__ import annotations

import time
import uuid

import sqlalchemy as sa

from common.broker import Broker
from common.db.models import consumed_messages, jobs, outbox, pilots
from common.messages import TaskEvent, TaskEventType, decode, wrap
from common.outbox import OutboxRelay, add_event
from tests.conftest import get_message
from tests.factories import insert_task
from tests.integration.test_job_executor_api import job_executor, make_jobs, register  # noqa: F401 (fixture)


async def test_a_retried_claim_gets_the_same_job_not_a_second_one(job_executor, db) -> None:  # noqa: F811
    await make_jobs(db, 3)
    pilot_id, auth = await register(job_executor)
    url = f"/pilot/v1/pilots/{pilot_id}/claim"
    request = {"request_id": str(uuid.uuid4())}
    first = (await job_executor.post(url, json=request, headers=auth)).json()
    again = (await job_executor.post(url, json=request, headers=auth)).json()  # the answer was lost: retry
    assert (again["job_id"], again["attempt"]) == (first["job_id"], first["attempt"])
    second_pilot, second_auth = await register(job_executor, host="wn2")
    other = (await job_executor.post(f"/pilot/v1/pilots/{second_pilot}/claim",
                                     json={"request_id": str(uuid.uuid4())}, headers=second_auth)).json()
    assert other["job_id"] != first["job_id"]
    async with db.connect() as conn:
        dispatched = (await conn.execute(sa.select(sa.func.count()).where(jobs.c.status == "dispatched"))).scalar()
    assert dispatched == 2  # two claims, two jobs; the retry dispatched nothing more


async def _expire_heartbeats(db) -> None:
    async with db.begin() as conn:
        await conn.execute(sa.update(pilots).values(heartbeat_at=sa.func.now() - sa.text("interval '1 hour'")))
        await conn.execute(sa.update(jobs).values(heartbeat_at=sa.func.now() - sa.text("interval '1 hour'")))


async def test_lost_attempts_have_their_own_budget(job_executor, db) -> None:  # noqa: F811
    (job_id,) = await make_jobs(db)  # its task allows 3 attempts
    oversight = job_executor.app.state.oversight
    oversight.heard_since = time.monotonic() - 3600  # no recent outage
    max_lost = job_executor.app.state.settings.max_lost_attempts
    for n in range(1, max_lost + 1):
        async with db.begin() as conn:
            await conn.execute(sa.update(jobs).where(jobs.c.id == job_id).values(not_before=None))
        pilot_id, auth = await register(job_executor)
        claim = await job_executor.post(f"/pilot/v1/pilots/{pilot_id}/claim", headers=auth)
        assert claim.json()["job_id"] == job_id
        await _expire_heartbeats(db)
        assert await oversight.sweep_lost_jobs() == 1
        async with db.connect() as conn:
            job = (await conn.execute(sa.select(jobs).where(jobs.c.id == job_id))).one()
        assert job.lost_attempts == n and job.attempt == n
        # more losses than max_attempts (3) do not fail it: only the loss budget does
        assert job.status == ("failed" if n == max_lost else "ready"), (n, job.status)
    assert job.error_category == "lost"


async def test_no_job_is_declared_lost_right_after_an_outage(job_executor, db) -> None:  # noqa: F811
    await make_jobs(db)
    pilot_id, auth = await register(job_executor)
    await job_executor.post(f"/pilot/v1/pilots/{pilot_id}/claim", headers=auth)
    await _expire_heartbeats(db)  # silent for an hour ... because nothing could reach us
    oversight = job_executor.app.state.oversight
    oversight.outage()
    assert await oversight.sweep_lost_jobs() == 0
    oversight.heard_since -= job_executor.app.state.settings.pilot_timeout_s + 1  # a full timeout later
    assert await oversight.sweep_lost_jobs() == 1


async def test_a_failing_outbox_row_waits_without_blocking_the_rows_behind_it(db, settings, amqp) -> None:
    broker = Broker(settings)
    await broker.connect()
    try:
        relay = OutboxRelay(db, broker, batch_size=10, poll_interval_s=0.1, retry_max_s=60)
        event = wrap(TaskEventType.REGISTERED, TaskEvent(task_id=1, status="registered", priority=1,
                                                          resource_type="cpu"))
        async with db.begin() as conn:
            await insert_task(conn)
            # unroutable: nothing is bound to this key, so every publication of it fails
            await add_event(conn, broker.topology.exchange("tasks"), "nobody.listens", event)
            await add_event(conn, broker.topology.exchange("tasks"), "task.registered",
                            wrap(TaskEventType.REGISTERED, TaskEvent(task_id=2, status="registered", priority=1,
                                                                      resource_type="cpu")))
        assert await relay.publish_pending() == 1  # the good row went out
        assert await broker.wait_ready(10)  # the failed publish cost the channel; the connection came back
        assert await relay.publish_pending() == 0  # the bad row waits for its backoff instead of retrying hot
        async with db.connect() as conn:
            bad = (await conn.execute(sa.select(outbox).where(outbox.c.published_at.is_(None)))).one()
        assert bad.publish_attempts == 1 and bad.next_attempt_at is not None and bad.last_error
        queue = await (await amqp.channel()).get_queue(broker.topology.queue("task-executor.task-events"))
        message = await get_message(queue)
        assert decode(message.body)[1].task_id == 2
    finally:
        await broker.close()


async def test_housekeeping_purges_old_consumed_ids_and_ended_pilots_only(job_executor, db) -> None:  # noqa: F811
    live, _ = await register(job_executor)
    ended_long_ago, _ = await register(job_executor)
    ended_recently, _ = await register(job_executor)
    async with db.begin() as conn:
        await conn.execute(sa.update(pilots).where(pilots.c.id == ended_long_ago).values(
            status="exited", ended_at=sa.func.now() - sa.text("interval '30 days'")))
        await conn.execute(sa.update(pilots).where(pilots.c.id == ended_recently).values(
            status="dead", ended_at=sa.func.now()))
        await conn.execute(sa.insert(consumed_messages).values(
            consumer="c", message_id=uuid.uuid4(), consumed_at=sa.func.now() - sa.text("interval '30 days'")))
        await conn.execute(sa.insert(consumed_messages).values(consumer="c", message_id=uuid.uuid4()))
    purged = await job_executor.app.state.oversight.purge_old_rows()
    assert purged == {"consumed_messages": 1, "pilots": 1, "tasks": 0, "jobs": 0, "files": 0,
                      "pilot_submissions": 0, "load_samples": 0}  # tasks are kept: WMS_TASK_RETENTION_S is 0 by default
    async with db.connect() as conn:
        left = set((await conn.execute(sa.select(pilots.c.id))).scalars())
        consumed = (await conn.execute(sa.select(sa.func.count()).select_from(consumed_messages))).scalar()
    assert left == {live, ended_recently} and consumed == 1


async def test_a_dead_pilot_no_longer_shows_the_job_it_lost(job_executor, db) -> None:  # noqa: F811
    """Issue 22, finding 7: dead pilots kept showing the job they held after it was retried and finished
    elsewhere. The job moves on when its pilot is declared dead (lost, ready for another pilot): so does the
    pilot's current job (the attempt history keeps who ran what)."""
    await make_jobs(db)
    pilot_id, auth = await register(job_executor)
    claimed = (await job_executor.post(f"/pilot/v1/pilots/{pilot_id}/claim", headers=auth)).json()
    async with db.connect() as conn:
        assert (await conn.execute(sa.select(pilots.c.current_job_id).where(pilots.c.id == pilot_id))).scalar() \
            == claimed["job_id"]
    await _expire_heartbeats(db)
    oversight = job_executor.app.state.oversight
    oversight.heard_since = time.monotonic() - 3600  # no recent outage
    assert await oversight.sweep_lost_jobs() == 1
    async with db.connect() as conn:
        pilot = (await conn.execute(sa.select(pilots).where(pilots.c.id == pilot_id))).one()
    assert pilot.status == "dead" and pilot.current_job_id is None


async def test_a_lost_attempt_leaves_nothing_on_storage(job_executor, db) -> None:  # noqa: F811
    """Issue 22, finding 10: a pilot that died mid stage-out left its partial and earlier outputs on storage for
    good. When its attempt is declared lost, the job-executor removes the attempt's directory (nothing of it was
    registered: a report would have ended the attempt)."""
    from pathlib import Path

    from pilot.staging import local_path
    from services.job_executor.attempts import storage_prefix

    await make_jobs(db)
    pilot_id, auth = await register(job_executor)
    claimed = (await job_executor.post(f"/pilot/v1/pilots/{pilot_id}/claim", headers=auth)).json()
    settings = job_executor.app.state.settings
    attempt_dir = local_path(claimed["output_url_prefix"])
    (attempt_dir / "logs").mkdir(parents=True)
    (attempt_dir / "a.out").write_bytes(b"staged before it died")
    (attempt_dir / "b.out.part").write_bytes(b"half")
    (attempt_dir / "logs" / "x.log.part").write_bytes(b"half")
    assert claimed["output_url_prefix"] == storage_prefix(settings, claimed["output_dataset"], claimed["job_id"],
                                                          claimed["attempt"])
    outside = Path(settings.storage_root) / "elsewhere.txt"
    outside.write_text("not the attempt's")
    await _expire_heartbeats(db)
    oversight = job_executor.app.state.oversight
    oversight.heard_since = time.monotonic() - 3600  # no recent outage
    assert await oversight.sweep_lost_jobs() == 1
    assert not attempt_dir.exists() and outside.read_text() == "not the attempt's"

"""Retention on a database holding ended and live work: `POST /api/v1/retention/purge` (what `wms purge` calls)
removes settled tasks older than the age with their jobs, attempts and file rows, and ended pilots and
submissions as old; active tasks, recent ended ones, unsettled ones and live pilots stay, and so does the DSM."""
from __future__ import annotations

import datetime as dt

import sqlalchemy as sa

from common.db.models import files, job_attempts, jobs, pilot_submissions, pilots, tasks
from tests.conftest import OPERATOR_TOKEN, WFMS_TOKEN, wait_for
from tests.factories import insert_jobs, insert_task

OPERATOR = {"Authorization": f"Bearer {OPERATOR_TOKEN}"}


def days_ago(n: int | None) -> dt.datetime | None:
    return None if n is None else dt.datetime.now(dt.UTC) - dt.timedelta(days=n)


async def _work(conn, status: str, ended_days_ago: int | None, closed: bool = True) -> int:
    ended = days_ago(ended_days_ago)
    task_id = await insert_task(conn, status=status, finished_at=ended,
                                output_closed_at=days_ago(0) if closed and ended is not None else None)
    job_ids = await insert_jobs(conn, task_id, 3, status="finished" if ended is not None else "ready")
    await conn.execute(sa.insert(job_attempts), [{"job_id": j, "attempt": 1, "outcome": "finished"}
                                                 for j in job_ids])
    await conn.execute(sa.insert(files), [
        {"lfn": f"t{task_id}/{role}{j}", "dataset": "d", "task_id": task_id, "job_id": j, "role": role,
         "status": "done" if role == "input" else "registered"} for j in job_ids for role in ("input", "output")])
    return task_id


async def _pilot(conn, status: str, ended_days_ago: int | None) -> int:
    ended = days_ago(ended_days_ago)
    return (await conn.execute(sa.insert(pilots).values(
        host="wn", resource_type="cpu", cores=1, memory_mb=100, version="t", status=status, ended_at=ended)
        .returning(pilots.c.id))).scalar_one()


async def test_purge_removes_old_settled_work_only(task_manager, db, dsm) -> None:
    await dsm.create_dataset("kept.by.the.dsm")
    async with db.begin() as conn:
        old_done = await _work(conn, "done", 40)
        old_failed = await _work(conn, "failed", 31)
        old_unsettled = await _work(conn, "cancelled", 40, closed=False)  # outputs not closed yet: kept
        recent = await _work(conn, "done", 2)
        running = await _work(conn, "running", None)
        old_pilot = await _pilot(conn, "exited", 40)
        await _pilot(conn, "dead", 2)
        live_pilot = await _pilot(conn, "busy", None)
        await conn.execute(sa.update(jobs).where(jobs.c.task_id == running).values(pilot_id=old_pilot))
        await conn.execute(sa.insert(pilot_submissions), [
            {"queue": "q", "resource_type": "cpu", "batch_system": "slurm", "batch_name": f"s{i}", "status": s,
             "ended_at": days_ago(40) if s == "ended" else None}
            for i, s in enumerate(("ended", "running"))])

    body = {"older_than_s": 30 * 86400}
    refused = await task_manager.post("/api/v1/retention/purge", json=body,
                                      headers={"Authorization": f"Bearer {WFMS_TOKEN}"})
    assert refused.status_code == 403  # an operator's command
    assert (await task_manager.post("/api/v1/retention/purge", json={}, headers=OPERATOR)).status_code == 422

    counted = (await task_manager.post("/api/v1/retention/purge", json={**body, "dry_run": True},
                                       headers=OPERATOR)).json()
    expected = {"tasks": 2, "jobs": 6, "files": 12, "pilots": 1, "pilot_submissions": 1}
    assert counted == {**expected, "dry_run": True}
    async with db.connect() as conn:
        assert (await conn.execute(sa.select(sa.func.count()).select_from(tasks))).scalar() == 5  # nothing gone

    purged = (await task_manager.post("/api/v1/retention/purge", json=body, headers=OPERATOR)).json()
    assert purged == {**expected, "dry_run": False}
    async with db.connect() as conn:
        left = set((await conn.execute(sa.select(tasks.c.id))).scalars())
        assert left == {old_unsettled, recent, running}
        assert not {old_done, old_failed} & set((await conn.execute(sa.select(jobs.c.task_id))).scalars())
        assert not {old_done, old_failed} & set((await conn.execute(sa.select(files.c.task_id))).scalars())
        assert (await conn.execute(sa.select(sa.func.count()).select_from(job_attempts))).scalar() == 9
        assert live_pilot in set((await conn.execute(sa.select(pilots.c.id))).scalars())
        # the running task's jobs lose the reference to the purged pilot, not their rows
        assert (await conn.execute(sa.select(sa.func.count()).select_from(jobs)
                                   .where(jobs.c.task_id == running, jobs.c.pilot_id.is_(None)))).scalar() == 3
    # the lists no longer show them
    listed = (await task_manager.get("/api/v1/tasks", headers=OPERATOR)).json()["items"]
    assert {t["id"] for t in listed} == {old_unsettled, recent, running}
    assert await dsm.dataset("kept.by.the.dsm") is not None  # the DSM is not the WMS's to purge

    again = (await task_manager.post("/api/v1/retention/purge", json=body, headers=OPERATOR)).json()
    assert again == {"tasks": 0, "jobs": 0, "files": 0, "pilots": 0, "pilot_submissions": 0, "dry_run": False}


async def test_purge_goes_in_batches(task_manager, db, monkeypatch) -> None:
    from common.db import retention

    monkeypatch.setattr(retention, "MAX_TASKS_PER_CALL", 2)
    async with db.begin() as conn:
        for _ in range(5):
            await _work(conn, "done", 10)
    purged = (await task_manager.post("/api/v1/retention/purge", json={"older_than_s": 86400, "pilots": False},
                                      headers=OPERATOR)).json()
    assert purged["tasks"] == 5 and purged["jobs"] == 15
    async with db.connect() as conn:
        assert (await conn.execute(sa.select(sa.func.count()).select_from(tasks))).scalar() == 0


async def test_the_housekeeping_sweep_purges_old_settled_tasks_when_asked_to(settings, db, tmp_path) -> None:
    from services.job_executor.app import create_app
    from tests.conftest import running_app

    async with db.begin() as conn:
        old = await _work(conn, "done", 10)
        recent = await _work(conn, "done", 0)
        running = await _work(conn, "running", None)
    tuned = settings.model_copy(update={"storage_root": str(tmp_path), "oversight_interval_s": 60,
                                        "task_retention_s": 86400})
    async with running_app(create_app(tuned)) as client:
        oversight = client.app.state.oversight  # type: ignore[attr-defined]

        async def task_ids() -> set[int]:
            async with db.connect() as conn:
                return set((await conn.execute(sa.select(tasks.c.id))).scalars())

        async def swept() -> bool:
            # a round of ours, or the service's own first round (it holds the sweep's lock while it runs)
            await oversight.purge_old_rows()
            return old not in await task_ids()

        await wait_for(swept, timeout=30, interval=0.2)
    assert await task_ids() == {recent, running}
    async with db.connect() as conn:
        assert not (await conn.execute(sa.select(sa.func.count()).select_from(jobs)
                                       .where(jobs.c.task_id == old))).scalar()


async def test_the_sweep_goes_on_while_batches_remain(settings, db, tmp_path, monkeypatch) -> None:
    """Five tasks past retention in batches of two: the service's own housekeeping takes them all in one go, not
    one batch per WMS_HOUSEKEEPING_INTERVAL_S (ten minutes here)."""
    from common.db import retention
    from services.job_executor.app import create_app
    from tests.conftest import running_app

    monkeypatch.setattr(retention, "MAX_TASKS_PER_CALL", 2)
    async with db.begin() as conn:
        for _ in range(5):
            await _work(conn, "done", 10)
    tuned = settings.model_copy(update={"storage_root": str(tmp_path), "oversight_interval_s": 60,
                                        "task_retention_s": 86400, "housekeeping_interval_s": 600})

    async def none_left() -> bool:
        async with db.connect() as conn:
            return not (await conn.execute(sa.select(sa.func.count()).select_from(tasks))).scalar()

    async with running_app(create_app(tuned)):
        await wait_for(none_left, timeout=20, interval=0.2)

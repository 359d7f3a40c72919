"""Progress, final report and produced files, computed from JOB_DAT and FILE_DAT rows."""
from __future__ import annotations

import datetime as dt

import pytest
import sqlalchemy as sa

from common.db.models import files, job_attempts, jobs, tasks
from tests.conftest import OPERATOR_TOKEN
from tests.factories import insert_jobs, insert_task

AUTH = {"Authorization": f"Bearer {OPERATOR_TOKEN}"}
NOW = sa.func.now()


_base: dict[str, dt.datetime] = {}


@pytest.fixture(autouse=True)
def _fixed_now() -> None:
    """One reference instant per test, so that durations between ago() values are exact."""
    _base["now"] = dt.datetime.now(dt.UTC)


def ago(seconds: int) -> dt.datetime:
    return _base["now"] - dt.timedelta(seconds=seconds)


async def _task_with_jobs(db) -> int:
    """A task of 100 files in 10 jobs of 10: 5 finished (1 after a retry), 1 failed, 2 running, 2 ready."""
    async with db.begin() as conn:
        task_id = await insert_task(conn, status="running", files_total=100, files_assigned=100, jobs_total=10,
                                    output_dataset="spd.out")
        await insert_jobs(conn, task_id, 4, status="finished", n_files=10, attempt=1,
                          started_at=ago(200), finished_at=ago(100))
        await insert_jobs(conn, task_id, 1, status="finished", n_files=10, attempt=2,
                          started_at=ago(150), finished_at=ago(50))
        (failed,) = await insert_jobs(conn, task_id, 1, status="failed", n_files=10, attempt=3,
                                      error_category="payload", error_message="exit code 3")
        await conn.execute(sa.insert(job_attempts), [
            {"job_id": failed, "attempt": n, "outcome": "failed", "error_category": "payload",
             "error_message": "exit code 3"} for n in (1, 2, 3)])
        await insert_jobs(conn, task_id, 2, status="running", n_files=10, attempt=1)
        await insert_jobs(conn, task_id, 2, status="ready", n_files=10)
        first_job = (await conn.execute(sa.select(sa.func.min(jobs.c.id)))).scalar_one()
        await conn.execute(sa.insert(files), [
            {"lfn": f"out{i}.root", "dataset": "spd.out", "task_id": task_id, "job_id": first_job, "role": "output",
             "size": 1000 + i, "adler32": "0a1b2c3d", "events": 10, "status": "registered"}
            for i in range(5)
        ] + [{"lfn": "job.log", "dataset": "spd.out", "task_id": task_id, "job_id": first_job, "role": "log",
              "size": 5, "adler32": "00000001", "events": None, "status": "registered"}])
    return task_id


async def test_progress_counts_percent_rate_and_eta(task_manager, db) -> None:
    task_id = await _task_with_jobs(db)
    progress = (await task_manager.get(f"/api/v1/tasks/{task_id}", headers=AUTH)).json()["progress"]
    assert progress["files"] == {"total": 100, "assigned": 100, "done": 50, "failed": 10, "cancelled": 0,
                                 "in_progress": 20, "pending": 20}
    assert progress["jobs"]["finished"] == 5 and progress["jobs"]["ready"] == 2 and progress["jobs"]["held"] == 0
    assert progress["percent"] == 60.0
    # 50 files finished within the last ~100 s of the window
    assert 0.45 < progress["rate_files_per_s"] < 0.55
    assert 70 < progress["eta_s"] < 90


async def test_progress_before_any_job(task_manager, db) -> None:
    async with db.begin() as conn:
        task_id = await insert_task(conn)
    progress = (await task_manager.get(f"/api/v1/tasks/{task_id}", headers=AUTH)).json()["progress"]
    assert progress["percent"] is None and progress["rate_files_per_s"] is None and progress["eta_s"] is None
    assert progress["files"]["total"] is None


async def test_report_groups_failures_and_counts_attempts_and_outputs(task_manager, db) -> None:
    task_id = await _task_with_jobs(db)
    report = (await task_manager.get(f"/api/v1/tasks/{task_id}/report", headers=AUTH)).json()
    assert report["final"] is False
    assert report["attempts_total"] == 4 * 1 + 2 + 3 + 2 * 1
    assert report["jobs_retried"] == 2
    (failed,) = [g["job_ids"][0] for g in report["failures"]]
    assert report["failures"] == [{"error_category": "payload", "error_message": "exit code 3", "attempts": 3,
                                   "jobs": 1, "jobs_failed": 1, "files": 10, "job_ids": [failed]}]
    assert report["outputs"] == {"files": 5, "bytes": 5 * 1000 + sum(range(5)), "events": 50, "rejected": 0}
    assert report["output_dataset"] == "spd.out"
    assert report["job_run_time"]["min_s"] == pytest.approx(100.0)
    assert report["job_run_time"]["max_s"] == pytest.approx(100.0)

    async with db.begin() as conn:
        await conn.execute(sa.update(tasks).where(tasks.c.id == task_id).values(status="finished", finished_at=NOW))
    report = (await task_manager.get(f"/api/v1/tasks/{task_id}/report", headers=AUTH)).json()
    assert report["final"] is True and report["status"] == "finished"


async def test_files_lists_outputs_by_cursor_and_logs_separately(task_manager, db) -> None:
    task_id = await _task_with_jobs(db)
    page1 = (await task_manager.get(f"/api/v1/tasks/{task_id}/files", params={"limit": 3}, headers=AUTH)).json()
    page2 = (await task_manager.get(f"/api/v1/tasks/{task_id}/files",
                                    params={"limit": 3, "after": page1["next_after"]}, headers=AUTH)).json()
    assert [f["lfn"] for f in page1["items"] + page2["items"]] == [f"out{i}.root" for i in range(5)]
    assert page2["next_after"] is None
    assert page1["items"][0]["adler32"] == "0a1b2c3d"
    logs = (await task_manager.get(f"/api/v1/tasks/{task_id}/files", params={"role": "log"}, headers=AUTH)).json()
    assert [f["lfn"] for f in logs["items"]] == ["job.log"]
    bad = await task_manager.get(f"/api/v1/tasks/{task_id}/files", params={"role": "input"}, headers=AUTH)
    assert bad.status_code == 422


async def test_the_rate_of_an_ended_task_is_taken_over_its_active_span(task_manager, db) -> None:
    """Issue 22, finding 2: the files/s of a task that had ended kept falling with the clock (0.1505, then 0.1468
    ten seconds later). Now an ended task's rate is taken over its active span, from its start to its end: 20
    files over 200 s are 0.1 files/s, today and tomorrow, and no ETA is given for an ended task."""
    async with db.begin() as conn:
        task_id = await insert_task(conn, status="done", files_total=20, files_assigned=20, jobs_total=2,
                                    output_dataset="spd.out", started_at=ago(500), finished_at=ago(300))
        await insert_jobs(conn, task_id, 1, status="finished", n_files=10, attempt=1, started_at=ago(500),
                          finished_at=ago(400))
        await insert_jobs(conn, task_id, 1, status="finished", n_files=10, attempt=1, started_at=ago(450),
                          finished_at=ago(300))
    progress = (await task_manager.get(f"/api/v1/tasks/{task_id}", headers=AUTH)).json()["progress"]
    assert progress["rate_files_per_s"] == pytest.approx(0.1, rel=0.01)
    assert progress["eta_s"] in (None, 0)


async def test_the_report_counts_lost_attempts_as_the_monitor_does(task_manager, db) -> None:
    """Issue 22, finding 5: `wms report` showed `failures: []` for a task whose attempt was lost, while the
    monitor listed it under "lost": the report grouped failed jobs, the monitor failed and lost attempts. Now
    both come from one query: attempts, the jobs they hit, those that failed for good and their files."""
    async with db.begin() as conn:
        task_id = await insert_task(conn, status="done", files_total=20, files_assigned=20, jobs_total=2)
        survivor, other = await insert_jobs(conn, task_id, 2, status="finished", n_files=10, attempt=2)
        await conn.execute(sa.insert(job_attempts), [
            {"job_id": survivor, "attempt": 1, "outcome": "lost", "error_category": "lost",
             "error_message": "pilot stopped heartbeating"},
            {"job_id": survivor, "attempt": 2, "outcome": "finished", "error_category": None, "error_message": None},
            {"job_id": other, "attempt": 1, "outcome": "lost", "error_category": "lost",
             "error_message": "pilot stopped heartbeating"},
            {"job_id": other, "attempt": 2, "outcome": "finished", "error_category": None, "error_message": None}])
    report = (await task_manager.get(f"/api/v1/tasks/{task_id}/report", headers=AUTH)).json()
    page = (await task_manager.get(f"/api/v1/monitor/tasks/{task_id}", headers=AUTH)).json()
    assert report["failures"] == [{"error_category": "lost", "error_message": "pilot stopped heartbeating",
                                   "attempts": 2, "jobs": 2, "jobs_failed": 0, "files": 0,
                                   "job_ids": sorted([survivor, other])}]
    assert page["failures"] == report["failures"]

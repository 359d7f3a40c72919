"""What a task's final status says (issue 22, finding 10): a stage whose input ended up empty reported `done` with
0 of 0 files, and one with 0 of 120 files done reported `finished`: a WFMS that reads only the status saw success
where nothing was produced. Now a task that processed nothing fails, and its error says why; a task with at least
one finished job is `done` (none failed) or `finished` (some failed), as before."""
from __future__ import annotations

import sqlalchemy as sa

from common.db.models import tasks
from tests.factories import insert_jobs, insert_task
from tests.integration.test_job_executor_api import job_executor  # noqa: F401 (fixture)


async def _running_task(conn, states: list[str]) -> int:
    task_id = await insert_task(conn, status="running", files_total=len(states), files_assigned=len(states),
                                jobs_total=len(states), jobs_registered=len(states))
    for state in states:
        await insert_jobs(conn, task_id, 1, status=state, n_files=1)
    return task_id


async def test_a_task_that_processed_nothing_fails_and_says_why(job_executor, db) -> None:  # noqa: F811
    async with db.begin() as conn:
        empty = await _running_task(conn, [])
        all_failed = await _running_task(conn, ["failed", "failed"])
        all_cancelled = await _running_task(conn, ["cancelled"])
        partial = await _running_task(conn, ["finished", "failed"])
        whole = await _running_task(conn, ["finished", "finished"])
    await job_executor.app.state.oversight.finalize_tasks()  # (its own loop may have been first)
    async with db.connect() as conn:
        rows = {r.id: r for r in (await conn.execute(sa.select(tasks.c.id, tasks.c.status, tasks.c.error))).all()}
    assert rows[empty].status == "failed" and "no input files" in rows[empty].error
    assert rows[all_failed].status == "failed" and "no job finished" in rows[all_failed].error
    assert rows[all_cancelled].status == "failed" and "no job finished" in rows[all_cancelled].error
    assert (rows[partial].status, rows[partial].error) == ("finished", None)
    assert (rows[whole].status, rows[whole].error) == ("done", None)

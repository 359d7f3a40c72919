"""Owners and the audit trail (issue 21, finding 6): any wfms token reprioritised and cancelled another client's
task. Tokens now carry a name (WMS_API_TOKENS: "role:name"); a task records who submitted it; a wfms client may
cancel and reprioritise only its own tasks (403 otherwise, nothing changes), operators any task; every command
is written to the task's audit trail, which explain and the monitor's task page show."""
from __future__ import annotations

import pytest
import sqlalchemy as sa

from common.db.models import jobs, tasks
from tests.conftest import OPERATOR_TOKEN, WFMS_TOKEN, running_app
from tests.factories import insert_task, task_description

OTHER_TOKEN = "test-wfms-other-client"
OWN = {"Authorization": f"Bearer {WFMS_TOKEN}"}
OTHER = {"Authorization": f"Bearer {OTHER_TOKEN}"}
OPERATOR = {"Authorization": f"Bearer {OPERATOR_TOKEN}"}


@pytest.fixture
async def task_manager_two_clients(settings):
    from services.task_manager.app import create_app

    tokens = {**settings.api_tokens, WFMS_TOKEN: "wfms:cms-wfms", OTHER_TOKEN: "wfms:other-wfms"}
    async with running_app(create_app(settings.model_copy(update={"api_tokens": tokens}))) as client:
        yield client


async def test_a_wfms_client_changes_only_its_own_tasks(task_manager_two_clients, db) -> None:
    client = task_manager_two_clients
    created = await client.post("/api/v1/tasks", json=task_description(), headers=OWN)
    assert created.status_code == 201 and created.json()["owner"] == "cms-wfms"
    task_id = created.json()["id"]

    for method, path, body in (("PATCH", f"/api/v1/tasks/{task_id}", {"priority": 999}),
                               ("POST", f"/api/v1/tasks/{task_id}/cancel", None)):
        refused = await client.request(method, path, json=body, headers=OTHER)
        assert refused.status_code == 403, refused.text
        assert "is not other-wfms's" in refused.json()["detail"]
    async with db.connect() as conn:
        row = (await conn.execute(sa.select(tasks).where(tasks.c.id == task_id))).one()
    assert (row.priority, row.status) == (5, "registered")  # nothing changed

    assert (await client.patch(f"/api/v1/tasks/{task_id}", json={"priority": 7}, headers=OWN)).status_code == 200
    assert (await client.post(f"/api/v1/tasks/{task_id}/pause", headers=OPERATOR)).status_code == 200
    assert (await client.post(f"/api/v1/tasks/{task_id}/resume", headers=OPERATOR)).status_code == 200
    assert (await client.post(f"/api/v1/tasks/{task_id}/cancel", headers=OPERATOR)).status_code == 200
    assert (await client.post(f"/api/v1/tasks/{task_id}/cancel", headers=OWN)).status_code == 200  # a repeat

    page = (await client.get(f"/api/v1/monitor/tasks/{task_id}", headers=OPERATOR)).json()
    trail = [(c["actor"], c["command"], c["detail"]) for c in page["commands"]]
    assert trail == [("cms-wfms", "submit", None), ("cms-wfms", "reprioritise", "5 -> 7"),
                     ("operator#" + trail[2][0].split("#")[1], "pause", "registered -> paused"),
                     (trail[2][0], "resume", "paused -> running"), (trail[2][0], "cancel", "running -> cancelled"),
                     ("cms-wfms", "cancel", "already cancelled")], trail
    assert trail[2][0].startswith("operator#")  # a token without a name: its role and a digest of it


async def test_a_task_without_an_owner_is_changed_by_operators_only(task_manager_two_clients, db) -> None:
    async with db.begin() as conn:  # submitted before owners existed
        task_id = await insert_task(conn)
    refused = await task_manager_two_clients.post(f"/api/v1/tasks/{task_id}/cancel", headers=OWN)
    assert refused.status_code == 403
    done = await task_manager_two_clients.post(f"/api/v1/tasks/{task_id}/cancel", headers=OPERATOR)
    assert done.status_code == 200, done.text


async def test_explain_shows_the_task_s_commands(task_manager_two_clients, db) -> None:
    client = task_manager_two_clients
    task_id = (await client.post("/api/v1/tasks", json=task_description(), headers=OWN)).json()["id"]
    async with db.begin() as conn:
        job_id = (await conn.execute(sa.insert(jobs).values(task_id=task_id, resource_type="cpu", priority=5,
                                                            n_files=1).returning(jobs.c.id))).scalar_one()
    await client.post(f"/api/v1/tasks/{task_id}/cancel", headers=OWN)
    explained = (await client.get(f"/api/v1/jobs/{job_id}/explain", headers=OPERATOR)).json()
    assert [(c["actor"], c["command"]) for c in explained["task_commands"]] == [("cms-wfms", "submit"),
                                                                                ("cms-wfms", "cancel")]

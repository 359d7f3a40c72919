"""The task-manager API against the real database and broker: registration, commands, errors, auth, events."""
from __future__ import annotations

import asyncio
import json
from typing import Any

import aio_pika
import httpx
import pytest
import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncEngine

from common.db.models import tasks
from common.messages import decode
from common.outbox import unpublished_count
from common.settings import Settings
from tests.conftest import OPERATOR_TOKEN, PILOT_TOKEN, WFMS_TOKEN, get_message, wait_for
from tests.factories import task_description

WFMS = {"Authorization": f"Bearer {WFMS_TOKEN}"}
OPERATOR = {"Authorization": f"Bearer {OPERATOR_TOKEN}"}


@pytest.fixture
async def events(settings: Settings, amqp: aio_pika.abc.AbstractConnection, task_manager: httpx.AsyncClient):
    """The queue the task-executor consumes: every task event must arrive there."""
    channel = await amqp.channel()
    return await channel.get_queue(f"{settings.broker_namespace}.task-executor.task-events")


async def drain(queue: aio_pika.abc.AbstractQueue, db: AsyncEngine) -> list[tuple[str, dict[str, Any]]]:
    """Every message now on the queue, once the outbox relay has published every committed event (a row is
    marked published only after the broker confirmed it, so by then each is on the queue)."""
    await wait_for(lambda: _all_published(db))
    out = []
    while (message := await queue.get(no_ack=True, fail=False)) is not None:
        envelope, payload = decode(message.body)
        out.append((envelope.type, payload.model_dump(mode="json")))
    return out


async def _all_published(db: AsyncEngine) -> bool:
    async with db.connect() as conn:
        return await unpublished_count(conn) == 0


async def _count_tasks(db: AsyncEngine) -> int:
    async with db.connect() as conn:
        return (await conn.execute(sa.select(sa.func.count()).select_from(tasks))).scalar_one()


async def _register(client: httpx.AsyncClient, **overrides: Any) -> dict[str, Any]:
    response = await client.post("/api/v1/tasks", json=task_description(**overrides), headers=WFMS)
    assert response.status_code == 201, response.text
    return response.json()


async def test_register_stores_the_task_and_publishes_its_event(task_manager, events, db) -> None:
    body = task_description(resource_type="gpu", split={"by": "bytes", "size": 10**9})
    response = await task_manager.post("/api/v1/tasks", json=body, headers=WFMS)
    assert response.status_code == 201, response.text
    task = response.json()
    assert response.headers["Location"] == f"/api/v1/tasks/{task['id']}"
    assert task["status"] == "registered"
    assert task["split"] == {"by": "bytes", "size": 10**9}
    assert task["payload"]["env"] == {"SPD_MODE": "online"}
    assert task["wfms_request_id"] == body["wfms_request_id"]

    message = await get_message(events)
    envelope, payload = decode(message.body)
    assert envelope.type == "task.registered"
    assert payload.model_dump(mode="json") == {"task_id": task["id"], "status": "registered", "priority": 5,
                                               "resource_type": "gpu"}
    assert message.message_id == str(envelope.message_id)

    fetched = await task_manager.get(f"/api/v1/tasks/{task['id']}", headers=OPERATOR)
    assert fetched.status_code == 200
    assert fetched.json()["name"] == body["name"]
    assert await _count_tasks(db) == 1


async def test_resubmission_with_the_same_request_id_returns_the_same_task(task_manager, events, db) -> None:
    body = task_description()
    first = await task_manager.post("/api/v1/tasks", json=body, headers=WFMS)
    again = await task_manager.post("/api/v1/tasks", json=body, headers=WFMS)
    assert (first.status_code, again.status_code) == (201, 200)
    assert first.json()["id"] == again.json()["id"]

    # a burst of concurrent retries of another request: still exactly one task
    burst = task_description()
    responses = await asyncio.gather(
        *(task_manager.post("/api/v1/tasks", json=burst, headers=WFMS) for _ in range(10))
    )
    codes = sorted(r.status_code for r in responses)
    assert codes == [200] * 9 + [201]
    assert len({r.json()["id"] for r in responses}) == 1

    assert await _count_tasks(db) == 2
    assert [t for t, _ in await drain(events, db)] == ["task.registered"] * 2


async def test_request_id_reused_for_another_description_is_a_conflict(task_manager, db) -> None:
    body = task_description()
    await task_manager.post("/api/v1/tasks", json=body, headers=WFMS)
    other = dict(body, priority=body["priority"] + 1)
    response = await task_manager.post("/api/v1/tasks", json=other, headers=WFMS)
    assert response.status_code == 409
    assert "different description" in response.json()["detail"]
    assert await _count_tasks(db) == 1


async def test_without_request_id_every_submission_is_a_new_task(task_manager, db) -> None:
    body = task_description(wfms_request_id=None)
    a = await task_manager.post("/api/v1/tasks", json=body, headers=WFMS)
    b = await task_manager.post("/api/v1/tasks", json={**body, "output_dataset": body["output_dataset"] + ".b"},
                                headers=WFMS)
    assert (a.status_code, b.status_code) == (201, 201)
    assert a.json()["id"] != b.json()["id"]


async def test_an_active_tasks_output_dataset_is_refused_to_another_task(task_manager, db) -> None:
    first = await task_manager.post("/api/v1/tasks", json=task_description(output_dataset="spd.out.x"),
                                    headers=WFMS)
    second = await task_manager.post("/api/v1/tasks", json=task_description(output_dataset="spd.out.x"),
                                     headers=WFMS)
    assert first.status_code == 201 and second.status_code == 409
    body = second.json()
    assert body["output_dataset"] == "spd.out.x" and body["task_id"] == first.json()["id"]
    assert "output of active task" in body["detail"]
    assert await _count_tasks(db) == 1
    # once the first task ended (cancelled here), the dataset may be written by another task
    assert (await task_manager.post(f"/api/v1/tasks/{first.json()['id']}/cancel", headers=WFMS)).status_code == 200
    third = await task_manager.post("/api/v1/tasks", json=task_description(output_dataset="spd.out.x"),
                                    headers=WFMS)
    assert third.status_code == 201


async def test_an_output_dataset_closed_in_the_dsm_is_refused_at_submission(settings, dsm_url, dsm, db) -> None:
    from services.task_manager.app import create_app
    from tests.conftest import running_app

    await dsm.create_dataset("spd.out.closed")
    await dsm.close_dataset("spd.out.closed")
    async with running_app(create_app(settings.model_copy(update={"dsm_url": dsm_url}))) as tm:
        refused = await tm.post("/api/v1/tasks", json=task_description(output_dataset="spd.out.closed"),
                                headers=WFMS)
        accepted = await tm.post("/api/v1/tasks", json=task_description(output_dataset="spd.out.open"),
                                 headers=WFMS)
    assert refused.status_code == 409 and "closed in the DSM" in refused.json()["detail"]
    assert accepted.status_code == 201
    assert await _count_tasks(db) == 1


@pytest.mark.parametrize(
    ("change", "field"),
    [
        ({"resource_type": "tpu"}, "resource_type"),
        ({"split": {"by": "files", "size": 0}}, "size"),
        ({"split": {"by": "lines", "size": 3}}, "by"),
        ({"priority": 0}, "priority"),
        ({"priority": 10**12}, "priority"),
        ({"cores": -1}, "cores"),
        ({"max_attempts": 0}, "max_attempts"),
        ({"name": ""}, "name"),
        ({"input_dataset": "has space"}, "input_dataset"),
        ({"payload": {"args": []}}, "command"),
        ({"payload": {"command": "x", "env": {"1BAD": "v"}}}, "env"),
        ({"unexpected": 1}, "unexpected"),
        ({"output_dataset": "spd.raw.run42"}, "output_dataset must differ"),
        ({"name": "nul\u0000byte"}, "NUL"),
        ({"metadata": {"k": "nul\u0000"}}, "NUL"),
    ],
)
async def test_bad_description_is_422_naming_the_field(task_manager, db, change, field) -> None:
    response = await task_manager.post("/api/v1/tasks", json=task_description(**change), headers=WFMS)
    assert response.status_code == 422, response.text
    assert field in json.dumps(response.json()["detail"])
    assert await _count_tasks(db) == 0


async def test_missing_fields_and_malformed_json_are_422(task_manager, db) -> None:
    response = await task_manager.post("/api/v1/tasks", json={"name": "x"}, headers=WFMS)
    assert response.status_code == 422
    missing = {e["loc"][-1] for e in response.json()["detail"]}
    assert {"type", "input_dataset", "output_dataset", "split"} <= missing
    response = await task_manager.post(
        "/api/v1/tasks", content=b"{not json", headers={**WFMS, "Content-Type": "application/json"}
    )
    assert response.status_code == 422
    assert await _count_tasks(db) == 0


async def test_auth_401_without_or_with_unknown_token_403_for_wrong_role(task_manager) -> None:
    task = await _register(task_manager)
    url = f"/api/v1/tasks/{task['id']}"
    assert (await task_manager.get(url)).status_code == 401
    assert (await task_manager.get(url, headers={"Authorization": "Bearer nope"})).status_code == 401
    assert (await task_manager.get(url, headers={"Authorization": "Basic abc"})).status_code == 401
    forbidden = await task_manager.get(url, headers={"Authorization": f"Bearer {PILOT_TOKEN}"})
    assert forbidden.status_code == 403 and "pilot" in forbidden.json()["detail"]
    # pause is an operator's action, not the WFMS's
    assert (await task_manager.post(f"{url}/pause", headers=WFMS)).status_code == 403
    assert (await task_manager.post(f"{url}/pause", headers=OPERATOR)).status_code == 200
    assert (await task_manager.post("/api/v1/tasks", json=task_description())).status_code == 401


async def test_unknown_task_is_404_everywhere_and_huge_ids_are_422(task_manager) -> None:
    for method, path in [
        ("GET", "/api/v1/tasks/999"),
        ("GET", "/api/v1/tasks/999/report"),
        ("GET", "/api/v1/tasks/999/files"),
        ("POST", "/api/v1/tasks/999/cancel"),
        ("POST", "/api/v1/tasks/999/pause"),
        ("POST", "/api/v1/tasks/999/resume"),
    ]:
        response = await task_manager.request(method, path, headers=OPERATOR)
        assert response.status_code == 404, (method, path, response.text)
        assert "999" in response.json()["detail"]
    assert (await task_manager.patch("/api/v1/tasks/999", json={"priority": 3}, headers=OPERATOR)).status_code == 404
    assert (await task_manager.get(f"/api/v1/tasks/{2**70}", headers=OPERATOR)).status_code == 422
    assert (await task_manager.get("/api/v1/tasks/abc", headers=OPERATOR)).status_code == 422


async def test_cancel_publishes_once_and_a_done_task_cannot_be_cancelled(task_manager, events, db) -> None:
    task = await _register(task_manager)
    url = f"/api/v1/tasks/{task['id']}"
    response = await task_manager.post(f"{url}/cancel", headers=WFMS)
    assert response.status_code == 200
    assert response.json()["status"] == "cancelled"
    assert response.json()["finished_at"] is not None
    again = await task_manager.post(f"{url}/cancel", headers=WFMS)
    assert again.status_code == 200 and again.json()["status"] == "cancelled"
    assert [t for t, _ in await drain(events, db)] == ["task.registered", "task.cancelled"]

    # once ended, nothing changes it: the 409 names the current state
    for action in ("pause", "resume"):
        conflict = await task_manager.post(f"{url}/{action}", headers=OPERATOR)
        assert conflict.status_code == 409
        assert conflict.json()["current_state"] == "cancelled"

    done = await _register(task_manager)
    async with db.begin() as conn:
        await conn.execute(sa.update(tasks).where(tasks.c.id == done["id"]).values(status="done"))
    conflict = await task_manager.post(f"/api/v1/tasks/{done['id']}/cancel", headers=WFMS)
    assert conflict.status_code == 409
    assert conflict.json()["current_state"] == "done"
    assert "done" in conflict.json()["detail"]
    await drain(events, db)
    assert await drain(events, db) == []  # the refused changes published nothing


async def test_pause_resume_and_resume_only_undoes_a_pause(task_manager, events, db) -> None:
    task = await _register(task_manager)
    url = f"/api/v1/tasks/{task['id']}"
    refused = await task_manager.post(f"{url}/resume", headers=OPERATOR)
    assert refused.status_code == 409 and refused.json()["current_state"] == "registered"
    assert (await task_manager.post(f"{url}/pause", headers=OPERATOR)).json()["status"] == "paused"
    assert (await task_manager.post(f"{url}/pause", headers=OPERATOR)).status_code == 200  # already paused
    assert (await task_manager.post(f"{url}/resume", headers=OPERATOR)).json()["status"] == "running"
    received = await drain(events, db)
    assert [t for t, _ in received] == ["task.registered", "task.paused", "task.resumed"]
    assert received[-1][1]["status"] == "running"


async def test_reprioritise(task_manager, events, db) -> None:
    task = await _register(task_manager, priority=1)
    url = f"/api/v1/tasks/{task['id']}"
    response = await task_manager.patch(url, json={"priority": 3}, headers=WFMS)
    assert response.status_code == 200 and response.json()["priority"] == 3
    assert (await task_manager.patch(url, json={"priority": 3}, headers=WFMS)).status_code == 200  # no change
    assert (await task_manager.patch(url, json={"priority": 0}, headers=WFMS)).status_code == 422
    assert (await task_manager.patch(url, json={"status": "done"}, headers=WFMS)).status_code == 422
    received = await drain(events, db)
    assert [(t, p["priority"]) for t, p in received] == [("task.registered", 1), ("task.reprioritised", 3)]

    await task_manager.post(f"{url}/cancel", headers=WFMS)
    conflict = await task_manager.patch(url, json={"priority": 7}, headers=WFMS)
    assert conflict.status_code == 409 and conflict.json()["current_state"] == "cancelled"


async def test_list_filters_by_status_and_pages_by_cursor(task_manager) -> None:
    ids = [(await _register(task_manager))["id"] for _ in range(5)]
    await task_manager.post(f"/api/v1/tasks/{ids[1]}/cancel", headers=WFMS)
    await task_manager.post(f"/api/v1/tasks/{ids[3]}/cancel", headers=WFMS)

    seen, after = [], None
    while True:
        params = {"limit": 2} | ({"after": after} if after is not None else {})
        page = (await task_manager.get("/api/v1/tasks", params=params, headers=WFMS)).json()
        seen += [t["id"] for t in page["items"]]
        after = page["next_after"]
        if after is None:
            break
    assert seen == ids

    cancelled = (await task_manager.get("/api/v1/tasks", params={"status": "cancelled"}, headers=WFMS)).json()
    assert [t["id"] for t in cancelled["items"]] == [ids[1], ids[3]]
    bad = await task_manager.get("/api/v1/tasks", params={"status": "exploded"}, headers=WFMS)
    assert bad.status_code == 422
    assert (await task_manager.get("/api/v1/tasks", params={"limit": 0}, headers=WFMS)).status_code == 422


async def test_health_readiness_metrics_and_openapi(task_manager) -> None:
    assert (await task_manager.get("/healthz")).json() == {"status": "ok"}
    ready = await task_manager.get("/readyz")
    assert ready.status_code == 200
    assert ready.json()["checks"] == {"database": "ok", "broker": "ok"}
    await task_manager.get("/api/v1/tasks/12345", headers=WFMS)
    metrics = (await task_manager.get("/metrics")).text
    assert 'route="/api/v1/tasks/{task_id}"' in metrics and 'status="404"' in metrics
    assert "/api/v1/tasks/12345" not in metrics
    assert "/api/v1/tasks/{task_id}/cancel" in (await task_manager.get("/openapi.json")).json()["paths"]
    assert (await task_manager.get("/docs")).status_code == 200


async def test_readyz_reports_a_lost_broker(task_manager) -> None:
    await task_manager.app.state.broker.close()  # type: ignore[attr-defined]
    ready = await task_manager.get("/readyz")
    assert ready.status_code == 503
    assert ready.json()["checks"]["broker"] == "down"

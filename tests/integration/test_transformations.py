"""A task names a site-declared transformation; raw commands are a development switch, off by default."""
from __future__ import annotations

import json
from pathlib import Path

import pytest
import sqlalchemy as sa

from common.db.models import tasks
from tests.conftest import WFMS_TOKEN, running_app
from tests.factories import task_description

WFMS = {"Authorization": f"Bearer {WFMS_TOKEN}"}
REGISTRY = {"transformations": [
    {"name": "spd-filter", "executable": "spd-filter", "args": ["--threshold", "{param:threshold}", "{inputs}"],
     "parameters": {"threshold": {"pattern": r"^[0-9]+(\.[0-9]+)?$", "default": "0.5"}},
     "resource_type": "cpu", "cores": 2, "memory_mb": 700},
    {"name": "calib", "executable": "/opt/spd/bin/calib", "args": ["--db", "{param:tag}", "{inputs}"],
     "parameters": {"tag": {}}, "resource_type": "gpu", "cores": 4, "memory_mb": 8000},
    {"name": "flags", "executable": "/opt/spd/bin/flags", "args": ["{param:mode}", "--", "{inputs}"],
     "parameters": {"mode": {"pattern": "^--(fast|slow)$", "option": True}}},
]}


@pytest.fixture
async def site(settings, tmp_path):
    """The task-manager as a site runs it: its own registry, raw commands off (the default)."""
    from services.task_manager.app import create_app

    registry = tmp_path / "transformations.json"
    registry.write_text(json.dumps(REGISTRY))
    strict = settings.model_copy(update={"allow_arbitrary_commands": False, "transformations_file": str(registry)})
    async with running_app(create_app(strict)) as client:
        yield client


def described(transformation: dict | None = None, **overrides) -> dict:
    body = task_description(**overrides)
    del body["payload"], body["resource_type"], body["cores"], body["memory_mb"]
    if transformation is not None:
        body["transformation"] = transformation
    return body


async def _count(db) -> int:
    async with db.connect() as conn:
        return (await conn.execute(sa.select(sa.func.count()).select_from(tasks))).scalar_one()


async def test_a_raw_command_is_refused_unless_the_development_switch_is_on(site, db) -> None:
    response = await site.post("/api/v1/tasks", json=task_description(), headers=WFMS)
    assert response.status_code == 422, response.text
    assert "raw commands are disabled" in response.json()["detail"]
    assert await _count(db) == 0


async def test_a_transformation_is_resolved_at_submission_with_its_defaults(site, db) -> None:
    response = await site.post("/api/v1/tasks", json=described({"name": "spd-filter",
                                                                "parameters": {"threshold": "0.75"}}),
                               headers=WFMS)
    assert response.status_code == 201, response.text
    task = response.json()
    assert task["payload"] == {"transformation": "spd-filter", "parameters": {"threshold": "0.75"},
                               "command": "spd-filter", "args": ["--threshold", "0.75", "{inputs}"], "env": {}}
    assert (task["resource_type"], task["cores"], task["memory_mb"]) == ("cpu", 2, 700)
    # the default of a parameter, and a task's own resources over the transformation's
    response = await site.post("/api/v1/tasks", json={**described({"name": "spd-filter"}), "cores": 1},
                               headers=WFMS)
    assert response.status_code == 201, response.text
    assert response.json()["payload"]["args"] == ["--threshold", "0.5", "{inputs}"]
    assert response.json()["cores"] == 1


@pytest.mark.parametrize(("transformation", "reason"), [
    ({"name": "rm-rf"}, "unknown transformation 'rm-rf'"),
    ({"name": "spd-filter", "parameters": {"threshold": "0.5; rm -rf /"}}, "does not match"),
    ({"name": "spd-filter", "parameters": {"output": "x"}}, "has no parameters ['output']"),
    ({"name": "calib"}, "needs parameter 'tag'"),
    ({"name": "calib", "parameters": {"tag": "../../etc/passwd"}}, "does not match"),
    ({"name": "calib", "parameters": {"tag": ".."}}, "'..' segment"),
    ({"name": "calib", "parameters": {"tag": "{inputs}"}}, "brace"),
    # issue 21 finding 4: a value that the program would read as an option (spd-quality's run=--help)
    ({"name": "calib", "parameters": {"tag": "--help"}}, "starts with '-'"),
    ({"name": "calib", "parameters": {"tag": "-rf"}}, "starts with '-'"),
])
async def test_a_transformation_that_does_not_fit_is_refused_with_the_reason(site, db, transformation,
                                                                            reason) -> None:
    response = await site.post("/api/v1/tasks", json=described(transformation), headers=WFMS)
    assert response.status_code == 422, response.text
    assert reason in json.dumps(response.json()["detail"])
    assert await _count(db) == 0


async def test_a_parameter_declared_as_an_option_may_start_with_a_dash(site, db) -> None:
    response = await site.post("/api/v1/tasks", json=described({"name": "flags", "parameters": {"mode": "--fast"}}),
                               headers=WFMS)
    assert response.status_code == 201, response.text
    assert response.json()["payload"]["args"] == ["--fast", "--", "{inputs}"]


async def test_a_task_names_exactly_one_of_transformation_and_payload(site) -> None:
    both = {**task_description(), "transformation": {"name": "spd-filter"}}
    neither = described()
    for body in (both, neither):
        response = await site.post("/api/v1/tasks", json=body, headers=WFMS)
        assert response.status_code == 422
        assert "exactly one of transformation and payload" in response.text


async def test_the_registry_is_listed_for_clients(site) -> None:
    response = await site.get("/api/v1/transformations", headers=WFMS)
    assert response.status_code == 200
    assert [t["name"] for t in response.json()] == ["calib", "flags", "spd-filter"]
    assert response.json()[2]["parameters"]["threshold"]["default"] == "0.5"
    assert (await site.get("/api/v1/transformations")).status_code == 401


@pytest.mark.parametrize(("entry", "reason"), [
    ({"name": "x", "executable": "../../bin/sh"}, "executable"),
    ({"name": "x", "executable": "/opt/../bin/sh"}, "'..'"),
    ({"name": "x", "executable": "sh", "args": ["{param:cmd}"]}, "undeclared parameters"),
    ({"name": "x", "executable": "sh", "parameters": {"p": {"pattern": "("}}}, "pattern"),
])
def test_a_broken_registry_stops_the_service_before_it_listens(settings, tmp_path: Path, entry, reason) -> None:
    from services.task_manager.app import create_app

    registry = tmp_path / "transformations.json"
    registry.write_text(json.dumps({"transformations": [entry]}))
    with pytest.raises(ValueError, match=reason):
        create_app(settings.model_copy(update={"transformations_file": str(registry)}))

"""The authorization matrix, generated from every service's OpenAPI: every route x every role x no token.

Each operation's bearer requirement lists the roles it allows (``x-roles``). Without a token the answer is 401,
with a role it does not allow 403, with one it allows anything but those; and whatever the answer, the
operation's OpenAPI documents that status code.
"""
from __future__ import annotations

import importlib
from typing import Any

import pytest

from tests.conftest import OPERATOR_TOKEN, PILOT_TOKEN, SERVICE_TOKEN, WFMS_TOKEN, running_app

SERVICES = ("task_manager", "job_manager", "task_executor", "dsm", "job_executor")
TOKENS = {"wfms": WFMS_TOKEN, "operator": OPERATOR_TOKEN, "pilot": PILOT_TOKEN, "service": SERVICE_TOKEN}


def _value(schema: dict[str, Any]) -> str:
    kinds = {s.get("type") for s in [schema, *schema.get("anyOf", [])]}
    return "1" if "integer" in kinds else "spd.raw.x"


def _url(path: str, operation: dict[str, Any]) -> str:
    for p in operation.get("parameters", []):
        if p["in"] == "path":
            path = path.replace("{" + p["name"] + "}", _value(p.get("schema", {})))
    return path


@pytest.fixture(params=SERVICES)
async def service(request, settings, tmp_path):
    create_app = importlib.import_module(f"services.{request.param}.app").create_app
    tuned = settings.model_copy(update={"storage_root": str(tmp_path), "oversight_interval_s": 60})
    async with running_app(create_app(tuned)) as client:
        yield request.param, client


async def test_every_route_answers_each_role_as_its_openapi_documents(service) -> None:
    name, client = service
    document = (await client.get("/openapi.json")).json()
    checked = 0
    for path, item in document["paths"].items():
        for method, operation in item.items():
            url = _url(path, operation)
            body = {} if "requestBody" in operation else None
            roles = operation.get("x-roles")
            documented = set(operation["responses"])

            async def call(token: str | None, method=method, url=url, body=body):
                headers = {"Authorization": f"Bearer {token}"} if token else {}
                return await client.request(method.upper(), url, json=body, headers=headers)

            for token, who in ((None, "no token"), ("not-a-token", "an unknown token")):
                response = await call(token)
                expected = {401} if roles is not None else None
                where = f"{name}: {method.upper()} {path} with {who}"
                assert expected is None or response.status_code in expected, (where, response.text)
                assert str(response.status_code) in documented, (where, response.status_code, sorted(documented))
            for role, token in TOKENS.items():
                response = await call(token)
                where = f"{name}: {method.upper()} {path} as {role} (allowed: {roles})"
                if roles is not None and role not in roles:
                    assert response.status_code == 403 and "may not" in response.json()["detail"], (
                        where, response.text)
                else:
                    assert response.status_code != 401, (where, response.text)
                    assert response.status_code != 403 or "may not" not in response.text, (where, response.text)
                assert str(response.status_code) in documented, (where, response.status_code, sorted(documented))
            checked += 1
    assert checked >= {"task_manager": 20, "job_manager": 3, "task_executor": 0, "dsm": 5,
                       "job_executor": 5}[name], checked

"""Strict input on every public schema (issue 21, finding 3): a bool is never an integer, a string never a
number, a number never a bool. Walks every request body of every service from its OpenAPI document, and for each
integer, number and boolean in it (nested objects and arrays included) sends a body with a wrong-typed value
there: the 422 must name that very place (before, ``"memory_mb": true`` was stored as 1 MB and the task ran)."""
from __future__ import annotations

from typing import Any

from tests.conftest import OPERATOR_TOKEN, PILOT_TOKEN, SERVICE_TOKEN, WFMS_TOKEN
from tests.integration.test_authorization_matrix import _url, service  # noqa: F401 (the fixture)

TOKENS = {"operator": OPERATOR_TOKEN, "wfms": WFMS_TOKEN, "service": SERVICE_TOKEN, "pilot": PILOT_TOKEN}
WRONG = {"integer": [True, "7"], "number": [True, "7.5"], "boolean": ["true", 1]}


def _resolve(schema: dict[str, Any], document: dict[str, Any]) -> dict[str, Any]:
    while "$ref" in schema:
        schema = document["components"]["schemas"][schema["$ref"].rsplit("/", 1)[1]]
    return schema


def leaves(schema: dict[str, Any], document: dict[str, Any], path: tuple = (), depth: int = 0):
    """(path, JSON type) of every integer, number and boolean a body may hold."""
    schema = _resolve(schema, document)
    if depth > 6:
        return
    for branch in schema.get("anyOf", []) + schema.get("allOf", []):
        yield from leaves(branch, document, path, depth + 1)
    kind = schema.get("type")
    if kind in WRONG:
        yield path, kind
    elif kind == "object":
        for name, sub in schema.get("properties", {}).items():
            yield from leaves(sub, document, (*path, name), depth + 1)
    elif kind == "array" and "items" in schema:
        yield from leaves(schema["items"], document, (*path, 0), depth + 1)


def body_at(path: tuple, value: Any) -> Any:
    for step in reversed(path):
        value = [value] if isinstance(step, int) else {step: value}
    return value


async def test_every_number_and_bool_of_every_request_body_is_strict(service) -> None:  # noqa: F811
    name, client = service
    document = (await client.get("/openapi.json")).json()
    lax, checked, bodies = [], 0, 0
    for path, item in document["paths"].items():
        for method, operation in item.items():
            content = operation.get("requestBody", {}).get("content", {}).get("application/json")
            if content is None:
                continue
            bodies += 1
            role = next((r for r in TOKENS if r in (operation.get("x-roles") or [])), "operator")
            headers = {"Authorization": f"Bearer {TOKENS[role]}"}
            for where, kind in {(p, k) for p, k in leaves(content["schema"], document)}:
                for wrong in WRONG[kind]:
                    response = await client.request(method.upper(), _url(path, operation), headers=headers,
                                                    json=body_at(where, wrong))
                    checked += 1
                    errors = response.json().get("detail") if response.status_code == 422 else None
                    named = isinstance(errors, list) and any(
                        tuple(e.get("loc", ()))[1:len(where) + 1] == where for e in errors)
                    if not named:
                        lax.append(f"{method.upper()} {path} {'.'.join(map(str, where))} = {wrong!r}: "
                                   f"{response.status_code}")
    assert not lax, "\n".join(lax)
    assert checked > 0 or bodies == 0, name  # (the job-manager and task-executor take no request body)

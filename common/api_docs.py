"""Every route's OpenAPI lists the error answers it can give, with their body.

``document_errors(app)`` replaces the app's OpenAPI generator by one that adds to each operation, from what the
operation is made of: ``x-roles`` and 401/403 when it needs a token (the scopes of its bearer requirement),
404 when it names something by path, 413 and 422 (a validation list, or a domain reason) when it takes input,
503 (a dependency unavailable) always; and gives every error answer, declared here or at the route, the
``Error`` body: ``{"detail": "...", ...}`` with the extra fields a refusal carries (e.g. ``current_state``), each
typed. Operation ids are the route functions' names; each router gives its operations a tag.
The authorization matrix test and schemathesis read this document.
"""
from __future__ import annotations

from typing import Any

from fastapi import FastAPI
from fastapi.openapi.utils import get_openapi
from fastapi.routing import APIRoute
from pydantic import BaseModel

HAND_DECODED_SCHEMAS = "x-hand-decoded-schemas"  # moved into the components by document_errors

ERROR_SCHEMA: dict[str, Any] = {
    "title": "Error",
    "type": "object",
    # every field an error answer of ours carries (common.observability.map_error's extras), typed
    "properties": {
        "detail": {"type": "string", "description": "why, in words"},
        "current_state": {"type": "string", "description": "409: the state that refused the change"},
        "task_id": {"type": "integer", "description": "409: the task the conflict is with (a reused request id "
                                                      "names its task, a taken output dataset its writer)"},
        "output_dataset": {"type": "string", "description": "409: the output dataset that is taken or closed"},
    },
    "required": ["detail"],
    "additionalProperties": False,
}
ERROR = {"application/json": {"schema": {"$ref": "#/components/schemas/Error"}}}
VALIDATION = {"application/json": {"schema": {"anyOf": [{"$ref": "#/components/schemas/HTTPValidationError"},
                                                        {"$ref": "#/components/schemas/Error"}]}}}
GENERIC = {
    401: "missing or unknown bearer token",
    403: "the token's role may not do this",
    404: "nothing of this name or id",
    413: "request body larger than WMS_MAX_REQUEST_BYTES",
    422: "invalid input: a list of validation errors, or the reason it is refused",
    503: "a dependency (database, broker, DSM) is unavailable: retry later",
}


def roles_of(operation: dict[str, Any]) -> list[str] | None:
    """The roles an operation allows: the scopes of its bearer requirement (``require_role`` and the pilot
    credential put them there; OpenAPI 3.1 lets a non-OAuth requirement list role names); None: public."""
    found: set[str] | None = None
    for requirement in operation.get("security", []):
        for scopes in requirement.values():
            found = set(scopes) if found is None else found & set(scopes)
    return sorted(found) if found is not None else None


def _error_answers(operation: dict[str, Any]) -> None:
    responses: dict[str, Any] = operation.setdefault("responses", {})
    roles = roles_of(operation)
    wanted: list[int] = [503]
    if roles is not None:
        operation["x-roles"] = list(roles)
        wanted += [401, 403]
    if any(p.get("in") == "path" for p in operation.get("parameters", [])):
        wanted.append(404)
    if "requestBody" in operation:
        wanted.append(413)
    wanted.append(422)  # any request may be malformed (a NUL character in its URL, at least)
    for code in wanted:
        responses.setdefault(str(code), {"description": GENERIC[code]})
    for status, answer in responses.items():
        if str(status).startswith(("4", "5")):
            answer["content"] = VALIDATION if str(status) == "422" else ERROR


def hand_decoded_body(model: type[BaseModel]) -> dict[str, Any]:
    """``openapi_extra`` of a route that decodes its body itself (the exchange, with msgspec): the body is documented
    from the protocol's pydantic model all the same, its schemas added to the document's components."""
    schema = model.model_json_schema(ref_template="#/components/schemas/{model}", mode="validation")
    defs = schema.pop("$defs", {})
    return {"requestBody": {"required": True, "content": {"application/json": {
        "schema": {"$ref": f"#/components/schemas/{model.__name__}"}}}},
        HAND_DECODED_SCHEMAS: {**defs, model.__name__: schema}}


def operation_name(route: APIRoute) -> str:
    """An operation's id: its route function's name (``register_task``, ``get_task_report``), what a client
    generated from the document calls it. Every FastAPI app of ours passes this as generate_unique_id_function."""
    return route.name


def document_errors(app: FastAPI) -> None:
    def openapi() -> dict[str, Any]:
        if app.openapi_schema is None:
            schema = get_openapi(title=app.title, version=app.version, description=app.description,
                                 routes=app.routes)
            schemas = schema.setdefault("components", {}).setdefault("schemas", {})
            schemas["Error"] = ERROR_SCHEMA
            schemas.setdefault("HTTPValidationError", _validation_error_schema())
            schemas.setdefault("ValidationError", _validation_item_schema())
            named: set[str] = set()
            for path_item in schema.get("paths", {}).values():
                for operation in path_item.values():
                    for name, body_schema in operation.pop(HAND_DECODED_SCHEMAS, {}).items():
                        schemas.setdefault(name, body_schema)
                    _error_answers(operation)
                    if operation.get("operationId") in named:  # two route functions of one name: a mistake
                        raise ValueError(f"two operations named {operation['operationId']}")
                    named.add(operation.get("operationId"))
            app.openapi_schema = schema
        return app.openapi_schema

    app.openapi = openapi  # type: ignore[method-assign]


def _validation_item_schema() -> dict[str, Any]:
    return {"title": "ValidationError", "type": "object", "required": ["loc", "msg", "type"],
            "properties": {"loc": {"type": "array", "items": {"anyOf": [{"type": "string"}, {"type": "integer"}]}},
                           "msg": {"type": "string"}, "type": {"type": "string"}}}


def _validation_error_schema() -> dict[str, Any]:
    return {"title": "HTTPValidationError", "type": "object",
            "properties": {"detail": {"type": "array", "items": {"$ref": "#/components/schemas/ValidationError"}}}}

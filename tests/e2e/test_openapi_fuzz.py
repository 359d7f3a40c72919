"""schemathesis against every service's OpenAPI, the services running as processes: zero 5xx answers, every
status code documented, every body as its schema says. Bounded: WMS_FUZZ_EXAMPLES examples per operation
(default 50), so the whole run stays within a few minutes of CI."""
from __future__ import annotations

import asyncio
import os

import hypothesis
import pytest
import schemathesis
from schemathesis.checks import not_a_server_error
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    response_schema_conformance,
    status_code_conformance,
)

from tests.conftest import OPERATOR_TOKEN, PILOT_TOKEN, SERVICE_TOKEN, WFMS_TOKEN
from tests.faults.harness import SERVICES, fault_run

pytestmark = pytest.mark.e2e
EXAMPLES = int(os.environ.get("WMS_FUZZ_EXAMPLES", "50"))
CHECKS = [not_a_server_error, status_code_conformance, response_schema_conformance, content_type_conformance]
# the token each operation is called with: the most powerful role it allows
PREFERENCE = (("operator", OPERATOR_TOKEN), ("service", SERVICE_TOKEN), ("wfms", WFMS_TOKEN), ("pilot", PILOT_TOKEN))


def fuzz(base_url: str) -> list[str]:
    """Every failure, as text (empty: none)."""
    schema = schemathesis.openapi.from_url(f"{base_url}/openapi.json")
    failures: list[str] = []
    for result in schema.get_all_operations():
        operation = result.ok()
        roles = operation.definition.raw.get("x-roles") or []
        token = next((t for role, t in PREFERENCE if role in roles), OPERATOR_TOKEN)

        try:
            examples(operation, base_url, token)()
        except (KeyboardInterrupt, SystemExit):
            raise
        except BaseException as exc:  # a check failed (a FailureGroup): go on, report every operation's failure
            failures.append(f"{operation.label}: {str(exc)[:1500]}")
    return failures


def examples(operation, base_url: str, token: str):
    @hypothesis.settings(max_examples=EXAMPLES, deadline=None, database=None, derandomize=True,
                         suppress_health_check=list(hypothesis.HealthCheck),
                         phases=[hypothesis.Phase.explicit, hypothesis.Phase.generate])
    @hypothesis.given(case=operation.as_strategy())
    def run(case) -> None:
        response = case.call(base_url=base_url, headers={"Authorization": f"Bearer {token}"}, timeout=30)
        case.validate_response(response, checks=CHECKS)

    return run


async def test_no_service_answers_5xx_or_outside_its_openapi(postgres_server_url, amqp_url, tmp_path) -> None:
    async with fault_run(postgres_server_url, amqp_url, tmp_path) as run:
        await run.start_services()
        failures = []
        for service in SERVICES:
            failures += await asyncio.to_thread(fuzz, run.deployment.url(service))
        assert not failures, "\n\n".join(failures)

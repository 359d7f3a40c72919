"""Error answers carry only the extra fields that have a value: the OpenAPI Error schema types each (found by
schemathesis: a 409 for a closed output dataset answered "task_id": null where the schema says integer)."""
from __future__ import annotations

import json

from common.observability import error_response


def test_an_extra_without_a_value_is_left_out() -> None:
    body = json.loads(error_response(409, "closed", output_dataset="out", task_id=None).body)
    assert body == {"detail": "closed", "output_dataset": "out"}

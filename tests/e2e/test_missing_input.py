"""A task whose input dataset does not exist (issue 22, finding 6): it was accepted (201) without a word, failed
only after WMS_DATASET_WAIT_S, and left its output dataset created, empty and closed in the DSM, so that the
corrected resubmission with the same output name was refused (409 "closed in the DSM"). Now the answer says the
input is missing and until when the task waits for it; the task fails with that reason; no output dataset is left
behind, and the corrected resubmission is accepted and runs."""
from __future__ import annotations

import datetime as dt

import pytest

from tests.conftest import WFMS_TOKEN, wait_for
from tests.e2e.stack import wms_stack
from tests.e2e.test_dispatch import copy_payload
from tests.factories import task_description

pytestmark = pytest.mark.e2e
WFMS = {"Authorization": f"Bearer {WFMS_TOKEN}"}


async def test_a_missing_input_is_said_at_once_and_blocks_no_resubmission(settings, db, tmp_path) -> None:
    async with wms_stack(settings, db, tmp_path, dataset_wait_s=2.0) as stack:
        body = task_description(input_dataset="raw.typo", output_dataset="out.missing")
        answer = await stack.task_manager.post("/api/v1/tasks", json=body, headers=WFMS)
        assert answer.status_code == 201, answer.text
        accepted = answer.json()
        assert accepted["input_dataset_found"] is False
        until = dt.datetime.fromisoformat(accepted["input_wait_until"])
        created = dt.datetime.fromisoformat(accepted["created_at"])
        assert until - created == dt.timedelta(seconds=2)
        assert any("raw.typo" in note and "does not exist" in note for note in accepted["notes"])

        await wait_for(lambda: stack.ended(accepted["id"]), timeout=60)
        failed = await stack.task(accepted["id"])
        assert failed.status == "failed" and "raw.typo" in failed.error
        assert await stack.dsm.dataset("out.missing") is None  # nothing left behind that blocks a resubmission

        await stack.make_dataset("raw.fixed", 2)
        again = await stack.task_manager.post("/api/v1/tasks", headers=WFMS, json=task_description(
            input_dataset="raw.fixed", output_dataset="out.missing", payload=copy_payload()))
        assert again.status_code == 201, again.text
        assert again.json()["input_dataset_found"] is True and again.json()["input_wait_until"] is None
        assert again.json()["notes"] == []
        stack.start_pilot("rest")
        await wait_for(lambda: stack.ended(again.json()["id"]), timeout=60)
        assert (await stack.task(again.json()["id"])).status == "done"

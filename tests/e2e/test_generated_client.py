"""The public APIs as a WFMS team's generated client sees them (issue 22, finding 11): openapi-python-client 0.29
(the usual generator) made a client that dropped the task list's response (two models titled TaskPage), named
every function after its path (`register_task_api_v1_tasks_post`) in one `default` package, and left the error
fields and several maps untyped. Now every service's document generates without a warning, with our operation
ids and tags, and the README's first task runs through the generated clients with every answer parsed: the
dataset in the DSM, the submission, polling, the report, the files, a 404 and a 409.

The generator runs from its own venv (scripts/setup makes .venv-openapi: it pins another typer than the CLI's).
"""
from __future__ import annotations

import importlib
import json
import os
import subprocess
import sys
import zlib
from pathlib import Path

import pytest

from tests.conftest import SERVICE_TOKEN, WFMS_TOKEN, wait_for
from tests.e2e.stack import wms_stack
from tests.e2e.test_dispatch import copy_payload

pytestmark = pytest.mark.e2e
ROOT = Path(__file__).resolve().parents[2]
GENERATOR = ROOT / ".venv-openapi" / "bin" / "openapi-python-client"
EXPECTED_TAGS = {"task-manager": {"tasks", "operations", "credentials", "monitor"}, "dsm": {"datasets"},
                 "job-executor": {"pilots"}, "job-manager": {"jobs"}}


def documents(settings) -> dict[str, dict]:
    from services.dsm.app import create_app as dsm
    from services.job_executor.app import create_app as job_executor
    from services.job_manager.app import create_app as job_manager
    from services.task_manager.app import create_app as task_manager

    return {"task-manager": task_manager(settings).openapi(), "dsm": dsm(settings).openapi(),
            "job-executor": job_executor(settings).openapi(), "job-manager": job_manager(settings).openapi()}


def generate(document: dict, package: str, tmp: Path) -> Path:
    assert GENERATOR.exists(), f"{GENERATOR} is missing: scripts/setup installs it"
    source = tmp / f"{package}.json"
    source.write_text(json.dumps(document))
    done = subprocess.run([GENERATOR, "generate", "--path", source, "--meta", "none", "--output-path",
                           tmp / "clients" / package], capture_output=True, text=True, timeout=300,
                          env={**os.environ, "PATH": f"{Path(sys.executable).parent}:{os.environ['PATH']}"})
    said = done.stdout + done.stderr
    assert done.returncode == 0 and "Warning" not in said and "Unable to" not in said, said
    return tmp / "clients" / package


async def test_every_api_generates_a_clean_client_that_runs_the_first_task(settings, db, tmp_path) -> None:
    for service, document in documents(settings).items():
        operations = [op for path in document["paths"].values() for op in path.values()]
        ids = [op["operationId"] for op in operations]
        assert len(ids) == len(set(ids)) and all("_api_" not in i and not i.endswith(("_get", "_post")) for i in ids)
        assert {t for op in operations for t in op["tags"]} == EXPECTED_TAGS[service], service
        generate(document, service.replace("-", "_") + "_client", tmp_path)
    sys.path.insert(0, str(tmp_path / "clients"))
    try:
        await _first_task(settings, db, tmp_path)
    finally:
        sys.path.remove(str(tmp_path / "clients"))
        for name in [m for m in sys.modules if m.startswith(("task_manager_client", "dsm_client"))]:
            del sys.modules[name]


async def _first_task(settings, db, tmp_path) -> None:
    tm = importlib.import_module("task_manager_client")
    tm_models = importlib.import_module("task_manager_client.models")
    dsm = importlib.import_module("dsm_client")
    dsm_models = importlib.import_module("dsm_client.models")
    register_task = importlib.import_module("task_manager_client.api.tasks.register_task")
    get_task = importlib.import_module("task_manager_client.api.tasks.get_task")
    list_tasks = importlib.import_module("task_manager_client.api.tasks.list_tasks")
    get_report = importlib.import_module("task_manager_client.api.tasks.get_task_report")
    list_files = importlib.import_module("task_manager_client.api.tasks.list_task_files")
    cancel_task = importlib.import_module("task_manager_client.api.tasks.cancel_task")
    create_dataset = importlib.import_module("dsm_client.api.datasets.create_dataset")
    register_files = importlib.import_module("dsm_client.api.datasets.register_files")
    close_dataset = importlib.import_module("dsm_client.api.datasets.close_dataset")
    dsm_files = importlib.import_module("dsm_client.api.datasets.list_files")

    async with wms_stack(settings, db, tmp_path) as stack:
        wfms = tm.AuthenticatedClient(base_url=str(stack.task_manager.base_url), token=WFMS_TOKEN)
        catalog = dsm.AuthenticatedClient(base_url=stack.dsm.base_url.removesuffix("/dsm/v1"), token=SERVICE_TOKEN)

        # 1. a dataset of six raw files, registered in the DSM (as a DAQ would)
        raw = tmp_path / "storage" / "raw" / "mine"
        raw.mkdir(parents=True)
        entries = []
        for i in range(6):
            path = raw / f"slice-{i:06d}.raw.jsonl"
            path.write_bytes(f'{{"slice": {i}}}\n'.encode())
            entries.append({"lfn": f"raw/mine/{path.name}", "url": f"file://{path}", "size": path.stat().st_size,
                            "adler32": f"{zlib.adler32(path.read_bytes()) & 0xFFFFFFFF:08x}", "events": 1})
        created = await create_dataset.asyncio_detailed(client=catalog,
                                                        body=dsm_models.DatasetCreate(name="spd.raw.mine"))
        assert created.status_code == 201 and isinstance(created.parsed, dsm_models.Dataset)
        counted = await register_files.asyncio_detailed(
            "spd.raw.mine", client=catalog, body=dsm_models.FileRegistration.from_dict({"files": entries}))
        assert isinstance(counted.parsed, dsm_models.Registration) and counted.parsed.registered == 6
        closed = await close_dataset.asyncio_detailed("spd.raw.mine", client=catalog)
        assert isinstance(closed.parsed, dsm_models.Dataset) and closed.parsed.status.value == "closed"
        page = await dsm_files.asyncio_detailed("spd.raw.mine", client=catalog, limit=4)
        assert isinstance(page.parsed, dsm_models.FilePage) and len(page.parsed.items) == 4
        assert page.parsed.next_after == 4

        # 2. submit, 3. poll until it ends
        description = {"name": "unscramble mine", "type": "unscramble", "input_dataset": "spd.raw.mine",
                       "output_dataset": "spd.events.mine", "payload": copy_payload(),
                       "split": {"by": "files", "size": 1}, "wfms_request_id": "mine-unscramble-1"}
        submitted = await register_task.asyncio_detailed(
            client=wfms, body=tm_models.TaskDescription.from_dict(description))
        assert submitted.status_code == 201 and isinstance(submitted.parsed, tm_models.TaskRegistered)
        assert submitted.parsed.input_dataset_found is True
        task_id = submitted.parsed.id
        stack.start_pilot("rest")

        async def ended() -> bool:
            answer = await get_task.asyncio_detailed(task_id, client=wfms)
            assert isinstance(answer.parsed, tm_models.TaskDetail), answer.content
            return answer.parsed.status.value in ("done", "finished", "failed", "cancelled")
        await wait_for(ended, timeout=90)
        detail = (await get_task.asyncio_detailed(task_id, client=wfms)).parsed
        assert detail.status.value == "done" and detail.progress.jobs.finished == 6
        listed = (await list_tasks.asyncio_detailed(client=wfms)).parsed
        assert isinstance(listed, tm_models.TaskPage) and [t.id for t in listed.items] == [task_id]
        assert listed.next_after is None

        # 4. the report, 5. the files
        report = (await get_report.asyncio_detailed(task_id, client=wfms)).parsed
        assert isinstance(report, tm_models.TaskReport) and report.final
        assert report.outputs.files == 6 and report.jobs.finished == 6 and report.failures == []
        outputs = tm_models.ListTaskFilesRole("output")
        files = (await list_files.asyncio_detailed(task_id, client=wfms, role=outputs)).parsed
        assert isinstance(files, tm_models.FilePage) and len(files.items) == 6
        assert {f.role.value for f in files.items} == {"output"} and {f.status.value for f in files.items} == {
            "registered"}

        # 6. a 404 and a 409, each parsed with its typed fields
        missing = await get_task.asyncio_detailed(999_999, client=wfms)
        assert missing.status_code == 404 and isinstance(missing.parsed, tm_models.Error)
        too_late = await cancel_task.asyncio_detailed(task_id, client=wfms)
        assert too_late.status_code == 409 and isinstance(too_late.parsed, tm_models.Error)
        assert too_late.parsed.current_state == "done"
        taken = await register_task.asyncio_detailed(client=wfms, body=tm_models.TaskDescription.from_dict(
            {**description, "wfms_request_id": "mine-unscramble-2"}))
        assert taken.status_code == 409 and isinstance(taken.parsed, tm_models.Error)
        assert taken.parsed.output_dataset == "spd.events.mine"

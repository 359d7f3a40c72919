"""The rules of one attempt, whatever the transport: where it stages (a directory per attempt), what its report may
name (checked, not trusted), the FILE_DAT rows of what it staged, and the job spec a pilot runs.

Fencing: every change a pilot asks for is applied with ``WHERE id = job AND attempt = attempt AND pilot_id =
pilot AND status IN (...)``; a superseded pilot's late report matches nothing and is refused (409).
"""
from __future__ import annotations

import logging
import posixpath
from collections.abc import Sequence
from typing import Any

from common.db.models import Record
from common.policies import memory_for_attempt
from common.settings import Settings
from common.states import FileRole, FileState
from common.storage import UnsafeStoragePath, remove_beneath
from services.job_executor.exchange_codec import ExchangeReport, InputFile, JobSpec, StagedFile

log = logging.getLogger("wms.job_executor")


class ReportInvalid(ValueError):
    """The report names files this attempt may not register (outside its storage directory, or an lfn outside
    its job's): refused, nothing changes."""


class ReportRefused(Exception):
    """The report names an attempt this pilot no longer holds: it must stop its payload."""

    def __init__(self, detail: str, current_state: str | None) -> None:
        super().__init__(detail)
        self.detail, self.current_state = detail, current_state


def log_dataset(output_dataset: str) -> str:
    return f"{output_dataset}.log"


def check_staged_files(prefix: str, dataset: str, job_id: int, report: ExchangeReport) -> None:
    """What a pilot reports is checked, not trusted: each output lies in this attempt's storage directory and is
    named under its job (``<dataset>/<job>/...``); the log lies in the attempt's ``logs/`` and is named under the
    log dataset. Anything else (another job's name, /proc, a FIFO elsewhere, '..') is a ReportInvalid."""
    expected = [(f, prefix, f"{dataset}/{job_id}/") for f in report.outputs]
    if report.log is not None:
        expected.append((report.log, prefix + "logs/", f"{log_dataset(dataset)}/"))
    for f, url_prefix, lfn_prefix in expected:
        path = f.url.removeprefix("file://")
        if (not f.url.startswith(url_prefix) or posixpath.normpath(path) != path
                or "/" in path.removeprefix(url_prefix.removeprefix("file://"))):
            raise ReportInvalid(f"{f.url!r} is not a file of this attempt's storage directory {url_prefix!r}")
        if not f.lfn.startswith(lfn_prefix) or "/" in f.lfn.removeprefix(lfn_prefix):
            raise ReportInvalid(f"lfn {f.lfn!r} is not a name under {lfn_prefix!r}")


def storage_prefix(settings: Settings, dataset: str, job_id: int, attempt: int) -> str:
    """Where one attempt stages its outputs: a directory per attempt, so a superseded pilot that writes late can
    never overwrite what the current attempt staged and registered."""
    return f"file://{settings.storage_root.rstrip('/')}/{dataset}/{job_id}/{attempt}/"


def staged_file_row(task_id: int, job_id: int, dataset: str, f: StagedFile, role: FileRole) -> dict[str, Any]:
    """The FILE_DAT row of a staged output (in the output dataset) or log (in its log dataset)."""
    return {"lfn": f.lfn, "dataset": dataset if role == FileRole.OUTPUT else log_dataset(dataset),
            "task_id": task_id, "job_id": job_id, "role": role, "url": f.url, "size": f.size,
            "adler32": f.adler32, "events": f.events, "status": FileState.STAGED.value}


def job_spec(settings: Settings, job_id: int, attempt: int, task: Record, inputs: Sequence[Record],
             last_error: str | None = None, gpus: int = 0) -> JobSpec:
    """What a pilot needs to run this attempt: ``task`` (id, payload, output dataset, memory) and the job's inputs;
    ``last_error``: how its previous attempt failed."""
    payload = task.payload
    return JobSpec(
        job_id=job_id, attempt=attempt, task_id=task.id, command=payload["command"], args=payload.get("args", []),
        env=payload.get("env", {}), container_image=payload.get("container_image"),
        network=payload.get("network", True),
        memory_mb=memory_for_attempt(task.memory_mb, last_error, settings.memory_retry_factor),
        cores=task.cores, gpus=gpus,
        inputs=[InputFile(lfn=f.lfn, url=f.url, size=f.size, adler32=f.adler32) for f in inputs],
        output_dataset=task.output_dataset, log_dataset=log_dataset(task.output_dataset),
        output_url_prefix=storage_prefix(settings, task.output_dataset, job_id, attempt),
        wall_time_s=int(payload.get("wall_time_s") or settings.job_wall_time_s))


def remove_attempts(prefixes: list[str], storage_root: str) -> None:
    """Delete the storage directories of attempts that ended without registering anything (lost: a report would
    have ended them)."""
    for prefix in prefixes:
        try:
            remove_beneath(prefix, storage_root)
        except (OSError, UnsafeStoragePath) as exc:
            log.warning("a lost attempt's files could not be removed", extra={"prefix": prefix, "error": str(exc)})

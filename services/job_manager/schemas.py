"""Response models of the job-manager's internal API."""
from __future__ import annotations

import datetime as dt

from pydantic import BaseModel, ConfigDict

from common.states import JobState


class JobView(BaseModel):
    model_config = ConfigDict(from_attributes=True)

    id: int
    task_id: int
    status: JobState
    attempt: int
    resource_type: str
    priority: int
    pilot_id: int | None
    n_files: int
    n_bytes: int
    n_events: int | None
    created_at: dt.datetime
    queued_at: dt.datetime | None
    started_at: dt.datetime | None
    heartbeat_at: dt.datetime | None
    finished_at: dt.datetime | None
    exit_code: int | None
    error_category: str | None
    error_message: str | None


class FileView(BaseModel):
    model_config = ConfigDict(from_attributes=True)

    id: int
    lfn: str
    dataset: str
    task_id: int
    job_id: int | None
    role: str
    url: str | None
    size: int | None
    adler32: str | None
    events: int | None
    status: str


class JobWithFiles(JobView):
    files: list[FileView]


class JobPage(BaseModel):
    items: list[JobView]
    next_after: int | None

"""Response models of the job-manager's internal API."""
from __future__ import annotations

from pydantic import BaseModel, ConfigDict

from common.job_listing import JobView


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


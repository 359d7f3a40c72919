"""Internal REST API of the job-manager: jobs by task and state, a job with its files, files by lfn."""
from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Depends, Path, Query

from common.auth import require_role
from common.job_listing import JobPage, JobView, job_page
from common.observability import Conn
from common.policies import MAX_ID
from common.states import JobState, RowNotFound
from services.job_manager import queries
from services.job_manager.schemas import FileView, JobWithFiles

READ_JOBS = require_role("read job metadata", {"service", "operator", "wfms"})

router = APIRouter(prefix="/internal/v1", dependencies=[Depends(READ_JOBS)], tags=["jobs"])





@router.get("/jobs", response_model=JobPage)
async def list_jobs(
    conn: Conn,
    task_id: Annotated[int | None, Query(ge=1, le=MAX_ID)] = None,
    status: JobState | None = None,
    after: Annotated[int | None, Query(ge=0, le=MAX_ID)] = None,
    limit: Annotated[int, Query(ge=1, le=1000)] = 100,
) -> JobPage:
    return await job_page(conn, task_id, status, after, limit)


@router.get("/jobs/{job_id}", response_model=JobWithFiles)
async def get_job(job_id: Annotated[int, Path(ge=1, le=MAX_ID)], conn: Conn) -> JobWithFiles:
    job = await queries.select_job(conn, job_id)
    if job is None:
        raise RowNotFound("job", job_id)
    files = await queries.files_of_job(conn, job_id)
    return JobWithFiles(**JobView.model_validate(job).model_dump(), files=[FileView.model_validate(f) for f in files])


@router.get("/files", response_model=list[FileView])
async def files_by_lfn(
    conn: Conn,
    lfn: Annotated[str, Query(min_length=1, max_length=1024)],
    dataset: Annotated[str | None, Query(max_length=512)] = None,
) -> list[FileView]:
    return [FileView.model_validate(f) for f in await queries.files_by_lfn(conn, lfn, dataset)]

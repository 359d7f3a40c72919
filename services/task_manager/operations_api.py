"""Routes for operators (and the web monitor): queue summary, jobs, pilots, explanations, throughput, dead
letters. Parse -> call operations / dead_letters -> shape; no SQL here."""
from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Depends, Path, Query, Request

from common.auth import require_role
from common.job_listing import JobPage, job_page
from common.observability import Conn
from common.policies import MAX_ID
from common.states import JobState
from services.task_manager import dead_letters, operations
from services.task_manager.api import After, Limit
from services.task_manager.schemas import (
    DeadLetter,
    Explanation,
    PilotView,
    PurgeRequest,
    PurgeResult,
    QueueLine,
    ReplayResult,
    ThroughputPoint,
    UseSummary,
)

router = APIRouter(prefix="/api/v1", tags=["operations"])
READ_OPERATIONS = require_role("read jobs and pilots", {"wfms", "operator"})
HANDLE_DEAD_LETTERS = require_role("read or replay dead letters", {"operator"})
PURGE = require_role("purge ended work", {"operator"})
Minutes = Annotated[int, Query(ge=1, le=24 * 60, description="how far back, in minutes")]


@router.get("/summary", response_model=list[QueueLine], dependencies=[Depends(READ_OPERATIONS)])
async def queue_summary(conn: Conn, include_ended: bool = Query(False, alias="all", description="include ended tasks"),
                        limit: Limit = 1000) -> list[QueueLine]:
    """Active tasks (or all), the newest ``limit``, in id order."""
    return await operations.queue_summary(conn, include_ended=include_ended, limit=limit)


@router.get("/use", response_model=UseSummary, dependencies=[Depends(READ_OPERATIONS)])
async def use_summary(conn: Conn, request: Request) -> UseSummary:
    """Utilization (busy slots of live pilots), saturation (ready jobs, the oldest one's wait) by resource type,
    and the errors (jobs failed in the last 10 minutes, dead letters)."""
    return await operations.use_summary(conn, request.app.state.broker)


@router.get("/jobs", response_model=JobPage, dependencies=[Depends(READ_OPERATIONS)])
async def list_jobs(
    conn: Conn,
    task_id: Annotated[int | None, Query(ge=1, le=MAX_ID)] = None,
    status: JobState | None = None,
    after: After = None,
    limit: Limit = 100,
) -> JobPage:
    return await job_page(conn, task_id, status, after, limit)


@router.get("/jobs/{job_id}/explain", response_model=Explanation, dependencies=[Depends(READ_OPERATIONS)])
async def explain_job(job_id: Annotated[int, Path(ge=1, le=MAX_ID)], conn: Conn, request: Request) -> Explanation:
    return await operations.explain_job(conn, job_id, request.app.state.settings.storage_root)


@router.get("/pilots", response_model=list[PilotView], dependencies=[Depends(READ_OPERATIONS)])
async def list_pilots(conn: Conn, live: bool = Query(False, description="live pilots only"),
                      limit: Limit = 100) -> list[PilotView]:
    return await operations.list_pilots(conn, live, limit)


@router.get("/throughput", response_model=list[ThroughputPoint], dependencies=[Depends(READ_OPERATIONS)])
async def throughput(conn: Conn, minutes: Minutes = 30,
                     task_id: Annotated[int | None, Query(ge=1, le=MAX_ID)] = None) -> list[ThroughputPoint]:
    return await operations.throughput(conn, minutes, task_id)


@router.post("/retention/purge", response_model=PurgeResult, dependencies=[Depends(PURGE)])
async def purge_ended_work(request: Request, body: PurgeRequest) -> PurgeResult:
    """Remove settled tasks (ended, outputs closed) that ended more than ``older_than_s`` ago with their jobs,
    attempts and file rows, and ended pilots and pilot submissions as old; the DSM is not touched. Batches of
    tasks in short transactions; ``dry_run`` only counts."""
    purged = await operations.purge_ended(request.app.state.engine, body.older_than_s, body.pilots, body.dry_run)
    return PurgeResult(**purged.counts(), dry_run=body.dry_run)


@router.get("/dead-letters", response_model=list[DeadLetter], dependencies=[Depends(HANDLE_DEAD_LETTERS)],
            responses={404: {"description": "no such queue"}})
async def list_dead_letters(request: Request, queue: str | None = None, limit: Limit = 100) -> list[DeadLetter]:
    return await dead_letters.browse(request.app.state.broker, queue, limit)


@router.post("/dead-letters/{queue}/{message_id}/replay", response_model=ReplayResult,
             dependencies=[Depends(HANDLE_DEAD_LETTERS)])
async def replay_dead_letter(request: Request, queue: str, message_id: str) -> ReplayResult:
    return await dead_letters.replay(request.app.state.broker, queue, message_id)

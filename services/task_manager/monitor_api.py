"""The web monitor: its page (/monitor, one HTML file, no build step) and the JSON it reads. Parse -> call
monitor_views -> shape; no SQL here."""
from __future__ import annotations

import datetime as dt
from pathlib import Path as FilePath
from typing import Annotated

from fastapi import APIRouter, Depends, Path, Query, Request
from fastapi.responses import HTMLResponse
from pydantic import BaseModel

from common.observability import Conn
from common.policies import MAX_ID
from common.states import RowNotFound, TaskState
from services.task_manager import monitor_views, operations
from services.task_manager.operations_api import READ_OPERATIONS, Minutes
from services.task_manager.quality_view import QualityRun, QualityRunSummary, QualityView
from services.task_manager.schemas import UseSummary

router = APIRouter(prefix="/api/v1/monitor", dependencies=[Depends(READ_OPERATIONS)], tags=["monitor"])
pages = APIRouter()
MONITOR_PAGE = FilePath(__file__).with_name("monitor.html")
PageSize = Annotated[int, Query(ge=1, le=500)]


class Overview(BaseModel):
    history: monitor_views.History
    pilots: list[monitor_views.PilotCount]
    use: UseSummary


@router.get("", response_model=Overview)
async def overview(conn: Conn, request: Request, minutes: Minutes = 60) -> Overview:
    """The monitor's front: jobs finished per minute and the ready backlog and pilot slots per resource type over
    the last ``minutes``, every pilot counted by type, channel and state, and the USE summary."""
    return Overview(history=await monitor_views.history(conn, minutes),
                    pilots=await monitor_views.pilot_counts(conn),
                    use=await operations.use_summary(conn, request.app.state.broker))


@router.get("/tasks", response_model=monitor_views.TaskList)
async def tasks(
    conn: Conn,
    state: Annotated[list[TaskState] | None, Query(description="only tasks in these states (repeat the parameter)")]
    = None,
    q: Annotated[str | None, Query(max_length=200, description="a task id, or text in its name or datasets")] = None,
    since: Annotated[dt.datetime | None, Query(description="created at or after (ISO 8601)")] = None,
    until: Annotated[dt.datetime | None, Query(description="created before (ISO 8601)")] = None,
    before: Annotated[int | None, Query(ge=1, le=MAX_ID, description="cursor: tasks older than this id")] = None,
    limit: PageSize = 50,
) -> monitor_views.TaskList:
    """Tasks, newest first, filtered and paged."""
    return await monitor_views.task_list(conn, state or [], q or None, since, until, before, limit)


@router.get("/tasks/{task_id}", response_model=monitor_views.TaskDrillDown,
            responses={404: {"description": "no such task"}})
async def task_page(task_id: Annotated[int, Path(ge=1, le=MAX_ID)], conn: Conn,
                    request: Request) -> monitor_views.TaskDrillDown:
    """One task's page: progress over time, jobs by state, failures by error with their jobs, the latest attempts
    with their pilots, the tail of its most telling log, its outputs."""
    return await monitor_views.task_page(conn, task_id, request.app.state.settings.storage_root)


@router.get("/pilots", response_model=monitor_views.PilotsView)
async def pilots(conn: Conn, after: Annotated[int | None, Query(ge=0, le=MAX_ID)] = None,
                 limit: PageSize = 50) -> monitor_views.PilotsView:
    """Every pilot counted by resource type, channel and state (alive, dead, exited), and a page of live ones."""
    return await monitor_views.pilots_view(conn, after, limit)


@router.get("/quality", response_model=list[QualityRunSummary])
async def quality_runs(conn: Conn, request: Request,
                       runs: Annotated[int, Query(ge=1, le=200, description="how many recent runs")] = 20
                       ) -> list[QualityRunSummary]:
    """The recent runs with data-quality outputs (of tasks of type "quality"), newest first."""
    view: QualityView = request.app.state.quality
    return await view.runs(conn, runs)


@router.get("/quality/{run}", response_model=QualityRun, responses={404: {"description": "no quality output"}})
async def quality_of_run(conn: Conn, request: Request,
                         run: Annotated[str, Path(min_length=1, max_length=128)]) -> QualityRun:
    """One run's data quality: the histograms of all its quality outputs summed (hot events per time slice, hit
    multiplicity, energy, the filter's keep fraction), growing while the run runs."""
    view: QualityView = request.app.state.quality
    found = await view.run(conn, run)
    if found is None:
        raise RowNotFound("quality run", run)
    return found


@pages.get("/monitor", response_class=HTMLResponse, include_in_schema=False)
async def monitor_page() -> HTMLResponse:
    return HTMLResponse(MONITOR_PAGE.read_text())

"""Routes of the task-manager: parse -> call the domain -> shape the response. No SQL here."""
from __future__ import annotations

import datetime as dt
from typing import Annotated, Any, Literal

from fastapi import APIRouter, Depends, Path, Query, Request, Response, status

from common.auth import Identity
from common.observability import Conn
from common.policies import MAX_ID
from common.states import TaskState
from services.task_manager import reporting
from services.task_manager.access_policy import CHANGE_TASKS, OPERATE_TASKS, READ_TASKS, SUBMIT_TASKS
from services.task_manager.lifecycle import TaskLifecycle
from services.task_manager.schemas import (
    FilePage,
    FileView,
    PriorityChange,
    TaskDescription,
    TaskDetail,
    TaskPage,
    TaskRegistered,
    TaskReport,
    TaskView,
    task_detail,
    task_view,
)
from services.task_manager.transformations import Transformation, Transformations

router = APIRouter(prefix="/api/v1", tags=["tasks"])



def _lifecycle(request: Request) -> TaskLifecycle:
    lifecycle: TaskLifecycle = request.app.state.lifecycle
    return lifecycle


Lifecycle = Annotated[TaskLifecycle, Depends(_lifecycle)]
TaskId = Annotated[int, Path(ge=1, le=MAX_ID, description="task id")]
Changer = Annotated[Identity, Depends(CHANGE_TASKS)]  # a wfms client on its own tasks, or an operator
Operator = Annotated[Identity, Depends(OPERATE_TASKS)]
After = Annotated[int | None, Query(ge=0, le=MAX_ID, description="cursor: the last id of the previous page")]
Limit = Annotated[int, Query(ge=1, le=1000)]
# A command the task's state does not allow (e.g. resume a task that is not paused, change an ended task).
TASK_CONFLICT: dict[int | str, dict[str, Any]] = {
    409: {"description": "not allowed in the task's current state (the body's current_state says which)"}}


@router.post(
    "/tasks",
    response_model=TaskRegistered,
    status_code=status.HTTP_201_CREATED,
    responses={200: {"model": TaskRegistered, "description": "already registered under this wfms_request_id"},
               409: {"description": "the request id names another description, or the output dataset is closed "
                                    "in the DSM or written by another active task (the body says which)"}},
)
async def register_task(description: TaskDescription, lifecycle: Lifecycle, response: Response, request: Request,
                        caller: Annotated[Identity, Depends(SUBMIT_TASKS)]) -> TaskRegistered:
    row, created = await lifecycle.register(description, caller)
    if not created:
        response.status_code = status.HTTP_200_OK
    response.headers["Location"] = f"/api/v1/tasks/{row.id}"
    found = await lifecycle.input_found(description.input_dataset)
    wait_until, notes = None, []
    if found is False:
        wait_until = row.created_at + dt.timedelta(seconds=request.app.state.settings.dataset_wait_s)
        notes.append(f"input dataset {description.input_dataset} does not exist (yet): the task waits for it until "
                     f"{wait_until.isoformat()}, then fails; resubmitting later with the same output dataset works")
    return TaskRegistered(**task_view(row).model_dump(), input_dataset_found=found, input_wait_until=wait_until,
                          notes=notes)


@router.get("/transformations", response_model=list[Transformation], dependencies=[Depends(READ_TASKS)])
async def list_transformations(request: Request) -> list[Transformation]:
    """The payloads this site runs: a task names one of them and fills in its parameters."""
    transformations: Transformations = request.app.state.transformations
    return [t for name in transformations.names() if (t := transformations.get(name)) is not None]


@router.get("/tasks", response_model=TaskPage, dependencies=[Depends(READ_TASKS)])
async def list_tasks(
    conn: Conn, status: TaskState | None = None, after: After = None, limit: Limit = 100
) -> TaskPage:
    rows = await reporting.list_tasks(conn, status, after, limit)
    return TaskPage(items=[task_view(r) for r in rows], next_after=rows[-1].id if len(rows) == limit else None)


@router.get("/tasks/{task_id}", response_model=TaskDetail, dependencies=[Depends(READ_TASKS)])
async def get_task(task_id: TaskId, conn: Conn) -> TaskDetail:
    row, progress = await reporting.task_with_progress(conn, task_id)
    return task_detail(row, progress)


@router.patch("/tasks/{task_id}", response_model=TaskView, responses=TASK_CONFLICT)
async def reprioritise_task(task_id: TaskId, change: PriorityChange, lifecycle: Lifecycle,
                            caller: Changer) -> TaskView:
    row, _ = await lifecycle.reprioritise(task_id, change.priority, caller)
    return task_view(row)


@router.post("/tasks/{task_id}/cancel", response_model=TaskView, responses=TASK_CONFLICT)
async def cancel_task(task_id: TaskId, lifecycle: Lifecycle, caller: Changer) -> TaskView:
    row, _ = await lifecycle.apply_command(task_id, "cancel", caller)
    return task_view(row)


@router.post("/tasks/{task_id}/pause", response_model=TaskView, responses=TASK_CONFLICT)
async def pause_task(task_id: TaskId, lifecycle: Lifecycle, caller: Operator) -> TaskView:
    row, _ = await lifecycle.apply_command(task_id, "pause", caller)
    return task_view(row)


@router.post("/tasks/{task_id}/resume", response_model=TaskView, responses=TASK_CONFLICT)
async def resume_task(task_id: TaskId, lifecycle: Lifecycle, caller: Operator) -> TaskView:
    row, _ = await lifecycle.apply_command(task_id, "resume", caller)
    return task_view(row)


@router.get("/tasks/{task_id}/report", response_model=TaskReport, dependencies=[Depends(READ_TASKS)])
async def get_task_report(task_id: TaskId, conn: Conn) -> TaskReport:
    return await reporting.task_report(conn, task_id)


@router.get("/tasks/{task_id}/files", response_model=FilePage, dependencies=[Depends(READ_TASKS)])
async def list_task_files(
    task_id: TaskId,
    conn: Conn,
    role: Literal["output", "log"] = "output",
    after: After = None,
    limit: Limit = 100,
) -> FilePage:
    rows = await reporting.produced_files(conn, task_id, role, after, limit)
    return FilePage(
        items=[FileView.model_validate(dict(r._mapping)) for r in rows],
        next_after=rows[-1].id if len(rows) == limit else None,
    )

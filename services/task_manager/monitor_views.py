"""What the web monitor shows, shaped from monitor_queries: the task list (filtered, paged), a task's page
(progress over time, jobs by state, failures by error with their jobs, attempts with pilots, the log's tail,
outputs), pilots summarized by the database with a page of live ones, and load over time."""
from __future__ import annotations

import asyncio
import datetime as dt
import math
from collections import defaultdict

from pydantic import BaseModel, Field

from common.db.session import Transaction
from common.states import PILOT_MACHINE, TaskState
from services.task_manager import monitor_queries, operations, queries, reporting
from services.task_manager.schemas import (
    AttemptView,
    CommandLine,
    FailureGroup,
    OutputTotals,
    TaskDetail,
    ThroughputPoint,
    UsageTotals,
    task_detail,
)

ATTEMPTS_SHOWN = 50
PROGRESS_BUCKETS = 120
OUTPUTS_SHOWN = 50


class TaskLine(BaseModel):
    task_id: int
    name: str
    status: str
    priority: int
    resource_type: str
    input_dataset: str
    output_dataset: str
    created_at: dt.datetime
    finished_at: dt.datetime | None
    files_total: int | None = Field(description="null while an open input dataset still grows")
    files_assigned: int
    files_done: int
    files_failed: int
    files_cancelled: int


class TaskList(BaseModel):
    items: list[TaskLine]
    total: int = Field(description="tasks matching the filters")
    next_before: int | None = Field(description="pass as ?before= for the next (older) page")


class FilesOverTime(BaseModel):
    at: dt.datetime = Field(description="the end of the bucket")
    done: int
    ended_otherwise: int = Field(description="input files of jobs that failed or were cancelled")


class TaskAttempt(AttemptView):
    job_id: int


class OutputLine(BaseModel):
    id: int
    lfn: str
    size: int | None
    events: int | None
    status: str
    job_id: int | None


class TaskDrillDown(BaseModel):
    task: TaskDetail
    files_over_time: list[FilesOverTime] = Field(description="input files ended per bucket, from the task's "
                                                 "creation to its end (or now), in up to PROGRESS_BUCKETS buckets")
    failures: list[FailureGroup]
    attempts: list[TaskAttempt]
    log_url: str | None
    log_job_id: int | None
    log_tail: str | None
    outputs: list[OutputLine]
    output_totals: OutputTotals
    usage: UsageTotals
    commands: list[CommandLine] = Field(description="the task's audit trail: who gave which command, when")


class PilotCount(BaseModel):
    resource_type: str
    channel: str
    alive: int
    dead: int
    exited: int


class LivePilot(BaseModel):
    id: int
    host: str
    resource_type: str
    channel: str
    runtime: str
    cores: int
    slots: int
    jobs_in_flight: int
    status: str
    registered_at: dt.datetime
    heartbeat_at: dt.datetime
    batch_job_id: str | None


class PilotsView(BaseModel):
    counts: list[PilotCount]
    live: list[LivePilot]
    next_after: int | None


class LoadPoint(BaseModel):
    sampled_at: dt.datetime
    resource_type: str
    ready: int
    slots: int
    busy: int


class History(BaseModel):
    finished_per_minute: list[ThroughputPoint]
    load: list[LoadPoint]


async def task_list(conn: Transaction, states: list[TaskState], search: str | None, since: dt.datetime | None,
                    until: dt.datetime | None, before: int | None, limit: int) -> TaskList:
    rows, total = await monitor_queries.task_page(conn, states, search, since, until, before, limit)
    counts = await monitor_queries.file_counts_of_tasks(conn, [r.id for r in rows])
    items = []
    for r in rows:
        c = counts.get(r.id)
        items.append(TaskLine(
            task_id=r.id, name=r.name, status=r.status, priority=r.priority, resource_type=r.resource_type,
            input_dataset=r.input_dataset, output_dataset=r.output_dataset, created_at=r.created_at,
            finished_at=r.finished_at, files_total=r.files_total, files_assigned=r.files_assigned,
            files_done=int(c.done) if c else 0, files_failed=int(c.failed) if c else 0,
            files_cancelled=int(c.cancelled) if c else 0))
    return TaskList(items=items, total=total, next_before=rows[-1].id if len(rows) == limit else None)


async def task_page(conn: Transaction, task_id: int, storage_root: str) -> TaskDrillDown:
    row, progress = await reporting.task_with_progress(conn, task_id)  # RowNotFound: 404
    end = row.finished_at or await queries.database_now(conn)
    bucket_s = max(1, math.ceil((end - row.created_at).total_seconds() / PROGRESS_BUCKETS))
    log = await monitor_queries.latest_task_log(conn, task_id)
    totals = await queries.output_totals(conn, task_id)
    return TaskDrillDown(
        task=task_detail(row, progress),
        files_over_time=[FilesOverTime(at=b.bucket + dt.timedelta(seconds=bucket_s), done=int(b.done),
                                       ended_otherwise=int(b.ended_otherwise))
                         for b in await monitor_queries.files_ended_over_time(conn, task_id, bucket_s)],
        failures=await reporting.failure_groups(conn, task_id),
        attempts=[TaskAttempt.model_validate(a, from_attributes=True)
                  for a in await monitor_queries.recent_attempts(conn, task_id, ATTEMPTS_SHOWN)],
        log_url=log.url if log else None,
        log_job_id=log.job_id if log else None,
        log_tail=await asyncio.to_thread(operations.read_log_tail, log.url, storage_root) if log else None,
        outputs=[OutputLine.model_validate(f, from_attributes=True)
                 for f in await monitor_queries.output_files(conn, task_id, OUTPUTS_SHOWN)],
        output_totals=reporting.output_totals(totals),
        usage=reporting.usage_totals(await queries.usage_totals(conn, task_id), row.cores),
        commands=[CommandLine.model_validate(c, from_attributes=True)
                  for c in await queries.commands_of(conn, task_id)],
    )


async def pilot_counts(conn: Transaction) -> list[PilotCount]:
    """Every pilot in the database, counted by resource type, channel and state group."""
    by_kind: dict[tuple[str, str], dict[str, int]] = defaultdict(lambda: {"alive": 0, "dead": 0, "exited": 0})
    for r in await monitor_queries.pilot_counts(conn):
        group = "alive" if r.status in PILOT_MACHINE.active else "dead" if r.status == "dead" else "exited"
        by_kind[(r.resource_type, r.channel)][group] += int(r.n)
    return [PilotCount(resource_type=rt, channel=ch, **n) for (rt, ch), n in sorted(by_kind.items())]


async def pilots_view(conn: Transaction, after: int | None, limit: int) -> PilotsView:
    live = await monitor_queries.live_pilot_page(conn, after, limit)
    return PilotsView(counts=await pilot_counts(conn),
                      live=[LivePilot.model_validate(p, from_attributes=True) for p in live],
                      next_after=live[-1].id if len(live) == limit else None)


async def history(conn: Transaction, minutes: int) -> History:
    return History(finished_per_minute=await operations.throughput(conn, minutes, None),
                   load=[LoadPoint.model_validate(p, from_attributes=True)
                         for p in await monitor_queries.load_over_time(conn, minutes)])

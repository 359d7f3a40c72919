"""The read side of a task: progress while it runs, the final report, its produced files."""
from __future__ import annotations

import datetime as dt

from common.db.models import Record
from common.db.session import Transaction
from common.states import TASK_MACHINE, RowNotFound
from services.task_manager import queries
from services.task_manager.progress import ProgressFigures, compute_progress
from services.task_manager.schemas import (
    DurationStats,
    FailureGroup,
    FileProgress,
    JobCounts,
    OutputTotals,
    Progress,
    TaskReport,
    UsageTotals,
)


async def _task(conn: Transaction, task_id: int) -> Record:
    row = await queries.select_task(conn, task_id)
    if row is None:
        raise RowNotFound("task", task_id)
    return row


async def _figures(conn: Transaction, task: Record) -> ProgressFigures:
    by_state = await queries.job_counts_by_state(conn, task.id)
    recent_done, span = (await queries.recent_throughput(conn, task.id, task.started_at, task.finished_at)
                         if by_state else (0, None))
    return compute_progress(task.files_total, task.files_assigned, by_state, recent_done, span)


def _file_progress(f: ProgressFigures) -> FileProgress:
    return FileProgress(
        total=f.files_total,
        assigned=f.files_assigned,
        done=f.files_done,
        failed=f.files_failed,
        cancelled=f.files_cancelled,
        in_progress=f.files_in_progress,
        pending=f.files_pending,
    )


async def task_with_progress(conn: Transaction, task_id: int) -> tuple[Record, Progress]:
    task = await _task(conn, task_id)
    f = await _figures(conn, task)
    progress = Progress(
        files=_file_progress(f), jobs=JobCounts.of(f.jobs), percent=f.percent, rate_files_per_s=f.rate_files_per_s,
        eta_s=f.eta_s
    )
    return task, progress


async def task_report(conn: Transaction, task_id: int) -> TaskReport:
    task = await _task(conn, task_id)
    f = await _figures(conn, task)
    stats = await queries.job_statistics(conn, task_id)
    outputs = await queries.output_totals(conn, task_id)
    end = task.finished_at or dt.datetime.now(dt.UTC)
    return TaskReport(
        task_id=task.id,
        status=task.status,
        final=task.status in TASK_MACHINE.terminal,
        error=task.error,
        input_dataset=task.input_dataset,
        output_dataset=task.output_dataset,
        files=_file_progress(f),
        jobs=JobCounts.of(f.jobs),
        attempts_total=int(stats.attempts_total),
        jobs_retried=int(stats.jobs_retried),
        wall_time_s=(end - task.created_at).total_seconds(),
        job_run_time=DurationStats(
            mean_s=_float(stats.mean_s), min_s=_float(stats.min_s), max_s=_float(stats.max_s)
        ),
        # 'rejected': outputs the DSM refused for good (the task's error says why)
        outputs=output_totals(outputs),
        failures=await failure_groups(conn, task_id),
        usage=usage_totals(await queries.usage_totals(conn, task_id), task.cores),
    )


def output_totals(row: Record) -> OutputTotals:
    return OutputTotals(files=int(row.files), bytes=int(row.bytes), events=int(row.events), rejected=int(row.rejected))


async def failure_groups(conn: Transaction, task_id: int) -> list[FailureGroup]:
    return [FailureGroup(error_category=g.error_category, error_message=g.error_message, attempts=int(g.attempts),
                         jobs=g.jobs, jobs_failed=g.jobs_failed, files=int(g.files), job_ids=list(g.job_ids or []))
            for g in await queries.failure_groups(conn, task_id)]


def usage_totals(row: Record, cores: int) -> UsageTotals:
    wall, cpu = float(row.wall_s), float(row.cpu_s)
    return UsageTotals(attempts=int(row.attempts), cpu_s=round(cpu, 3), wall_s=round(wall, 3),
                       cpu_efficiency=round(cpu / (wall * cores), 3) if wall > 0 else None,
                       max_rss_mb=_float(row.max_rss_mb), max_pss_mb=_float(row.max_pss_mb),
                       read_mb=round(float(row.read_mb), 3), written_mb=round(float(row.written_mb), 3))


def _float(value: object) -> float | None:
    return None if value is None else float(value)  # type: ignore[arg-type]


async def produced_files(conn: Transaction, task_id: int, role: str, after: int | None, limit: int) -> list[Record]:
    await _task(conn, task_id)
    return await queries.list_files(conn, task_id, role, after, limit)


async def list_tasks(conn: Transaction, status: str | None, after: int | None, limit: int) -> list[Record]:
    return await queries.list_tasks(conn, status, after, limit)

"""How the CLI shows things: rich tables and progress bars, or JSON for scripts."""
from __future__ import annotations

import json
from typing import Any

from rich.console import Console
from rich.markup import escape
from rich.progress_bar import ProgressBar
from rich.table import Table
from rich.text import Text

console = Console()
errors = Console(stderr=True)


def end_live() -> None:
    """Outside a terminal, rich's Live leaves its last frame without a line end."""
    if not console.is_terminal:
        console.line()


def as_json(value: Any) -> None:
    print(json.dumps(value, indent=2, default=str))


def progress_bar(done: int, total: int | None, width: int = 24) -> ProgressBar:
    return ProgressBar(total=max(total or 0, 1), completed=done if total else 0, width=width)


def table(title: str, columns: list[str], rows: list[list[Any]]) -> None:
    out = Table(title=title, title_justify="left")
    for column in columns:
        out.add_column(column)
    for row in rows:
        # cells are data, never markup
        out.add_row(*(cell if hasattr(cell, "__rich_console__") else Text("" if cell is None else str(cell))
                      for cell in row))
    console.print(out)


def files_text(done: int, total: int | None) -> str:
    return f"{done}/{total if total is not None else '?'}"


def summary_table(lines: list[dict]) -> None:
    table("Tasks", ["id", "name", "state", "prio", "progress", "files", "queued", "running", "done", "failed"],
          [[t["task_id"], t["name"], t["status"], t["priority"],
            progress_bar(t["files_done"], t["files_total"] or t["files_assigned"]),
            files_text(t["files_done"], t["files_total"]), t["queued"], t["running"], t["done"], t["failed"]]
           for t in lines])


def queue_lines(lines: list[dict]) -> None:
    """condor_q style: one line per task, then the totals."""
    console.print(f"{'ID':>6} {'NAME':<28} {'STATE':<10} {'PRIO':>4} {'QUEUED':>7} {'RUN':>5} {'DONE':>7} "
                  f"{'FAILED':>6}  FILES", highlight=False)
    for t in lines:
        console.print(f"{t['task_id']:>6} {t['name'][:28]:<28} {t['status']:<10} {t['priority']:>4} "
                      f"{t['queued']:>7} {t['running']:>5} {t['done']:>7} {t['failed']:>6}  "
                      f"{files_text(t['files_done'], t['files_total'])}", highlight=False)
    totals = {k: sum(t[k] for t in lines) for k in ("queued", "running", "done", "failed")}
    console.print(f"{len(lines)} tasks; {totals['queued']} jobs queued, {totals['running']} running, "
                  f"{totals['done']} done, {totals['failed']} failed", highlight=False)


def use_lines(use: dict) -> None:
    """The USE method in a line or two: utilization and saturation by resource type, then the errors."""
    for r in use["resources"]:
        share = f" ({100 * r['busy'] / r['slots']:.0f}%)" if r["slots"] else ""
        wait = f", the oldest for {r['oldest_ready_s']:.0f} s" if r["ready"] else ""
        console.print(f"{r['resource_type']}: {r['busy']}/{r['slots']} pilot slots busy{share}, {r['ready']} jobs "
                      f"ready{wait}", highlight=False)
    dead = "?" if use["dead_letters"] is None else use["dead_letters"]
    console.print(f"errors: {use['jobs_failed_last_10_min']} jobs failed in the last 10 min, {dead} dead letters",
                  highlight=False)


def task_detail(task: dict) -> None:
    progress = task.get("progress") or {}
    files = progress.get("files") or {}
    console.print(f"[bold]task {task['id']}[/bold] {escape(task['name'])}  \\[{task['status']}]  "
                  f"priority {task['priority']}")
    console.print(f"  {task['input_dataset']} -> {task['output_dataset']}  ({task['resource_type']}, "
                  f"split by {task['split']['by']} {task['split']['size']}, max attempts {task['max_attempts']})")
    if task.get("error"):
        console.print(f"  [red]error:[/red] {escape(task['error'])}")
    if files:
        console.print(progress_bar(files.get("done", 0), files.get("total") or files.get("assigned")))
        console.print(f"  files: {files_text(files.get('done', 0), files.get('total'))} done, "
                      f"{files.get('failed', 0)} failed, {files.get('in_progress', 0)} in progress, "
                      f"{files.get('pending', 0)} pending", highlight=False)
        console.print(f"  jobs: {job_counts(progress)}", highlight=False)
        if progress.get("rate_files_per_s"):
            eta = progress.get("eta_s")
            console.print(f"  rate {progress['rate_files_per_s']:.2f} files/s"
                          + (f", eta {eta:.0f} s" if eta is not None else ""), highlight=False)


def live_tasks(tasks: list[dict], with_jobs: bool = False) -> Table:
    """What `watch` and the demo redraw: one row per task (name, state, progress bar, files), and its jobs."""
    grid = Table.grid(padding=(0, 2))
    for task in tasks:
        progress = task.get("progress") or {}
        files = progress.get("files") or {}
        done, total = files.get("done", 0), files.get("total")
        grid.add_row(Text(f"task {task['id']} {task['name']}"), task["status"],
                     progress_bar(done, total if total is not None else files.get("assigned"), width=40),
                     f"{files_text(done, total)} files, {files.get('failed', 0)} failed")
        if with_jobs:
            grid.add_row("", "", f"jobs: {job_counts(progress)}", "")
    return grid


def job_counts(progress: dict) -> str:
    return ", ".join(f"{n} {s}" for s, n in sorted((progress.get("jobs") or {}).items()) if n) or "none yet"

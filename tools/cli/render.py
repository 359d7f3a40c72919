"""How the CLI shows things: rich tables and progress bars, or JSON for scripts."""
from __future__ import annotations

import json
from typing import Any

from rich.console import Console
from rich.markup import escape
from rich.measure import Measurement
from rich.progress_bar import ProgressBar
from rich.table import Table
from rich.text import Text

console = Console()
errors = Console(stderr=True)


WRAP_WIDTH = 24  # a folding column (names, messages) is given at least this much before columns are dropped


class Options:
    """``--wide``: every column, however wide the table gets (a terminal's width is not enforced)."""

    wide = False


options = Options()


def end_live() -> None:
    """Outside a terminal, rich's Live leaves its last frame without a line end."""
    if not console.is_terminal:
        console.line()


def as_json(value: Any) -> None:
    print(json.dumps(value, indent=2, default=str))


def progress_bar(done: int, total: int | None, width: int = 24) -> ProgressBar:
    return ProgressBar(total=max(total or 0, 1), completed=done if total else 0, width=width)


def table(title: str, columns: list[str], rows: list[list[Any]], drop_order: list[str] | None = None,
          wrap: tuple[str, ...] = ()) -> None:
    """A table that fits the terminal (80 columns when not a terminal): headers are never cut; when the table is
    too wide, the columns of ``drop_order`` go first, in that order (a note says which), then the ``wrap``
    columns fold their text. ``--wide`` shows every column at full width."""
    shown = list(columns)
    width = console.width

    def build(names: list[str], measuring: bool = False) -> Table:
        out = Table(title=title, title_justify="left")
        for name in names:
            folding = name in wrap and not options.wide
            out.add_column(name, no_wrap=not folding, overflow="fold" if folding else "ellipsis",
                           min_width=len(name), max_width=WRAP_WIDTH if folding and measuring else None)
        for row in rows:
            # cells are data, never markup
            out.add_row(*(_cell(row[columns.index(name)]) for name in names))
        return out

    out = build(shown)
    if options.wide:
        console.width = max(width, _natural_width(out))
        try:
            console.print(out, crop=False)
        finally:
            console.width = width
        return
    dropped = []
    for name in drop_order or []:
        if _natural_width(build(shown, measuring=True)) <= width:
            break
        shown.remove(name)
        dropped.append(name)
    out = build(shown)
    console.print(out)
    if dropped:
        console.print(f"({', '.join(dropped)} not shown: --wide shows every column)", highlight=False,
                      style="dim")


def _cell(value: Any) -> Any:
    return value if hasattr(value, "__rich_console__") else Text("" if value is None else str(value))


def _natural_width(out: Table) -> int:
    wide = Console(width=10_000)
    return Measurement.get(wide, wide.options, out).maximum


def files_text(done: int, total: int | None) -> str:
    return f"{done}/{total if total is not None else '?'}"


JOBS_HEADER = "jobs q/r/d/f"


def summary_table(lines: list[dict[str, Any]]) -> None:
    """`wms tasks`: what each task has done, as a bar and in files, and its jobs in one column; at 80 columns the
    priority goes first and the name folds, the bars stay."""
    table("Tasks", ["id", "name", "state", "prio", "progress", "files done", JOBS_HEADER],
          [[t["task_id"], t["name"], t["status"], t["priority"],
            progress_bar(t["files_done"], t["files_total"] or t["files_assigned"], width=10),
            files_text(t["files_done"], t["files_total"]),
            f"{t['queued']}/{t['running']}/{t['done']}/{t['failed']}"]
           for t in lines], drop_order=["prio"], wrap=("name",))
    console.print(f"{JOBS_HEADER}: jobs queued / running / done / failed", highlight=False, style="dim")


def queue_lines(lines: list[dict[str, Any]], active_only: bool = False) -> None:
    """condor_q style: one line per task, then the totals. The name takes what the terminal leaves."""
    files = [files_text(t["files_done"], t["files_total"]) for t in lines]
    files_width = max([5, *map(len, files)])
    fixed = 6 + 1 + 10 + 1 + 4 + 1 + 7 + 1 + 5 + 1 + 7 + 1 + 6 + 2 + files_width + 1
    name_width = 28
    if not options.wide:
        name_width = max(8, min(28, console.width - fixed - 1))
    console.print(f"{'ID':>6} {'NAME':<{name_width}} {'STATE':<10} {'PRIO':>4} {'QUEUED':>7} {'RUN':>5} "
                  f"{'DONE':>7} {'FAILED':>6}  FILES", highlight=False, crop=False)
    for t, done in zip(lines, files, strict=True):
        name = t["name"] if len(t["name"]) <= name_width else t["name"][:name_width - 1] + "…"
        console.print(f"{t['task_id']:>6} {name:<{name_width}} {t['status']:<10} {t['priority']:>4} "
                      f"{t['queued']:>7} {t['running']:>5} {t['done']:>7} {t['failed']:>6}  {done}",
                      highlight=False, crop=False, markup=False)
    totals = {k: sum(t[k] for t in lines) for k in ("queued", "running", "done", "failed")}
    console.print(f"{len(lines)} {'active ' if active_only else ''}tasks; {totals['queued']} jobs queued, "
                  f"{totals['running']} running, {totals['done']} done, {totals['failed']} failed", highlight=False)
    if active_only:
        console.print("(ended tasks are not shown: wms q --all)", highlight=False, style="dim")


def file_blocks(files: list[dict[str, Any]]) -> None:
    """A dataset's files, each as its lfn on a line of its own, its figures, then its url on a line of its own:
    neither lfn nor url is ever folded or cut (a terminal narrower than one wraps it, copy and paste still work)."""
    for f in files:
        console.print(f["lfn"], highlight=False, markup=False, soft_wrap=True)
        events = "" if f["events"] is None else f", {f['events']} events"
        console.print(f"  #{f['seq']}, {f['size']} bytes, adler32 {f['adler32']}{events}", highlight=False)
        console.print(f"  {f['url']}", highlight=False, markup=False, soft_wrap=True)


def use_lines(use: dict[str, Any]) -> None:
    """The USE method in a line or two: utilization and saturation by resource type, then the errors."""
    for r in use["resources"]:
        share = f" ({100 * r['busy'] / r['slots']:.0f}%)" if r["slots"] else ""
        wait = f", the oldest for {r['oldest_ready_s']:.0f} s" if r["ready"] else ""
        console.print(f"{r['resource_type']}: {r['busy']}/{r['slots']} pilot slots busy{share}, {r['ready']} jobs "
                      f"ready{wait}", highlight=False)
    dead = "?" if use["dead_letters"] is None else use["dead_letters"]
    console.print(f"errors: {use['jobs_failed_last_10_min']} jobs failed in the last 10 min, {dead} dead letters",
                  highlight=False)


def task_detail(task: dict[str, Any]) -> None:
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


def live_tasks(tasks: list[dict[str, Any]], with_jobs: bool = False) -> Table:
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


def job_counts(progress: dict[str, Any]) -> str:
    return ", ".join(f"{n} {s}" for s, n in sorted((progress.get("jobs") or {}).items()) if n) or "none yet"


def report(r: dict[str, Any]) -> None:
    """A task's report as tables: files, jobs by state, outputs, job run times, failures by error."""
    console.print(f"[bold]task {r['task_id']}[/bold] {r['status']} ({'final' if r['final'] else 'not final'}), "
                  f"wall time {r['wall_time_s']:.0f} s", highlight=False)
    console.print(f"  {escape(r['input_dataset'])} -> {escape(r['output_dataset'])}", highlight=False)
    if r.get("error"):
        console.print(f"  error: {r['error']}", markup=False, highlight=False)
    f = r["files"]
    table("Input files", ["total", "done", "failed", "cancelled", "in progress", "pending"],
          [[f.get("total") if f.get("total") is not None else "?", f.get("done", 0), f.get("failed", 0),
            f.get("cancelled", 0), f.get("in_progress", 0), f.get("pending", 0)]])
    table("Jobs by state", ["state", "jobs"], [[s, n] for s, n in sorted(r["jobs"].items()) if n])
    console.print(f"  {r['attempts_total']} attempts, {r['jobs_retried']} jobs retried", highlight=False)
    o, run = r["outputs"], r.get("job_run_time") or {}
    table("Outputs and run times", ["output files", "bytes", "events", "job mean s", "min s", "max s"],
          [[o.get("files", 0), human_bytes(o.get("bytes", 0)), o.get("events", 0), _seconds(run.get("mean_s")),
            _seconds(run.get("min_s")), _seconds(run.get("max_s"))]])
    u = r.get("usage") or {}
    if u.get("attempts"):
        table("What the payloads used", ["attempts", "CPU s", "wall s", "CPU eff.", "max RSS MB", "max PSS MB",
                                         "read MB", "written MB"],
              [[u["attempts"], f"{u['cpu_s']:.1f}", f"{u['wall_s']:.1f}", _ratio(u.get("cpu_efficiency")),
                _mb(u.get("max_rss_mb")), _mb(u.get("max_pss_mb")), _mb(u["read_mb"]), _mb(u["written_mb"])]],
              drop_order=["max PSS MB", "read MB", "written MB"])
    if r["failures"]:
        # failed and lost attempts, as the monitor's task page groups them; "failed": jobs that failed for good
        table("Failures by error", ["category", "attempts", "jobs", "failed", "files", "message"],
              [[g["error_category"] or "error", g["attempts"], g["jobs"], g["jobs_failed"], g["files"],
                g["error_message"] or ""] for g in r["failures"]], wrap=("message",))


def attempt_usage(attempts: list[dict[str, Any]]) -> None:
    """What each measured attempt's payload used (job monitoring data from its pilot)."""
    measured = [a for a in attempts if a.get("usage")]
    if measured:
        table("What each attempt used", ["#", "wall s", "CPU s", "max RSS MB", "max PSS MB", "read MB",
                                         "written MB", "procs"],
              [[a["attempt"], f"{a['usage']['wall_s']:.1f}", f"{a['usage']['cpu_s']:.1f}",
                _mb(a["usage"]["max_rss_mb"]), _mb(a["usage"]["max_pss_mb"]), _mb(a["usage"]["read_mb"]),
                _mb(a["usage"]["written_mb"]), a["usage"]["max_processes"]] for a in measured],
              drop_order=["max PSS MB", "read MB", "procs"])


def _mb(value: float | None) -> str:
    return "" if value is None else f"{value:.1f}"


def _ratio(value: float | None) -> str:
    return "" if value is None else f"{value:.2f}"


def _seconds(value: float | None) -> str:
    return "" if value is None else f"{value:.1f}"


def human_bytes(n: int | None) -> str:
    if n is None:
        return ""
    size = float(n)
    for unit in ("B", "kB", "MB", "GB", "TB"):
        if size < 1000 or unit == "TB":
            return f"{size:.0f} {unit}" if unit == "B" else f"{size:.1f} {unit}"
        size /= 1000
    return str(n)

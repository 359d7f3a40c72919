"""wms: submit and steer tasks, look at jobs and pilots, handle dead letters, run the demo.

Talks to the task-manager (WMS_CLI_URL, token WMS_CLI_TOKEN). Exit codes: 0 ok, 1 the API refused or the
watched task did not end done, 2 bad usage or input, 3 the WMS cannot be reached.
"""
from __future__ import annotations

import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Annotated, Any

import typer
import yaml
from rich.live import Live

from common.storage import UnsafeStoragePath, read_regular_tail
from tools.cli import dsm, render
from tools.cli.client import Api, CliError, CliSettings

ENDED = {"done", "finished", "failed", "cancelled"}
EXIT_USAGE = 2

# Plain help (rich_markup_mode=None): click's own layout, rewrapped to the terminal, without the type column that
# Typer's rich panels put after every flag (`--help <bool>`)
app = typer.Typer(help=__doc__, no_args_is_help=True, pretty_exceptions_enable=False, add_completion=False,
                  rich_markup_mode=None)
dlq = typer.Typer(help="Dead-lettered messages: list them, replay one.", no_args_is_help=True, rich_markup_mode=None)
app.add_typer(dlq, name="dlq")
credentials = typer.Typer(help="Pilot credentials (operators): issue one per node or batch queue, list, revoke.",
                          short_help="Pilot credentials (operators).", no_args_is_help=True, rich_markup_mode=None)
app.add_typer(credentials, name="credentials")
app.add_typer(dsm.dsm, name="dsm")
LOG_TAIL_BYTES = 4000


class State:
    api: Api
    json: bool = False


state = State()
TaskId = Annotated[int, typer.Argument(min=1, help="task id")]


@app.callback()
def options(
    json_output: Annotated[bool, typer.Option("--json", help="machine-readable JSON output")] = False,
    url: Annotated[str | None, typer.Option(help="task-manager URL (WMS_CLI_URL)")] = None,
    token: Annotated[str | None, typer.Option(help="bearer token (WMS_CLI_TOKEN)")] = None,
    wide: Annotated[bool, typer.Option("--wide", help="every table column, however wide (default: the tables fit "
                                                      "the terminal, dropping the least useful columns)")] = False,
) -> None:
    settings = CliSettings()
    state.api = Api(url or settings.url, token or settings.token, settings.timeout_s, settings.retry_s)
    state.json = dsm.output.json = json_output
    render.options.wide = wide


def _show(value: Any, human: Callable[[Any], None]) -> None:
    if state.json:
        render.as_json(value)
    else:
        human(value)


def load_description(path: Path) -> dict[str, Any]:
    """A task description from a YAML or JSON file (JSON is YAML too); exits 2 with the reason if unreadable."""
    try:
        text = path.read_text() if str(path) != "-" else typer.get_text_stream("stdin").read()
        body = yaml.safe_load(text)
    except OSError as exc:
        raise CliError(f"cannot read {path}: {exc.strerror}", EXIT_USAGE) from exc
    except yaml.YAMLError as exc:
        raise CliError(f"{path} is neither YAML nor JSON: {exc}", EXIT_USAGE) from exc
    if not isinstance(body, dict):
        raise CliError(f"{path} must hold one task description (a mapping), not {type(body).__name__}", EXIT_USAGE)
    return body


@app.command()
def submit(
    path: Annotated[Path, typer.Argument(help="task description, YAML or JSON ('-' for stdin)")],
    watch_it: Annotated[bool, typer.Option("--watch", help="then watch it until it ends")] = False,
) -> None:
    """Register a task."""
    task = state.api.post("/api/v1/tasks", load_description(path))
    _show(task, lambda t: render.console.print(f"task {t['id']} registered ({t['status']})"))
    if watch_it:
        watch(task["id"])


@app.command("tasks")
def list_tasks(all_tasks: Annotated[bool, typer.Option("--all", help="include ended tasks")] = False) -> None:
    """Tasks with progress bars."""
    _show(state.api.get("/api/v1/summary", all=all_tasks), render.summary_table)


@app.command("q", short_help="One line per task, like condor_q.")
def queue(all_tasks: Annotated[bool, typer.Option("--all", help="include ended tasks")] = False) -> None:
    """One line per task: queued / running / done / failed jobs (like condor_q)."""
    lines = state.api.get("/api/v1/summary", all=all_tasks)
    if state.json:
        render.as_json(lines)
        return
    render.queue_lines(lines, active_only=not all_tasks)
    render.use_lines(state.api.get("/api/v1/use"))


@app.command()
def show(task_id: TaskId) -> None:
    """One task, its progress and job counts."""
    _show(state.api.get(f"/api/v1/tasks/{task_id}"), render.task_detail)


@app.command(short_help="Follow a task until it ends (exit 0 if done).")
def watch(task_id: TaskId, interval: Annotated[float, typer.Option(min=0.1, help="seconds between refreshes")] = 2.0
          ) -> None:
    """Follow a task live until it ends; exit 0 if it ended done, 1 otherwise."""
    def fetch() -> dict[str, Any]:
        task: dict[str, Any] = state.api.get(f"/api/v1/tasks/{task_id}")
        return task

    task = fetch()
    if state.json:
        while task["status"] not in ENDED:
            time.sleep(interval)
            task = fetch()
        render.as_json(task)
    else:
        with Live(console=render.console, refresh_per_second=4, transient=False) as live:
            while True:
                live.update(render.live_tasks([task], with_jobs=True))
                if task["status"] in ENDED:
                    break
                time.sleep(interval)
                task = fetch()
        render.end_live()
    if task["status"] != "done":
        raise typer.Exit(1)


def _task_command(task_id: int, action: str) -> None:
    _show(state.api.post(f"/api/v1/tasks/{task_id}/{action}"),
          lambda t: render.console.print(f"task {t['id']}: {t['status']}"))


@app.command()
def cancel(task_id: TaskId) -> None:
    """Cancel a task: no new jobs, running payloads are killed."""
    _task_command(task_id, "cancel")


@app.command(short_help="Pause a task: nothing new generated or dispatched.")
def pause(task_id: TaskId) -> None:
    """Pause a task: no new job is generated or dispatched; running jobs go on."""
    _task_command(task_id, "pause")


@app.command()
def resume(task_id: TaskId) -> None:
    """Resume a paused task."""
    _task_command(task_id, "resume")


@app.command(short_help="Change a task's priority.")
def priority(task_id: TaskId, value: Annotated[int, typer.Argument(min=1, max=1000, help="1..1000")]) -> None:
    """Change a task's priority (its next chunks and its ready jobs follow)."""
    _show(state.api.patch(f"/api/v1/tasks/{task_id}", {"priority": value}),
          lambda t: render.console.print(f"task {t['id']}: priority {t['priority']}"))


@app.command(short_help="A task's report: files, jobs, outputs, failures.")
def report(task_id: TaskId) -> None:
    """The task's report (final once it has ended): files, jobs, outputs, run times, failures by error."""
    _show(state.api.get(f"/api/v1/tasks/{task_id}/report"), render.report)


@app.command()
def jobs(
    task: Annotated[int | None, typer.Option(min=1, help="jobs of this task")] = None,
    status: Annotated[str | None, typer.Option(help="only jobs in this state")] = None,
    limit: Annotated[int, typer.Option(min=1, max=1000)] = 50,
) -> None:
    """Jobs, oldest first."""
    page = state.api.get("/api/v1/jobs", task_id=task, status=status, limit=limit)
    _show(page["items"], lambda items: render.table(
        "Jobs", ["id", "task", "state", "attempt", "type", "prio", "pilot", "files", "error"],
        [[j["id"], j["task_id"], j["status"], j["attempt"], j["resource_type"], j["priority"], j["pilot_id"],
          j["n_files"], j["error_message"]] for j in items],
        drop_order=["prio", "type", "files", "attempt"], wrap=("error",)))


@app.command()
def pilots(live: Annotated[bool, typer.Option("--live", help="live pilots only")] = False,
           limit: Annotated[int, typer.Option(min=1, max=1000)] = 100) -> None:
    """Pilots, newest first."""
    _show(state.api.get("/api/v1/pilots", live=live, limit=limit), lambda items: render.table(
        "Pilots", ["id", "host", "type", "channel", "runtime", "cores", "state", "job", "heartbeat"],
        [[p["id"], p["host"], p["resource_type"], p["channel"], p.get("runtime", ""), p["cores"], p["status"],
          p["current_job_id"], _time(p["heartbeat_at"])] for p in items],
        drop_order=["cores", "channel", "type", "runtime"], wrap=("host",)))


def _time(stamp: str | None) -> str:
    """An ISO timestamp as date and time to the second (the table's width is precious)."""
    return "" if not stamp else stamp.replace("T", " ")[:19]


def local_log_tail(url: str) -> tuple[str | None, str]:
    """(the end of a log this machine can read, where it came from) or (None, why not): a file:// URL on local
    or shared storage is read directly, with the caller's own permissions."""
    if not url.startswith("file://"):
        return None, "not a file on shared storage: fetch it with the storage's own tools"
    path = url.removeprefix("file://")
    try:
        return read_regular_tail(path, LOG_TAIL_BYTES).decode(errors="replace"), f"read from {path}"
    except UnsafeStoragePath as exc:
        return None, f"not read: {exc}"
    except OSError as exc:
        return None, f"not readable from this machine: {exc.strerror}"


@app.command(short_help="Why a job is not running, or why it failed.")
def explain(job_id: Annotated[int, typer.Argument(min=1, help="job id")]) -> None:
    """Why a job is not running, or why it failed: reasons, attempts, pilots, the log's tail."""
    def human(e: dict[str, Any]) -> None:
        j = e["job"]
        render.console.print(f"[bold]job {j['id']}[/bold] of task {j['task_id']} ({e['task_status']}): "
                             f"{j['status']}, attempt {j['attempt']} of {e['max_attempts']}")
        for reason in e["reasons"]:
            render.console.print(f"  - {reason}", highlight=False)
        if e["attempts"]:
            render.table("Attempts", ["#", "pilot", "host", "outcome", "exit", "error"],
                         [[a["attempt"], a["pilot_id"], a["host"], a["outcome"], a["exit_code"],
                           f"{a['error_category'] or ''} {a['error_message'] or ''}".strip()]
                          for a in e["attempts"]], drop_order=["host", "exit"], wrap=("error",))
            render.attempt_usage(e["attempts"])
        if e.get("task_commands"):
            render.table("Commands on its task", ["when", "who", "command", "what it did"],
                         [[_time(c["at"]), c["actor"], c["command"], c["detail"] or ""] for c in e["task_commands"]],
                         drop_order=["what it did"], wrap=("who",))
        if not e["log_url"]:
            return
        tail, where = (e["log_tail"], "read by the task-manager") if e["log_tail"] else local_log_tail(e["log_url"])
        if tail is None:
            render.console.print(f"log: {e['log_url']} ({where})", markup=False, highlight=False)
        else:
            render.console.print(f"log {e['log_url']} (the last {LOG_TAIL_BYTES} bytes, {where}):", markup=False,
                                 highlight=False)
            render.console.print(tail, markup=False, highlight=False)

    _show(state.api.get(f"/api/v1/jobs/{job_id}/explain"), human)


@dlq.command("list")
def dlq_list(queue: Annotated[str | None, typer.Option(help="one queue, e.g. job-manager.job-chunks")] = None,
             limit: Annotated[int, typer.Option(min=1, max=1000)] = 100) -> None:
    """Dead-lettered messages (left where they are)."""
    _show(state.api.get("/api/v1/dead-letters", queue=queue, limit=limit), lambda items: render.table(
        "Dead letters", ["queue", "message id", "reason", "routing key", "when", "body"],
        [[d["queue"], d["message_id"], d["reason"], d["routing_key"], _time(d["dead_lettered_at"]), d["body"][:60]]
         for d in items], drop_order=["routing key", "when", "body"], wrap=("queue", "message id", "body")))


@dlq.command("replay", short_help="Put one dead letter back on its queue.")
def dlq_replay(queue: Annotated[str, typer.Argument(help="the queue it was dead-lettered from")],
               message_id: Annotated[str, typer.Argument(help="its message id (wms dlq list)")]) -> None:
    """Put one dead-lettered message back on its queue (after the cause is fixed)."""
    _show(state.api.post(f"/api/v1/dead-letters/{queue}/{message_id}/replay"),
          lambda r: render.console.print(f"{r['message_id']} replayed to {r['republished_to']}"))


def _credential_rows(items: list[dict[str, Any]]) -> None:
    render.table("Pilot credentials", ["id", "name", "type", "max cores", "max gpus", "hosts", "created", "revoked"],
                 [[c["id"], c["name"], c["resource_type"], c["max_cores"], c["max_gpus"], c["host_pattern"],
                   _time(c["created_at"]), _time(c["revoked_at"])] for c in items],
                 drop_order=["revoked", "created", "max gpus", "hosts"], wrap=("name", "hosts"))


@credentials.command("issue", short_help="Issue a pilot credential (its token is shown once).")
def credentials_issue(
    name: Annotated[str, typer.Argument(help="who holds it: a node, a rack, a batch queue")],
    resource_type: Annotated[str, typer.Option("--type", help="cpu or gpu: the pilots it may register")],
    max_cores: Annotated[int, typer.Option(min=1, help="the most cores one of its pilots may declare")],
    max_gpus: Annotated[int, typer.Option(min=0, help="the most GPUs (gpu credentials only)")] = 0,
    hosts: Annotated[str, typer.Option(help="shell glob the pilot's host must match (a label: pilots report "
                                            "their host name themselves)")] = "*",
    network: Annotated[str | None, typer.Option(help="CIDR its pilots must connect from (REST only)")] = None,
) -> None:
    """Issue a pilot credential; its token is printed once (give it to the pilots as WMS_PILOT_TOKEN_FILE)."""
    issued = state.api.post("/api/v1/pilot-credentials", {"name": name, "resource_type": resource_type,
                                                         "max_cores": max_cores, "max_gpus": max_gpus,
                                                         "host_pattern": hosts, "network": network})
    _show(issued, lambda c: render.console.print(
        f"credential {c['id']} ({c['name']}: {c['resource_type']}, <= {c['max_cores']} cores, <= {c['max_gpus']} "
        f"GPUs, hosts {c['host_pattern']})\ntoken (shown once): {c['token']}", markup=False, highlight=False))


@credentials.command("list")
def credentials_list(all_of_them: Annotated[bool, typer.Option("--all", help="include revoked ones")] = False
                     ) -> None:
    """Pilot credentials (never their tokens)."""
    _show(state.api.get("/api/v1/pilot-credentials", all=all_of_them), _credential_rows)


@credentials.command("revoke", short_help="Revoke a pilot credential.")
def credentials_revoke(credential_id: Annotated[int, typer.Argument(min=1, help="credential id")]) -> None:
    """Revoke a credential: its pilots are refused from now on (their jobs are retried elsewhere)."""
    _show(state.api.post(f"/api/v1/pilot-credentials/{credential_id}/revoke"),
          lambda c: render.console.print(f"credential {c['id']} ({c['name']}) revoked at {c['revoked_at']}",
                                         markup=False, highlight=False))


DURATION_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 7 * 86400}


def parse_age(text: str) -> float:
    """'30d', '12h', '90m', '3600s', '2w' or plain seconds."""
    number, unit = (text[:-1], text[-1]) if text and text[-1] in DURATION_UNITS else (text, "s")
    try:
        value = float(number)
    except ValueError:
        raise typer.BadParameter(f"{text!r}: a number with a unit s, m, h, d or w (e.g. 30d)") from None
    if value < 0:
        raise typer.BadParameter(f"{text!r}: an age cannot be negative")
    return value * DURATION_UNITS[unit]


@app.command(short_help="Remove ended work (operators).")
def purge(
    older_than: Annotated[str, typer.Option("--older-than", help="age of the ended work to remove: 30d, 12h, 90m")],
    dry_run: Annotated[bool, typer.Option("--dry-run", help="only count what would go")] = False,
    keep_pilots: Annotated[bool, typer.Option("--keep-pilots", help="leave ended pilots alone")] = False,
) -> None:
    """Remove ended work (operators): settled tasks with their jobs and file rows, ended pilots. The DSM keeps
    every dataset and file."""
    result = state.api.post("/api/v1/retention/purge", {"older_than_s": parse_age(older_than), "dry_run": dry_run,
                                                         "pilots": not keep_pilots})
    _show(result, lambda r: render.console.print(
        f"{'would remove' if r['dry_run'] else 'removed'} {r['tasks']} tasks ({r['jobs']} jobs, {r['files']} file "
        f"rows), {r['pilots']} pilots, {r['pilot_submissions']} pilot submissions ended before {older_than} ago; "
        "the DSM is untouched", highlight=False))


@app.command(short_help="Run a synthetic SPD run through the whole chain.")
def demo(
    slices: Annotated[int, typer.Option(min=1, max=100_000, help="raw time slices to generate")] = 60,
    data_dir: Annotated[Path | None, typer.Option(help="where the raw slices are written (shared storage)")] = None,
    run: Annotated[str | None, typer.Option(help="run name (default: demo-<time>)")] = None,
) -> None:
    """Generate a synthetic SPD run and process it: unscramble -> filter -> merge, and quality histograms of the
    filter's output, with live progress."""
    from tools.cli.demo import run_demo

    raise typer.Exit(run_demo(state.api, CliSettings(), slices, data_dir, run))


@app.command("model", short_help="The workload model, stage by stage.")
def model(
    params: Annotated[Path | None, typer.Argument(help="YAML of the parameters it changes (default: SPD nominal, "
                                                     "tools/model/spd.yaml)")] = None,
    plots: Annotated[Path | None, typer.Option(help="write jobs/s and cores vs event rate plots (PNG) here")] = None,
) -> None:
    """The workload model: per stage, files, jobs, bytes, events, cores, pilots and WMS requests per second."""
    from tools.model import report
    from tools.model.model import load

    try:
        parameters = load(params)
    except (OSError, ValueError) as exc:
        raise CliError(f"{params}: {exc}", EXIT_USAGE) from exc
    totals = report.summary(parameters)
    if state.json:
        render.as_json({"stages": report.as_records(parameters), "totals": totals})
    else:
        d = parameters.detector
        render.console.print(f"time slices of {report.si(d.time_slice_s, 's')}: {report.si(d.slice_bytes, 'B')}, "
                             f"{report.si(d.events_per_slice)} events; raw files of {report.si(d.raw_file_bytes, 'B')}"
                             f" ({d.slices_per_file:.3g} slices)")
        columns, rows = report.table(parameters)
        render.table(f"SPD online filter at {report.si(d.event_rate_hz, 'Hz')}, {report.si(d.raw_rate_bytes_s, 'B/s')}",
                     columns, rows)
        render.console.print(
            f"all stages: {report.si(totals['jobs_per_s'])} jobs/s, {report.si(totals['wms_requests_per_s'])} WMS "
            f"requests/s, {report.si(totals['cores'])} cores in {totals['pilots']} pilots of "
            f"{parameters.pilots.cores} cores; job-executor replicas at {totals['headroom']}x headroom: "
            f"{totals['job_executor_replicas']} (one serves {report.si(totals['job_executor_jobs_per_s'])} jobs/s)")
    if plots is not None:
        try:
            for path in report.plot(parameters, plots):
                if state.json:
                    print(f"wrote {path}", file=sys.stderr)  # stdout stays one JSON document
                else:
                    render.console.print(f"wrote {path}")
        except RuntimeError as exc:
            raise CliError(str(exc), EXIT_USAGE) from exc


def main() -> None:
    try:
        app()
    except CliError as exc:
        render.errors.print(f"wms: {exc}", markup=False, highlight=False)
        raise SystemExit(exc.exit_code) from None
    except OSError as exc:  # a local file or the terminal: a message, never a traceback
        where = f" ({exc.filename})" if exc.filename else ""
        render.errors.print(f"wms: {exc.strerror or exc}{where}", markup=False, highlight=False)
        raise SystemExit(1) from None


if __name__ == "__main__":
    main()

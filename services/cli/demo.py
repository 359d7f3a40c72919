"""The demo: a synthetic SPD run through the whole WMS (unscramble -> filter -> merge), with live progress.

Raw slices are written to shared storage (WMS_STORAGE_ROOT, the path the pilots see) and registered in the DSM;
the three tasks are submitted at once: filter and merge follow their growing input datasets.
"""
from __future__ import annotations

import time
from pathlib import Path

import httpx
from rich.live import Live
from rich.table import Table
from rich.text import Text

from common.settings import Settings
from examples.spd.generate import write_slices
from services.cli import render
from services.cli.client import EXIT_UNREACHABLE, Api, CliError, CliSettings

ENDED = {"done", "finished", "failed", "cancelled"}
DSM_BATCH = 5000


class DsmSession:
    """The few DSM calls the demo makes (the services use common.dsm; this CLI is synchronous)."""

    def __init__(self, cli: CliSettings) -> None:
        self.url = cli.dsm_url
        self._http = httpx.Client(base_url=cli.dsm_url.rstrip("/") + "/dsm/v1", timeout=cli.timeout_s,
                                  headers={"Authorization": f"Bearer {cli.token}"})

    def post(self, path: str, body: object = None) -> httpx.Response:
        try:
            answer = self._http.post(path, json=body)
        except httpx.TransportError as exc:
            raise CliError(f"cannot reach the DSM at {self.url}: {exc} (set WMS_CLI_DSM_URL)",
                           EXIT_UNREACHABLE) from exc
        if answer.status_code >= 400:
            raise CliError(f"DSM {path}: HTTP {answer.status_code}: {answer.text[:300]}")
        return answer

    def create_new_dataset(self, name: str) -> None:
        if self.post("/datasets", {"name": name}).status_code == 200:
            raise CliError(f"dataset {name} exists already: choose another --run")

    def register_and_close(self, name: str, entries: list[dict]) -> None:
        for i in range(0, len(entries), DSM_BATCH):
            self.post(f"/datasets/{name}/files", {"files": entries[i:i + DSM_BATCH]})
        self.post(f"/datasets/{name}/close")


def chain(run: str, slices: int) -> list[dict]:
    """The three task descriptions: each step reads the previous one's output dataset while it grows."""
    def step(name: str, command: str, inputs: str, outputs: str, files_per_job: int) -> dict:
        return {"name": f"{name} {run}", "type": name, "input_dataset": inputs, "output_dataset": outputs,
                "payload": {"command": command, "args": ["{inputs}"], "env": {}},
                "resource_type": "cpu", "cores": 1, "memory_mb": 500,
                "split": {"by": "files", "size": files_per_job}, "max_attempts": 3, "priority": 10,
                "wfms_request_id": f"{run}-{name}", "metadata": {"demo": run}}

    return [
        step("unscramble", "spd-unscramble", f"spd.raw.{run}", f"spd.events.{run}", 5),
        step("filter", "spd-filter", f"spd.events.{run}", f"spd.hot.{run}", 10),
        step("merge", "spd-merge", f"spd.hot.{run}", f"spd.merged.{run}", max(10, slices // 4)),
    ]


def run_demo(api: Api, cli: CliSettings, slices: int, data_dir: Path | None, run: str | None) -> int:
    run = run or time.strftime("demo-%Y%m%d-%H%M%S")
    data_dir = data_dir or Path(Settings().storage_root) / "demo-raw" / run
    dsm = DsmSession(cli)
    dsm.create_new_dataset(f"spd.raw.{run}")
    render.console.print(f"generating {slices} raw time slices of run {run} in {data_dir}", highlight=False)
    dsm.register_and_close(f"spd.raw.{run}", write_slices(data_dir, slices, seed=7))
    task_ids = [api.post("/api/v1/tasks", description)["id"] for description in chain(run, slices)]
    render.console.print(f"submitted tasks {', '.join(map(str, task_ids))} (unscramble -> filter -> merge); "
                         f"watch them in the monitor: {api.base_url}/monitor", highlight=False)

    with Live(console=render.console, refresh_per_second=4) as live:
        while True:
            tasks = [api.get(f"/api/v1/tasks/{task_id}") for task_id in task_ids]
            live.update(_progress_table(tasks))
            if all(t["status"] in ENDED for t in tasks):
                break
            time.sleep(1.0)
    render.end_live()

    reports = [api.get(f"/api/v1/tasks/{task_id}/report") for task_id in task_ids]
    for r in reports:
        render.console.print(f"task {r['task_id']}: {r['status']}, {r['files']['done']} input files done, "
                             f"{r['outputs']['files']} output files, {r['outputs']['events']} events -> "
                             f"{r['output_dataset']}", highlight=False)
    return 0 if all(r["status"] == "done" for r in reports) else 1


def _progress_table(tasks: list[dict]) -> Table:
    grid = Table.grid(padding=(0, 2))
    for task in tasks:
        files = (task.get("progress") or {}).get("files") or {}
        total = files.get("total") if files.get("total") is not None else files.get("assigned")
        grid.add_row(Text(task["name"]), task["status"], render.progress_bar(files.get("done", 0), total, width=40),
                     f"{render.files_text(files.get('done', 0), files.get('total'))} files")
    return grid

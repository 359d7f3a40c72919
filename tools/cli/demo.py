"""The demo: a synthetic SPD run through the whole WMS (unscramble -> filter -> merge, and data-quality
histograms of the filter's output), with live progress.

Raw slices are written to shared storage (WMS_STORAGE_ROOT, the path the pilots see) and registered in the DSM;
the four tasks are submitted at once: filter, merge and quality follow their growing input datasets.
"""
from __future__ import annotations

import asyncio
import shutil
import time
from pathlib import Path
from typing import Any

import aiohttp
from rich.live import Live

from common.dsm import DsmClient, DsmError, DsmFile
from common.settings import Settings
from examples.spd.generate import write_slices
from tools.cli import render
from tools.cli.client import EXIT_UNREACHABLE, Api, CliError, CliSettings, say_waiting

ENDED = {"done", "finished", "failed", "cancelled"}
DSM_BATCH = 5000


async def register_raw_run(cli: CliSettings, name: str, data_dir: Path, slices: int) -> None:
    """Write the raw slices and register them in a new, then closed, DSM dataset (the project's DSM client)."""
    dsm = DsmClient(cli.dsm_url, cli.dsm_token, cli.timeout_s, cli.retry_s, say_waiting)
    try:
        if await dsm.dataset(name) is not None:
            raise CliError(f"dataset {name} exists already: choose another --run")
        if data_dir.is_dir() and any(data_dir.iterdir()):
            raise CliError(f"{data_dir} holds files already: choose another --run or --data-dir")
        render.console.print(f"generating {slices} raw time slices in {data_dir}", highlight=False)
        try:  # the files first: a storage that cannot take them leaves no dataset (and none of them) behind
            entries = [DsmFile(**e) for e in write_slices(data_dir, slices, seed=7)]
        except OSError as exc:
            for written in data_dir.glob("*") if data_dir.is_dir() else ():  # the directory was empty or new
                shutil.rmtree(written) if written.is_dir() else written.unlink(missing_ok=True)
            raise CliError(f"cannot write the raw data in {data_dir}: {exc.strerror or exc}") from exc
        await dsm.create_dataset(name)
        for i in range(0, len(entries), DSM_BATCH):
            await dsm.register_files(name, entries[i:i + DSM_BATCH])
        await dsm.close_dataset(name)
    except DsmError as exc:
        raise CliError(str(exc)) from exc
    except aiohttp.ClientError as exc:
        raise CliError(f"cannot reach the DSM at {cli.dsm_url}: {exc} (set WMS_CLI_DSM_URL)", EXIT_UNREACHABLE) from exc
    finally:
        await dsm.close()


def chain(run: str, slices: int) -> list[dict[str, Any]]:
    """The four task descriptions: each step reads the previous one's output dataset while it grows; quality
    monitoring reads the filter's output too, in small chunks, so its histograms follow the run."""
    def step(name: str, transformation: str, inputs: str, outputs: str, files_per_job: int,
             **parameters: str) -> dict[str, Any]:
        return {"name": f"{name} {run}", "type": name, "input_dataset": inputs, "output_dataset": outputs,
                "transformation": {"name": transformation, "parameters": parameters},
                "split": {"by": "files", "size": files_per_job}, "max_attempts": 3, "priority": 10,
                "wfms_request_id": f"{run}-{name}", "metadata": {"demo": run, "run": run}}

    return [
        step("unscramble", "spd-unscramble", f"spd.raw.{run}", f"spd.events.{run}", 5),
        step("filter", "spd-filter", f"spd.events.{run}", f"spd.hot.{run}", 10),
        step("merge", "spd-merge", f"spd.hot.{run}", f"spd.merged.{run}", max(10, slices // 4)),
        step("quality", "spd-quality", f"spd.hot.{run}", f"spd.quality.{run}", max(4, slices // 8), run=run),
    ]


def run_demo(api: Api, cli: CliSettings, slices: int, data_dir: Path | None, run: str | None) -> int:
    run = run or time.strftime("demo-%Y%m%d-%H%M%S")
    data_dir = data_dir or Path(Settings().storage_root) / "demo-raw" / run
    asyncio.run(register_raw_run(cli, f"spd.raw.{run}", data_dir, slices))
    task_ids = [api.post("/api/v1/tasks", description)["id"] for description in chain(run, slices)]
    render.console.print(f"submitted tasks {', '.join(map(str, task_ids))} (unscramble -> filter -> merge, "
                         f"and quality); "
                         f"watch them in the monitor: {api.base_url}/monitor#token={api.token}", highlight=False,
                         soft_wrap=True)  # a URL folded over two lines cannot be clicked or copied

    with Live(console=render.console, refresh_per_second=4) as live:
        while True:
            tasks = [api.get(f"/api/v1/tasks/{task_id}") for task_id in task_ids]
            live.update(render.live_tasks(tasks))
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

"""The CLI on an 80-column terminal and its DSM commands, against a running WMS: every table fits (headers whole,
columns dropped by priority with a note, `--wide` for all of them); `wms report` is tables, not a Python dict;
`wms dsm` creates a dataset, registers a directory (size, adler32, events), closes it and lists it, and a task
then runs on it: no curl."""
from __future__ import annotations

import asyncio
import json
import os
import shlex
import shutil
import subprocess
import sys
import time
import uuid
import zlib
from pathlib import Path

import pytest

from tests.conftest import OPERATOR_TOKEN, SERVICE_TOKEN, wait_for
from tests.e2e.stack import wms_stack
from tests.e2e.test_operations import FAIL

pytestmark = pytest.mark.e2e
WMS = Path(sys.executable).parent / "wms"
LONG = "a task with a rather long name that no 80-column terminal can hold in one cell"


async def wms(url: str, dsm_url: str, *args: str, columns: int = 80):
    env = {**os.environ, "WMS_CLI_URL": url, "WMS_CLI_TOKEN": OPERATOR_TOKEN, "WMS_CLI_DSM_URL": dsm_url,
           "WMS_CLI_DSM_TOKEN": SERVICE_TOKEN, "COLUMNS": str(columns), "TERM": "dumb"}
    done = await asyncio.to_thread(subprocess.run, [WMS, *args], env=env, capture_output=True, text=True,
                                   timeout=120)
    return done


def flat(text: str) -> str:
    return " ".join(text.split())


def fits(output: str, width: int = 80) -> None:
    too_wide = [line for line in output.splitlines() if len(line) > width]
    assert not too_wide, "\n".join(too_wide)


async def test_tables_fit_80_columns_and_dsm_commands(settings, db, tmp_path) -> None:
    async with wms_stack(settings, db, tmp_path) as stack:
        url = str(stack.task_manager.base_url).rstrip("/")
        dsm_url = stack.dsm.base_url.removesuffix("/dsm/v1")

        # a dataset from a directory, the curl path never needed
        raw = tmp_path / "storage" / "incoming" / "run7"
        raw.mkdir(parents=True)
        for i in range(4):
            (raw / f"slice-{i}.jsonl").write_text("".join(f'{{"hit": {j}}}\n' for j in range(i + 1)))
        (raw / "outputs.json").write_text(json.dumps({"slice-0.jsonl": {"events": 42}}))
        assert (await wms(url, dsm_url, "dsm", "create", "spd.raw.run7")).returncode == 0
        registered = await wms(url, dsm_url, "dsm", "register", "spd.raw.run7", str(raw), "--prefix", "raw/run7/",
                               "--glob", "*.jsonl", "--count-lines")
        assert registered.returncode == 0, registered.stderr
        assert "4 files" in registered.stdout and "(4 new)" in registered.stdout
        again = await wms(url, dsm_url, "dsm", "register", "spd.raw.run7", str(raw), "--prefix", "raw/run7/",
                          "--glob", "*.jsonl", "--count-lines", "--close")
        assert "(0 new)" in again.stdout and "closed" in again.stdout, again.stdout
        page = await stack.dsm.list_files("spd.raw.run7", 0, 100)
        by_lfn = {f.lfn: f for f in page.items}
        first = raw / "slice-0.jsonl"
        assert by_lfn["raw/run7/slice-0.jsonl"].adler32 == f"{zlib.adler32(first.read_bytes()) & 0xFFFFFFFF:08x}"
        assert by_lfn["raw/run7/slice-0.jsonl"].events == 42  # the manifest's word wins
        assert by_lfn["raw/run7/slice-3.jsonl"].events == 4  # counted lines
        assert by_lfn["raw/run7/slice-3.jsonl"].url == f"file://{(raw / 'slice-3.jsonl').resolve()}"
        assert page.status == "closed" and by_lfn["raw/run7/slice-1.jsonl"].size == first.stat().st_size + 11
        listed = await wms(url, dsm_url, "dsm", "ls", "--prefix", "spd.raw.")
        assert "spd.raw.run7" in listed.stdout and "closed" in listed.stdout
        fits(listed.stdout)
        files = await wms(url, dsm_url, "dsm", "ls", "spd.raw.run7")
        for i in range(4):  # each lfn and url whole, on a line of its own
            assert f"raw/run7/slice-{i}.jsonl" in files.stdout.splitlines()
            assert f"  file://{(raw / f'slice-{i}.jsonl').resolve()}" in files.stdout.splitlines()
        refused = await wms(url, dsm_url, "dsm", "register", "spd.raw.run7", str(tmp_path / "nowhere"))
        assert refused.returncode == 2 and "is not a directory" in flat(refused.stderr)
        closed = await wms(url, dsm_url, "dsm", "register", "spd.raw.run7", str(raw), "--glob", "slice-0*")
        assert closed.returncode == 1 and "closed" in flat(closed.stderr)

        # a task on it, and a failing one
        good = await stack.submit(name=LONG, input_dataset="spd.raw.run7", output_dataset="spd.out.run7",
                                  payload={"command": sys.executable, "args": ["-c", "pass"], "env": {}},
                                  split={"by": "files", "size": 1})
        await stack.make_dataset("raw.fail80", 1)
        bad = await stack.submit(name="fails", input_dataset="raw.fail80", output_dataset="out.fail80", payload=FAIL,
                                 split={"by": "files", "size": 1}, max_attempts=1)
        stack.start_pilot("rest", WMS_PILOT_HOST="a-worker-node-with-a-long-name.cluster.example.org")
        await wait_for(lambda: stack.ended(good), timeout=90)
        await wait_for(lambda: stack.ended(bad), timeout=90)

        tasks = await wms(url, dsm_url, "tasks", "--all")
        fits(tasks.stdout)
        for header in ("id", "name", "state", "progress", "files done", "jobs q/r/d/f"):
            assert f"┃ {header} " in tasks.stdout, (header, tasks.stdout)
        assert "━" in tasks.stdout  # the progress bars stay at 80 columns
        assert "…" not in tasks.stdout.splitlines()[2]  # the header row is whole
        assert "prio not shown: --wide shows every column" in tasks.stdout
        wide = await wms(url, dsm_url, "--wide", "tasks", "--all")
        assert "prio" in wide.stdout and LONG in wide.stdout
        assert "not shown" not in wide.stdout

        queue = await wms(url, dsm_url, "q", "--all")
        fits(queue.stdout)
        assert "4/4" in queue.stdout and "2 tasks; 0 jobs queued" in queue.stdout

        jobs = await wms(url, dsm_url, "jobs", "--task", str(bad))
        fits(jobs.stdout)
        assert "failed" in jobs.stdout and "exit code 3" in jobs.stdout
        pilots = await wms(url, dsm_url, "pilots")
        fits(pilots.stdout)
        assert "a-worker-node" in pilots.stdout

        report = await wms(url, dsm_url, "report", str(good))
        fits(report.stdout)
        assert "{" not in report.stdout and "Outputs and run times" in report.stdout
        assert "Jobs by state" in report.stdout
        failed_report = await wms(url, dsm_url, "report", str(bad))
        fits(failed_report.stdout)
        assert "Failures by error" in failed_report.stdout and "exit code 3" in failed_report.stdout

        job_id = json.loads((await wms(url, dsm_url, "--json", "jobs", "--task", str(bad))).stdout)[0]["id"]
        explained = await wms(url, dsm_url, "explain", str(job_id))
        fits(explained.stdout)
        assert "failed after 1 of 1 attempts" in explained.stdout and "boom-marker" in explained.stdout
        assert "not readable" not in explained.stdout

        issued = await wms(url, dsm_url, "credentials", "issue", "rack-42.online-farm.second-row.cpu-only-nodes",
                           "--type", "cpu", "--max-cores", "64", "--hosts", "spd-farm-rack42-*.jinr.example")
        assert issued.returncode == 0, issued.stderr
        for listing in (("credentials", "list"), ("dlq", "list")):
            shown = await wms(url, dsm_url, *listing)
            assert shown.returncode == 0, shown.stderr
            fits(shown.stdout)
        assert "rack-42" in (await wms(url, dsm_url, "credentials", "list")).stdout

        # retention: the operator's command, the DSM untouched
        bad_age = await wms(url, dsm_url, "purge", "--older-than", "ten days")
        assert bad_age.returncode == 2 and "a number with a unit" in flat(bad_age.stderr)
        counted = await wms(url, dsm_url, "purge", "--older-than", "0s", "--dry-run")
        assert counted.returncode == 0 and "would remove 2 tasks" in flat(counted.stdout), counted.stdout
        assert str(good) in (await wms(url, dsm_url, "q", "--all")).stdout
        purged = await wms(url, dsm_url, "purge", "--older-than", "0s")
        assert purged.returncode == 0 and "removed 2 tasks (5 jobs" in flat(purged.stdout), purged.stdout
        assert "0 tasks;" in (await wms(url, dsm_url, "q", "--all")).stdout
        assert "0 active tasks;" in (hint := (await wms(url, dsm_url, "q")).stdout) and "wms q --all" in hint
        assert "spd.raw.run7" in (await wms(url, dsm_url, "dsm", "ls")).stdout
        assert "spd.out.run7" in (await wms(url, dsm_url, "dsm", "ls", "--prefix", "spd.out")).stdout


def in_tmux(command: list[str], env: dict[str, str], width: int) -> str:
    """What ``command`` shows on a real terminal of ``width`` columns (a detached tmux session): the screen with the
    terminal's own line wraps joined again (capture-pane -J), so an unbroken lfn or url reads whole."""
    session = f"wms-cli-{uuid.uuid4().hex[:8]}"
    assignments = " ".join(f"{k}={shlex.quote(v)}" for k, v in env.items())
    line = f"env -u COLUMNS {assignments} {shlex.join(command)}; echo __ended_$?__; sleep 600"
    # a tmux server of its own (-L): tests in parallel workers never share (or kill) one another's server
    subprocess.run(["tmux", "-L", session, "new-session", "-d", "-s", session, "-x", str(width), "-y", "300", line],
                   check=True, timeout=30)
    try:
        for _ in range(600):
            screen = subprocess.run(["tmux", "-L", session, "capture-pane", "-p", "-J", "-t", session, "-S", "-"],
                                    capture_output=True, text=True, timeout=30).stdout
            if "__ended_" in screen:
                assert "__ended_0__" in screen, screen
                return screen
            time.sleep(0.1)
        raise AssertionError(f"{command} did not end in tmux")
    finally:
        subprocess.run(["tmux", "-L", session, "kill-server"], capture_output=True, timeout=30)


@pytest.mark.parametrize("width", [80, 120])
async def test_the_cli_on_a_real_terminal(settings, db, tmp_path, width) -> None:
    """Issue 22, finding 8, on tmux at 80 and 120 columns: `wms tasks` keeps its progress bars and says which
    columns are jobs and which files; `wms dsm ls NAME` never breaks an lfn or drops a url; `wms q` points at
    --all when it hides ended tasks; `wms --help` reads cleanly (no `<bool>` after flags, no cut summaries)."""
    assert shutil.which("tmux"), "tmux is needed for this test (scripts/setup installs it)"
    async with wms_stack(settings, db, tmp_path) as stack:
        url = str(stack.task_manager.base_url).rstrip("/")
        dsm_url = stack.dsm.base_url.removesuffix("/dsm/v1")
        env = {"WMS_CLI_URL": url, "WMS_CLI_TOKEN": OPERATOR_TOKEN, "WMS_CLI_DSM_URL": dsm_url,
               "WMS_CLI_DSM_TOKEN": SERVICE_TOKEN, "TERM": "xterm-256color", "PATH": os.environ["PATH"]}
        long_name = "raw.a-dataset-name-of-some-length.run-000042"
        await stack.make_dataset(long_name, 3)
        task = await stack.submit(name=LONG, input_dataset=long_name, output_dataset="out.tmux",
                                  payload={"command": sys.executable, "args": ["-c", "pass"], "env": {}},
                                  split={"by": "files", "size": 1})
        stack.start_pilot("rest")
        await wait_for(lambda: stack.ended(task), timeout=90)

        helped = await asyncio.to_thread(in_tmux, [str(WMS), "--help"], env, width)
        commands = helped[helped.index("Commands:"):].splitlines()
        assert "<bool>" not in helped and "``" not in helped, helped
        assert not [line for line in commands if line.rstrip().endswith("...")], helped  # no summary cut short
        for command in ("submit", "tasks", "q", "report", "explain", "demo", "dsm"):
            assert f"  {command} " in helped, helped

        tasks = await asyncio.to_thread(in_tmux, [str(WMS), "tasks", "--all"], env, width)
        for header in ("progress", "files done", "jobs q/r/d/f"):
            assert header in tasks, tasks
        assert "━" in tasks and "3/3" in tasks and "jobs queued / running / done / failed" in tasks, tasks

        queue = await asyncio.to_thread(in_tmux, [str(WMS), "q"], env, width)
        assert "0 active tasks" in queue and "wms q --all" in queue, queue

        listed = await asyncio.to_thread(in_tmux, [str(WMS), "dsm", "ls", long_name], env, width)
        page = await stack.dsm.list_files(long_name, 0, 100)
        lines = [line.strip() for line in listed.splitlines()]
        for f in page.items:
            assert f.lfn in lines and f.url in lines, listed  # each whole, on a line of its own

"""The web monitor in headless Chromium on real data: a filtered, paged task list; a task's page (progress over
time, jobs by state, failures by error with their jobs, attempts with pilots, the log's tail, outputs) by link and
by URL; pilots counted by the database however many rows there are, live ones paged; load plots; a cancelled
task drawn with its real progress. Screenshots go to WMS_SCREENSHOT_DIR when it is set (docs/monitor/ holds the
ones looked at)."""
from __future__ import annotations

import asyncio
import datetime as dt
import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import sqlalchemy as sa

from common.db.models import files, jobs, pilots
from tests.conftest import OPERATOR_TOKEN, wait_for
from tests.e2e.stack import wms_stack
from tests.e2e.test_dispatch import copy_payload
from tests.e2e.test_operations import FAIL, chromium, dump_dom
from tests.factories import insert_task

pytestmark = pytest.mark.e2e
SLOW = {"command": sys.executable, "args": ["-c", "import time; time.sleep(0.4)"], "env": {}}
ENDED_PILOTS = 400  # more than any page: the counts must come from the database, not from the rows fetched


async def screenshot(url: str, name: str, tmp: Path) -> Path:
    directory = Path(os.environ.get("WMS_SCREENSHOT_DIR") or tmp)
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / f"{name}.png"
    process = await asyncio.create_subprocess_exec(
        chromium(), "--headless", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", "--hide-scrollbars",
        "--virtual-time-budget=6000", "--window-size=1280,1400", f"--screenshot={path}", url,
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    await asyncio.wait_for(process.wait(), timeout=120)
    assert path.stat().st_size > 10_000, path  # a rendered page, not a blank one
    return path


def rows(dom: str, attribute: str) -> dict[str, str]:
    return dict(re.findall(rf'<tr {attribute}="([^"]+)"[^>]*>(.*?)</tr>', dom, re.S))


async def test_monitor_drills_down_on_real_data(settings, db, tmp_path) -> None:
    # the live pilot must stay alive while headless Chromium renders a dozen pages: on a loaded CI machine the
    # stack's 3 s pilot timeout declared it dead once (it checks nothing of dead pilots)
    async with wms_stack(settings, db, tmp_path, metrics_interval_s=0.5, pilot_timeout_s=60.0) as stack:
        async with db.begin() as conn:  # the junk a fuzzing run leaves: many tasks, many ended pilots
            for i in range(70):
                await insert_task(conn, name=f"junk {i}", status="failed", output_dataset=f"junk.{i}")
            await conn.execute(sa.insert(pilots), [
                {"host": f"old{i}", "resource_type": "cpu", "cores": 1, "memory_mb": 100, "version": "t",
                 "status": "exited" if i % 4 else "dead", "ended_at": dt.datetime.now(dt.UTC)}
                for i in range(ENDED_PILOTS)])
        await stack.make_dataset("raw.ok", 6)
        await stack.make_dataset("raw.bad", 2)
        await stack.make_dataset("raw.slow", 12)
        ok = await stack.submit(name="copy six", input_dataset="raw.ok", output_dataset="out.ok",
                                payload=copy_payload(), split={"by": "files", "size": 1})
        bad = await stack.submit(name="always fails", input_dataset="raw.bad", output_dataset="out.bad",
                                 payload=FAIL, split={"by": "files", "size": 1}, max_attempts=2)
        slow = await stack.submit(name="slow then cancelled", input_dataset="raw.slow", output_dataset="out.slow",
                                  payload=SLOW, split={"by": "files", "size": 1})
        stack.start_pilot("rest")
        await wait_for(lambda: stack.ended(ok), timeout=120)
        await wait_for(lambda: stack.ended(bad), timeout=120)

        async def some_slow_done() -> bool:
            counts = (await stack.task_manager.get(f"/api/v1/tasks/{slow}", headers={
                "Authorization": f"Bearer {OPERATOR_TOKEN}"})).json()["progress"]["files"]
            return counts["done"] >= 3
        await wait_for(some_slow_done, timeout=60)
        assert (await stack.task_manager.post(f"/api/v1/tasks/{slow}/cancel", headers={
            "Authorization": f"Bearer {OPERATOR_TOKEN}"})).status_code == 200
        await wait_for(lambda: stack.ended(slow), timeout=60)
        await asyncio.sleep(1.5)  # a load sample or two after the work

        base = str(stack.task_manager.base_url).rstrip("/") + "/monitor"
        token = f"token={OPERATOR_TOKEN}"

        # the front: load plots on top, then the newest 50 of 73 tasks and a link to older ones
        dom = await dump_dom(f"{base}#/tasks?{token}")
        async with db.connect() as conn:
            finished = (await conn.execute(sa.select(sa.func.count()).select_from(jobs)
                                           .where(jobs.c.status == "finished"))).scalar()
        assert finished > 6  # the six copies and what the slow task did before its cancellation
        assert 'id="throughput"' in dom and f'data-total-jobs="{finished}"' in dom
        assert 'data-series="cpu ready"' in dom and 'data-series="cpu busy slots"' in dom
        listed = rows(dom, "data-task-id")
        assert len(listed) == 50 and str(slow) in listed and "73 tasks match; showing 50" in dom
        assert 'id="older-page"' in dom and f'href="#/task/{ok}"' in dom
        assert "1 pilots alive." in dom
        assert dom.index('id="throughput"') < dom.index('id="tasks"')  # plots are not pushed below the list
        older = re.search(r'id="older-page" href="#/tasks\?before=(\d+)"|href="#/tasks\?before=(\d+)" id="older-page"',
                          dom)
        assert older is not None
        before = older.group(1) or older.group(2)
        page2 = rows(await dump_dom(f"{base}#/tasks?before={before}&{token}"), "data-task-id")
        assert len(page2) == 23 and not set(page2) & set(listed)

        # filters: state, name search, time range
        cancelled = rows(await dump_dom(f"{base}#/tasks?state=cancelled&{token}"), "data-task-id")
        assert list(cancelled) == [str(slow)]
        bar = re.search(r'class="bar" data-done="(\d+)" data-failed="(\d+)" data-cancelled="(\d+)" data-total="(\d+)"',
                        cancelled[str(slow)])
        assert bar is not None
        done, failed, cancelled_files, total = map(int, bar.groups())
        assert total == 12 and 3 <= done < 12 and failed == 0 and cancelled_files > 0  # its real progress
        assert f"width:{100 * done / 12:.1f}%" in cancelled[str(slow)]
        found = rows(await dump_dom(f"{base}#/tasks?q=copy&{token}"), "data-task-id")
        assert list(found) == [str(ok)]
        both = rows(await dump_dom(f"{base}#/tasks?state=done&state=cancelled&{token}"), "data-task-id")
        assert set(both) == {str(ok), str(slow)}
        none = await dump_dom(f"{base}#/tasks?since=2999-01-01T00:00&{token}")
        assert "0 tasks match" in none and not rows(none, "data-task-id")

        # a task's page by URL: failures by error with their jobs, attempts with the pilot, the log's tail
        page = await dump_dom(f"{base}#/task/{bad}?{token}")
        assert f'id="task-page" data-task-id="{bad}"' in page
        failures = rows(page, "data-category")
        assert list(failures) == ["payload"] and "exit code 3" in failures["payload"]
        assert re.search(r'<td class="num">4</td><td class="num">2</td><td class="num">2</td>', failures["payload"])
        attempts = re.findall(r'<tr data-job-id="\d+">(.*?)</tr>', page, re.S)
        assert len(attempts) == 4 and all("wn0" in a and "failed" in a for a in attempts)
        assert re.search(r'<pre id="log-tail">[^<]*boom-marker: detector map missing', page)
        by_state = rows(page, "data-state")
        assert '<td class="num">2</td>' in by_state["failed"]
        good = await dump_dom(f"{base}#/task/{ok}?{token}")
        assert "Outputs: 6 files" in good and good.count("<tr>", good.index('id="task-outputs"')) >= 6
        # what the payloads used: the task's totals and each attempt's CPU and memory, measured by the pilot
        usage_row = re.search(r'<table id="task-usage">.*?<tbody><tr>(.*?)</tr>', good, re.S)
        assert usage_row is not None and re.match(r'<td class="num">[1-9]\d*</td>', usage_row.group(1)), good
        assert re.search(r'class="num usage-cpu">\d+\.\d</td><td class="num usage-rss">\d+\.\d</td>', good)
        assert 'data-series="files done"' in good and "no failed attempt" in good
        # the cumulative line climbs from 0 at the task's creation to all six files at its end (the plot's top)
        assert re.search(r'points="42\.0,138\.0 [^"]*,14\.0" data-series="files done"', good), good
        missing = await dump_dom(f"{base}#/task/999999?{token}")
        assert "refresh failed: 404 task 999999 not found" in missing

        # pilots: counted by the database, the live one listed first
        pilot_page = await dump_dom(f"{base}#/pilots?{token}")
        kinds = rows(pilot_page, "data-kind")
        assert re.search(r'class="num alive">1</td><td class="num">100</td><td class="num">300</td>', kinds["cpu/rest"])
        assert len(rows(pilot_page, "data-pilot-id")) == 1 and "wn0" in pilot_page
        assert '<td class="pilot-runtime">sandbox</td>' in pilot_page

        for view, name in ((f"#/tasks?{token}", "monitor-tasks"), (f"#/task/{bad}?{token}", "monitor-task"),
                           (f"#/tasks?state=cancelled&{token}", "monitor-cancelled"),
                           (f"#/pilots?{token}", "monitor-pilots")):
            await screenshot(base + view, name, tmp_path)  # each a rendered page (it checks), to look at

        refused = await dump_dom(f"{base}#token=wrong")
        assert "refresh failed: unknown bearer token" in refused and 'data-task-id="' not in refused


async def test_quality_histograms_follow_a_growing_run(settings, db, tmp_path) -> None:
    """The SPD chain's fourth stage: quality histograms of the filter's output while it grows, registered as
    outputs, and the monitor's data-quality view with the latest ones of the run."""
    from common.dsm import DsmFile
    from examples.spd.generate import write_slices
    from tests.e2e.test_spd_chain import step

    async with wms_stack(settings, db, tmp_path, metrics_interval_s=0.5) as stack:
        entries = write_slices(tmp_path / "raw", 48, seed=3)
        await stack.dsm.create_dataset("spd.raw.q1")
        await stack.dsm.register_files("spd.raw.q1", [DsmFile(**e) for e in entries])
        await stack.dsm.close_dataset("spd.raw.q1")
        unscramble = await stack.submit(name="unscramble q1", type="unscramble", input_dataset="spd.raw.q1",
                                        output_dataset="spd.events.q1", payload=step("unscramble.py"),
                                        split={"by": "files", "size": 2})
        hot = await stack.submit(name="filter q1", type="filter", input_dataset="spd.events.q1",
                                 output_dataset="spd.hot.q1", payload=step("filter.py"),
                                 split={"by": "files", "size": 2})
        quality_step = step("quality.py")
        quality_step["args"] = [quality_step["args"][0], "--run", "q1", "{inputs}"]
        quality = await stack.submit(name="quality q1", type="quality", input_dataset="spd.hot.q1",
                                     output_dataset="spd.quality.q1", payload=quality_step,
                                     split={"by": "files", "size": 4}, metadata={"run": "q1"})
        stack.start_pilot("rest")
        stack.start_pilot("rest")
        for task_id in (unscramble, hot, quality):
            await wait_for(lambda t=task_id: stack.ended(t), timeout=180)
            assert (await stack.task(task_id)).status == "done"

        async with db.connect() as conn:
            outputs = (await conn.execute(sa.select(files.c.url, files.c.events).where(
                files.c.task_id == quality, files.c.role == "output"))).all()
            hot_events = (await conn.execute(sa.select(sa.func.sum(files.c.events)).where(
                files.c.task_id == hot, files.c.role == "output"))).scalar()
            followed = (await conn.execute(sa.text(
                "SELECT min(j.started_at) < (SELECT finished_at FROM task_dat WHERE id = :h) "
                "FROM job_dat j WHERE j.task_id = :q"), {"h": hot, "q": quality})).scalar()
        assert len(outputs) == 12 and followed  # 48 hot files in chunks of 4, started while the filter ran
        documents = [json.loads(Path(u.removeprefix("file://")).read_text()) for u, _ in outputs]
        assert sum(d["events_kept"] for d in documents) == sum(e for _, e in outputs) == hot_events > 0
        assert all(d["run"] == "q1" and d["files"] == 4 for d in documents)
        assert sum(d["events_in"] for d in documents) > hot_events  # the filter dropped the boring ones

        # a payload writes these files: what it says is shown as text, never as markup
        async with db.connect() as conn:
            newest = (await conn.execute(sa.select(files.c.url)
                                         .where(files.c.task_id == quality, files.c.role == "output")
                                         .order_by(files.c.id.desc()).limit(1))).scalar_one()
        newest_path = Path(newest.removeprefix("file://"))
        document = json.loads(newest_path.read_text())
        document["histograms"][0]["x_label"] = '<tspan id="injected">x</tspan>'
        newest_path.write_text(json.dumps(document))

        # issue 22, finding 9: the view showed only the newest quality file of a run (4 files, 12 events). Now
        # the run's histograms are the sum of all its quality outputs
        tm, auth = stack.task_manager, {"Authorization": f"Bearer {OPERATOR_TOKEN}"}
        run = (await tm.get("/api/v1/monitor/quality/q1", headers=auth)).json()
        assert (run["outputs_summed"], run["outputs_skipped"], run["files"]) == (12, 0, 48)
        assert run["events_kept"] == hot_events and run["events_in"] == sum(d["events_in"] for d in documents)
        by_name = {h["name"]: h for h in run["histograms"]}
        assert by_name["hot_per_slice"]["entries"] == 48  # one entry per filter output file of the whole run
        per_output = [next(h for h in d["histograms"] if h["name"] == "hot_per_slice")["counts"] for d in documents]
        assert by_name["hot_per_slice"]["counts"] == [sum(c) for c in zip(*per_output, strict=True)]
        assert by_name["energy"]["entries"] == hot_events

        # another run, growing while it runs: each look adds the outputs registered since the previous one
        q2_outputs = Path(stack.settings.storage_root) / "spd.quality.q2"
        q2_outputs.mkdir(parents=True)
        async with db.begin() as conn:
            q2_task = await insert_task(conn, name="quality q2", task_type="quality", status="running",
                                        output_dataset="spd.quality.q2", metadata={"run": "q2"})

        async def q2_output(n: int) -> None:
            path = q2_outputs / f"quality-{n}.json"
            path.write_text(json.dumps(documents[n]))
            async with db.begin() as conn:
                await conn.execute(sa.insert(files).values(
                    lfn=f"spd.quality.q2/{n}/quality-{n}.json", dataset="spd.quality.q2", task_id=q2_task,
                    role="output", url=f"file://{path}", size=path.stat().st_size, adler32="00000001",
                    events=documents[n]["events_kept"], status="registered"))
        await q2_output(0)
        first = (await tm.get("/api/v1/monitor/quality/q2", headers=auth)).json()
        await q2_output(1)
        grown = (await tm.get("/api/v1/monitor/quality/q2", headers=auth)).json()
        assert (first["outputs_summed"], grown["outputs_summed"]) == (1, 2)
        # two looks at once (two monitors refreshing) on a view of their own: each output is summed once, not once
        # per look (both looks start before either reads its files: without the view's lock both add them)
        from services.task_manager.quality_view import QualityView

        view = QualityView(stack.settings.storage_root)

        async def look():
            async with db.connect() as conn:
                return await view.run(conn, "q2")
        looks = await asyncio.gather(look(), look())
        assert [r.outputs_summed for r in looks] == [2, 2] and looks[1].events_kept == grown["events_kept"]
        assert grown["events_kept"] == documents[0]["events_kept"] + documents[1]["events_kept"]
        runs = (await tm.get("/api/v1/monitor/quality", headers=auth)).json()
        assert [r["run"] for r in runs] == ["q2", "q1"] and runs[1]["outputs"] == 12
        assert (await tm.get("/api/v1/monitor/quality/nothing", headers=auth)).status_code == 404

        base = str(stack.task_manager.base_url).rstrip("/") + "/monitor"
        dom = await dump_dom(f"{base}#/quality?run=q1&token={OPERATOR_TOKEN}")
        assert '<tspan id="injected">' not in dom and '&lt;tspan id="injected"&gt;x' in dom
        assert 'data-run="q1"' in dom, re.sub(r'<script>.*</script>', '', dom, flags=re.S)[-3000:]
        assert "Run q1: 12 quality outputs summed (48 filter output files)" in dom
        assert re.search(r'<a href="#/quality\?run=q2" data-run-choice="q2">q2</a>', dom), dom[-3000:]
        shown = re.findall(r'<figure data-histogram="([a-z_]+)">', dom)
        assert shown == ["hot_per_slice", "hit_multiplicity", "energy", "keep_fraction"]
        assert dom.count("<rect ") >= 4 * 10
        newest = await dump_dom(f"{base}#/quality?token={OPERATOR_TOKEN}")  # the newest run by default
        assert 'data-run="q2"' in newest and "Run q2: 2 quality outputs summed" in newest
        await screenshot(f"{base}#/quality?run=q1&token={OPERATOR_TOKEN}", "monitor-quality", tmp_path)

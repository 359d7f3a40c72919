"""What operators see while tasks run: queue summary, jobs, pilots, explanations, throughput, metrics (the web
monitor: test_monitor.py)."""
from __future__ import annotations

import asyncio
import json
import re
import shutil
import subprocess
import sys
from pathlib import Path

import httpx
import pytest

from tests.conftest import OPERATOR_TOKEN, wait_for
from tests.e2e.stack import wms_stack
from tests.e2e.test_dispatch import copy_payload

pytestmark = pytest.mark.e2e
DASHBOARD = Path(__file__).resolve().parents[2] / "deploy" / "monitoring" / "grafana" / "dashboards" / "wms.json"
OPERATOR = {"Authorization": f"Bearer {OPERATOR_TOKEN}"}
FAIL = {"command": sys.executable, "args": ["-c", "print('boom-marker: detector map missing'); raise SystemExit(3)"],
        "env": {}}


def chromium() -> str:
    path = shutil.which("chromium") or shutil.which("chromium-browser")
    if path is None:
        pytest.fail("Debian's chromium is needed for the monitor test (scripts/setup installs it)")
    return path


async def dump_dom(url: str) -> str:
    """The page's DOM after its scripts have run (headless Chromium, virtual time)."""
    process = await asyncio.create_subprocess_exec(
        chromium(), "--headless", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
        "--virtual-time-budget=6000", "--dump-dom", url,
        stdout=subprocess.PIPE, stderr=subprocess.DEVNULL)
    out, _ = await asyncio.wait_for(process.communicate(), timeout=120)
    return out.decode()


async def test_operator_views_and_metrics(settings, db, tmp_path) -> None:
    async with wms_stack(settings, db, tmp_path, metrics_interval_s=0.2) as stack:
        await stack.make_dataset("raw.ok", 6)
        await stack.make_dataset("raw.bad", 1)
        await stack.make_dataset("raw.gpu", 2)
        ok = await stack.submit(name="copy six", input_dataset="raw.ok", output_dataset="out.ok",
                                payload=copy_payload(), split={"by": "files", "size": 1})
        bad = await stack.submit(name="always fails", input_dataset="raw.bad", output_dataset="out.bad",
                                 payload=FAIL, split={"by": "files", "size": 1}, max_attempts=2)
        gpu = await stack.submit(name="needs a gpu", input_dataset="raw.gpu", output_dataset="out.gpu",
                                 payload=copy_payload(), split={"by": "files", "size": 1}, resource_type="gpu")
        stack.start_pilot("rest")
        await wait_for(lambda: stack.ended(ok), timeout=120)
        await wait_for(lambda: stack.ended(bad), timeout=120)
        tm = stack.task_manager

        lines = (await tm.get("/api/v1/summary?all=true", headers=OPERATOR)).json()
        summary = {line["task_id"]: line for line in lines}
        assert (summary[ok]["status"], summary[ok]["done"], summary[ok]["files_done"]) == ("done", 6, 6)
        assert (summary[bad]["status"], summary[bad]["failed"]) == ("failed", 1)  # no job finished
        assert summary[gpu]["status"] == "running" and summary[gpu]["queued"] == 2 and summary[gpu]["running"] == 0
        active = [line["task_id"] for line in (await tm.get("/api/v1/summary", headers=OPERATOR)).json()]
        assert active == [gpu]

        failed = (await tm.get(f"/api/v1/jobs?task_id={bad}", headers=OPERATOR)).json()["items"]
        assert [j["status"] for j in failed] == ["failed"]
        why = (await tm.get(f"/api/v1/jobs/{failed[0]['id']}/explain", headers=OPERATOR)).json()
        assert "failed after 2 of 2 attempts" in why["reasons"][0]
        assert [a["outcome"] for a in why["attempts"]] == ["failed", "failed"]
        assert all(a["exit_code"] == 3 and a["host"] == "wn0" for a in why["attempts"])
        assert "boom-marker: detector map missing" in why["log_tail"]

        waiting = (await tm.get(f"/api/v1/jobs?task_id={gpu}&status=ready", headers=OPERATOR)).json()["items"]
        assert len(waiting) == 2
        why = (await tm.get(f"/api/v1/jobs/{waiting[1]['id']}/explain", headers=OPERATOR)).json()
        assert any("1 ready gpu jobs are ahead" in r for r in why["reasons"]), why["reasons"]
        assert any("no live pilot offers gpu" in r for r in why["reasons"]), why["reasons"]

        pilots = (await tm.get("/api/v1/pilots?live=true", headers=OPERATOR)).json()
        assert [(p["host"], p["resource_type"], p["channel"]) for p in pilots] == [("wn0", "cpu", "rest")]
        points = (await tm.get("/api/v1/throughput?minutes=5", headers=OPERATOR)).json()
        assert len(points) == 5 and sum(p["jobs"] for p in points) == 6  # the failed job is not throughput

        missing = await tm.get("/api/v1/jobs/999999/explain", headers=OPERATOR)
        assert missing.status_code == 404 and "job 999999 not found" in missing.json()["detail"]
        assert (await tm.get("/api/v1/jobs?status=lost", headers=OPERATOR)).status_code == 422

        # Prometheus: system gauges (sampled by the job-executor) and the RED metrics of routes and consumers.
        # the gauges are samples (every WMS_METRICS_INTERVAL_S): wait for one taken after both tasks ended
        ns = settings.broker_namespace
        expected = ('wms_jobs{resource_type="cpu",state="finished"} 6.0',
                    'wms_jobs{resource_type="cpu",state="failed"} 1.0',
                    'wms_jobs{resource_type="gpu",state="ready"} 2.0',
                    'wms_pilots_live{channel="rest",resource_type="cpu"} 1.0',
                    'wms_pilots_live{channel="mq",resource_type="gpu"} 0.0',
                    f'wms_queue_messages{{queue="{ns}.job-executor.claims.gpu"}} 0.0',
                    f'wms_queue_messages{{queue="{ns}.task-executor.task-events.dlq"}} 0.0')
        async with httpx.AsyncClient(base_url=stack.job_executor_url) as je:
            async def sampled() -> str | None:
                text = (await je.get("/metrics")).text
                return text if all(line in text for line in expected) else None
            metrics = await wait_for(sampled, timeout=30)
        assert re.search(r'wms_http_requests_total\{[^}]*route="/pilot/v1/pilots/\{pilot_id\}/exchange"', metrics)
        assert re.search(r'wms_messages_total\{[^}]*consumer="task-events"', metrics)
        tm_metrics = (await tm.get("/metrics")).text
        assert re.search(r'wms_http_request_duration_seconds_count\{[^}]*route="/api/v1/summary"', tm_metrics)
        # every series the provisioned Grafana dashboard plots is one the services expose
        dashboard = json.loads(DASHBOARD.read_text())
        plotted = {m for p in dashboard["panels"] for t in p["targets"] for m in re.findall(r"wms_[a-z_]+", t["expr"])}
        assert plotted and all(f"\n{m}" in metrics + tm_metrics for m in plotted), sorted(
            m for m in plotted if f"\n{m}" not in metrics + tm_metrics)

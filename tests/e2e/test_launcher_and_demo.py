"""The one-machine launcher as an operator runs it: migrations, services and pilot daemons as processes; the
demo (unscramble -> filter -> merge, quality) through the CLI; a real Prometheus (Debian's) scraping every service and
evaluating every expression of the provisioned Grafana dashboard; Ctrl-C stops everything."""
from __future__ import annotations

import asyncio
import json
import os
import re
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import httpx
import pytest
import sqlalchemy as sa
import yaml

from common.db.models import pilots
from tests.conftest import OPERATOR_TOKEN, PILOT_TOKEN, SERVICE_TOKEN, WFMS_TOKEN, free_ports, wait_for

pytestmark = pytest.mark.e2e
BIN = Path(sys.executable).parent
PORTS = ("WMS_TASK_MANAGER_PORT", "WMS_JOB_MANAGER_PORT", "WMS_TASK_EXECUTOR_PORT", "WMS_DSM_PORT",
         "WMS_JOB_EXECUTOR_PORT")


def run_cli(env: dict[str, str], *args: str, timeout: float = 60) -> subprocess.CompletedProcess:
    return subprocess.run([BIN / "wms", *args], env=env, capture_output=True, text=True, timeout=timeout)


async def wait_for_line(path: Path, text: str, process: subprocess.Popen, timeout: float = 90) -> None:
    for _ in range(int(timeout / 0.1)):
        if text in path.read_text():
            return
        assert process.poll() is None, path.read_text()
        await asyncio.sleep(0.1)
    raise AssertionError(f"{text!r} not in {path.read_text()}")


async def check_prometheus(tmp_path: Path, ports: dict[str, str]) -> None:
    binary = shutil.which("prometheus")
    assert binary, "Debian's prometheus is needed for this test (scripts/setup installs it)"
    port = free_ports(1)[0]
    alerts = Path(__file__).resolve().parents[2] / "deploy" / "monitoring" / "alerts.yml"
    (tmp_path / "prometheus.yml").write_text(yaml.safe_dump({
        "global": {"scrape_interval": "1s", "evaluation_interval": "1s"}, "rule_files": [str(alerts)],
        "scrape_configs": [{"job_name": "wms", "static_configs": [
            {"targets": [f"127.0.0.1:{p}" for p in ports.values()]}]}]}))
    prometheus = subprocess.Popen([binary, f"--config.file={tmp_path / 'prometheus.yml'}",
                                   f"--storage.tsdb.path={tmp_path / 'tsdb'}",
                                   f"--web.listen-address=127.0.0.1:{port}"],
                                  stdout=subprocess.DEVNULL, stderr=(tmp_path / "prometheus.log").open("w"))
    try:
        async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}/api/v1", timeout=5) as api:
            async def query(expr: str) -> list[dict] | None:
                try:
                    response = await api.get("/query", params={"query": expr})
                except httpx.TransportError:
                    return None  # not listening yet
                if response.status_code == 503:
                    return None  # starting ("not ready"), plain text
                answer = response.json()
                assert answer["status"] == "success", (expr, answer)
                return answer["data"]["result"]

            async def scraped() -> bool:
                up = await query("up")
                finished = await query('sum(wms_jobs{state="finished"})')
                return bool(up) and len(up) == 5 and all(r["value"][1] == "1" for r in up) and bool(finished) \
                    and float(finished[0]["value"][1]) > 0

            await wait_for(scraped, timeout=60, interval=0.5)
            dashboard = json.loads((Path(__file__).resolve().parents[2] / "deploy" / "monitoring" / "grafana" /
                                    "dashboards" / "wms.json").read_text())
            for panel in dashboard["panels"]:
                for target in panel["targets"]:
                    assert await query(target["expr"]) is not None, target["expr"]
            # the USE gauges: the live pilots' slots (2 pilots of 1 slot), busy or not; every alert rule loaded and
            # evaluated without error against these series
            slots = await query('sum(max by (resource_type) (wms_pilot_slots))')
            assert slots and float(slots[0]["value"][1]) == 2, slots

            async def rules_evaluated() -> list[dict] | None:
                groups = (await api.get("/rules")).json()["data"]["groups"]
                rules = [r for g in groups for r in g["rules"]]
                return rules if rules and all(r.get("lastEvaluation", "").startswith("20") for r in rules) else None

            rules = await wait_for(rules_evaluated, timeout=30, interval=0.5)
            defined = [r["alert"] for g in yaml.safe_load(alerts.read_text())["groups"] for r in g["rules"]]
            assert sorted(r["name"] for r in rules) == sorted(defined) and {r["health"] for r in rules} == {"ok"}, \
                rules
            assert {r["name"]: r["state"] for r in rules}["WmsDeadLetterQueueFilling"] == "inactive"
    finally:
        prometheus.terminate()
        prometheus.wait(timeout=30)


def launch_env(settings, tmp_path: Path, ports: dict[str, str], **more: str) -> dict[str, str]:
    """The launcher's environment: the test's database and broker namespace, free ports, real tokens, the CLI."""
    return {
        **os.environ, **ports,
        "WMS_DATABASE_URL": settings.database_url, "WMS_AMQP_URL": settings.amqp_url,
        "WMS_BROKER_NAMESPACE": settings.broker_namespace, "WMS_STORAGE_ROOT": str(tmp_path / "storage"),
        "WMS_API_TOKENS": json.dumps({WFMS_TOKEN: "wfms", OPERATOR_TOKEN: "operator", PILOT_TOKEN: "pilot",
                                      SERVICE_TOKEN: "service"}),
        "WMS_SERVICE_TOKEN": SERVICE_TOKEN, "WMS_PILOT_TOKEN": PILOT_TOKEN, "WMS_OUTBOX_POLL_INTERVAL_S": "0.2",
        "WMS_CLI_URL": f"http://127.0.0.1:{ports['WMS_TASK_MANAGER_PORT']}",
        "WMS_CLI_DSM_URL": f"http://127.0.0.1:{ports['WMS_DSM_PORT']}", "WMS_CLI_TOKEN": OPERATOR_TOKEN,
        "WMS_CLI_DSM_TOKEN": SERVICE_TOKEN, **more,
    }


def pilot_environments(tmp_path) -> list[bytes]:
    """The environments of the launch's pilot daemons and pilots (found by their work directory)."""
    marker = f"WMS_PILOT_WORKDIR={tmp_path}".encode()
    found = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                with open(f"/proc/{entry}/environ", "rb") as f:
                    environ = f.read()
            except OSError:
                continue
            if marker in environ and b"bwrap" not in open(f"/proc/{entry}/cmdline", "rb").read():
                found.append(environ)
    return found


async def test_launch_demo_and_ctrl_c(settings, db, tmp_path) -> None:
    ports = dict(zip(PORTS, map(str, free_ports(len(PORTS))), strict=True))
    env = launch_env(settings, tmp_path, ports, WMS_METRICS_INTERVAL_S="0.5")
    out = tmp_path / "launch.out"
    # MQ pilots: the launcher gives them a broker user of their own (removed when it ends)
    pilot_user = f"{settings.broker_namespace}-pilot"
    launcher = subprocess.Popen([BIN / "wms-launch", "--pilots", "2", "--channel", "mq", "--logs",
                                 str(tmp_path / "logs")], env=env, stdout=out.open("w"), stderr=subprocess.STDOUT)
    try:
        await wait_for_line(out, "wms-launch: ready:", launcher)
        assert "/monitor#token=<operator token>" in out.read_text()  # dev tokens are not in use here
        assert f"MQ pilots use broker user {pilot_user}" in out.read_text()
        assert pilot_user in await asyncio.to_thread(broker_users)

        demo = await asyncio.to_thread(run_cli, env, "demo", "--slices", "24", "--run", "t1", timeout=240)
        assert demo.returncode == 0, demo.stdout + demo.stderr
        lines = [line for line in demo.stdout.splitlines() if re.match(r"task \d+: ", line)]
        assert len(lines) == 4 and all(": done, 24 input files done" in line for line in lines), demo.stdout
        assert "-> spd.merged.t1" in demo.stdout and "-> spd.quality.t1" in demo.stdout
        assert f"/monitor#token={OPERATOR_TOKEN}" in demo.stdout  # the monitor URL opens as it is printed

        queue = await asyncio.to_thread(run_cli, env, "--json", "q", "--all")
        assert queue.returncode == 0, queue.stderr
        summary = json.loads(queue.stdout)
        assert [(t["name"], t["status"], t["files_done"]) for t in summary] == [
            ("unscramble t1", "done", 24), ("filter t1", "done", 24), ("merge t1", "done", 24),
            ("quality t1", "done", 24)]
        human = await asyncio.to_thread(run_cli, env, "q", "--all")
        assert human.returncode == 0, human.stderr
        assert "cpu: 0/2 pilot slots busy (0%), 0 jobs ready" in human.stdout, human.stdout  # the USE lines
        assert "errors: 0 jobs failed in the last 10 min, 0 dead letters" in human.stdout, human.stdout
        pilots_answer = await asyncio.to_thread(run_cli, env, "--json", "pilots", "--live")
        assert pilots_answer.returncode == 0, pilots_answer.stderr
        live = json.loads(pilots_answer.stdout)
        assert sorted(p["host"].rsplit("-", 1)[1] for p in live) == ["pilot0", "pilot1"]
        assert {p["runtime"] for p in live} == {"sandbox"}
        # pilot daemons and pilots hold only the pilots' settings: no service token, no database, no token at all
        environments = pilot_environments(tmp_path)
        assert len(environments) >= 4, environments  # two daemons, two pilots
        for environ in environments:
            assert not any(t.encode() in environ for t in (WFMS_TOKEN, OPERATOR_TOKEN, SERVICE_TOKEN, PILOT_TOKEN))
            assert b"WMS_DATABASE_URL=" not in environ and b"WMS_API_TOKENS=" not in environ
            assert b"WMS_AMQP_URL=" not in environ and b"guest:guest" not in environ  # only the pilots' login
            assert b"WMS_PILOT_TOKEN_FILE=" in environ
        await check_prometheus(tmp_path, ports)
        again = await asyncio.to_thread(run_cli, env, "demo", "--slices", "2", "--run", "t1")
        assert again.returncode == 1 and "spd.raw.t1 exists already" in again.stderr, again.stderr
    finally:
        launcher.send_signal(signal.SIGINT)  # what Ctrl-C sends
        code = await asyncio.to_thread(launcher.wait, 90)
    assert code == 0, out.read_text()
    assert "wms-launch: stopped" in out.read_text()
    assert pilot_user not in await asyncio.to_thread(broker_users)
    async with db.connect() as conn:  # the pilots ended cleanly (told the WMS), none was declared dead
        states = (await conn.execute(sa.select(pilots.c.status))).scalars().all()
    assert states and set(states) == {"exited"}, states
    refused = await asyncio.to_thread(run_cli, env, "q")
    assert refused.returncode == 3 and "cannot reach" in refused.stderr


def broker_users() -> list[str]:
    listed = subprocess.run(["rabbitmqctl", "-q", "list_users"], capture_output=True, text=True, timeout=120)
    assert listed.returncode == 0, listed.stderr
    return [line.split("\t")[0] for line in listed.stdout.splitlines()]


def children_of(pid: int) -> dict[int, str]:
    """pid -> program name of the direct children of ``pid`` (from /proc)."""
    found = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                stat = (entry / "stat").read_text()
                cmdline = (entry / "cmdline").read_bytes().split(b"\0")
            except OSError:
                continue
            if int(stat.rsplit(")", 1)[1].split()[1]) == pid:
                found[int(entry.name)] = " ".join(a.decode() for a in cmdline if a)
    return found


async def test_a_service_that_dies_stops_the_launch(settings, db, tmp_path) -> None:
    ports = dict(zip(PORTS, map(str, free_ports(len(PORTS))), strict=True))
    env = {**os.environ, **ports, "WMS_DATABASE_URL": settings.database_url, "WMS_AMQP_URL": settings.amqp_url,
           "WMS_BROKER_NAMESPACE": settings.broker_namespace, "WMS_STORAGE_ROOT": str(tmp_path / "storage")}
    out = tmp_path / "launch.out"
    launcher = subprocess.Popen([BIN / "wms-launch", "--pilots", "1"], env=env, stdout=out.open("w"),
                                stderr=subprocess.STDOUT)
    try:
        await wait_for_line(out, "wms-launch: ready:", launcher)
        children = children_of(launcher.pid)
        assert len(children) == 6, children  # DSM, four services, one pilot daemon
        victim = next(pid for pid, cmd in children.items() if cmd.endswith("wms-task-manager"))
        os.kill(victim, signal.SIGKILL)
        code = await asyncio.to_thread(launcher.wait, 90)
    finally:
        if launcher.poll() is None:
            launcher.kill()
    assert code == 1 and "task-manager exited with -9" in out.read_text(), out.read_text()
    assert all(not Path(f"/proc/{pid}").exists() for pid in children), "children left running"


async def test_launch_with_slurm_pilots_and_replicas(settings, db, tmp_path) -> None:
    """`wms-launch --slurm --replicas 2`: a Slurm cluster of the launch's own, the pilot factory submitting pilots
    to it, two processes of the task-executor, job-manager and job-executor; the demo runs on those pilots; Ctrl-C
    cancels them and stops the cluster."""
    if not all(shutil.which(t) for t in ("slurmctld", "slurmd", "munged", "sbatch")):
        if os.environ.get("WMS_REQUIRE_SLURM") == "1":
            pytest.fail("Slurm is not installed (scripts/slurm-cluster install)")
        pytest.skip("Slurm is not installed (scripts/slurm-cluster install)")
    base_ports = free_ports(len(PORTS) + 1)
    ports = dict(zip(PORTS, map(str, base_ports), strict=False))
    env = launch_env(settings, tmp_path, ports, WMS_FACTORY_PORT=str(base_ports[-1]), SLURM_CPUS="4")
    out = tmp_path / "launch.out"
    launcher = subprocess.Popen([BIN / "wms-launch", "--slurm", "--pilots", "2", "--pilot-slots", "2",
                                 "--replicas", "2", "--logs", str(tmp_path / "logs")], env=env,
                                stdout=out.open("w"), stderr=subprocess.STDOUT)
    try:
        await wait_for_line(out, "wms-launch: ready:", launcher, timeout=150)
        text = out.read_text()
        assert "job-executor-1" in text and "the pilot factory (up to 2 Slurm pilots" in text, text
        demo = await asyncio.to_thread(run_cli, env, "demo", "--slices", "8", "--run", "s1", timeout=240)
        assert demo.returncode == 0, demo.stdout + demo.stderr + out.read_text()
        async with db.connect() as conn:
            batch = (await conn.execute(sa.select(pilots.c.batch_system).distinct())).scalars().all()
        assert batch == ["slurm"]  # every pilot was a Slurm batch job the factory submitted
    finally:
        launcher.send_signal(signal.SIGINT)
        code = await asyncio.to_thread(launcher.wait, 120)
    assert code == 0, out.read_text()
    assert "wms-launch: stopped" in out.read_text()
    assert not (tmp_path / "slurm").exists()  # the cluster stopped and removed

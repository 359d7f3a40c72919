"""A fresh machine as the README meets it: nothing answers at the configured PostgreSQL and RabbitMQ URLs (other
ports than the machine's servers), so `wms-launch` starts private ones beside the storage and says so; then the
README's "first task in five minutes" block runs verbatim against it; Ctrl-C stops everything, the private
servers included."""
from __future__ import annotations

import asyncio
import os
import re
import shutil
import signal
import stat
import subprocess
import tempfile
from pathlib import Path

import aio_pika
import asyncpg
import pytest

from tests.conftest import free_ports
from tests.e2e.test_launcher_and_demo import BIN, PORTS, wait_for_line
from tools.launcher.servers import answers

pytestmark = pytest.mark.e2e
ROOT = Path(__file__).resolve().parents[2]
SCRIPTS = ROOT / "scripts"


def readme_block() -> str:
    text = (ROOT / "README.md").read_text()
    block = re.search(r"<!-- first-task:begin -->\n```sh\n(.*?)```\n<!-- first-task:end -->", text, re.S)
    assert block, "the README's first-task block is missing"
    return block.group(1)


async def test_fresh_machine_private_servers_and_the_readme_first_task() -> None:
    base = Path(tempfile.mkdtemp(prefix="wms-fresh."))
    base.chmod(0o755)  # the private servers run as their own users (postgres, rabbitmq) when we are root
    db_port, amqp_port, *service_ports = free_ports(2 + len(PORTS))
    assert not answers("127.0.0.1", db_port) and not answers("127.0.0.1", amqp_port)
    ports = dict(zip(PORTS, map(str, service_ports), strict=True))
    env = {k: v for k, v in os.environ.items() if not k.startswith("WMS_")}  # nothing configured but the URLs
    env.update(ports, WMS_DATABASE_URL=f"postgresql+asyncpg://wms@127.0.0.1:{db_port}/wms",
               WMS_AMQP_URL=f"amqp://guest:guest@127.0.0.1:{amqp_port}/", WMS_STORAGE_ROOT=str(base / "storage"),
               WMS_CLI_URL=f"http://127.0.0.1:{ports['WMS_TASK_MANAGER_PORT']}",
               WMS_CLI_DSM_URL=f"http://127.0.0.1:{ports['WMS_DSM_PORT']}")
    out = base / "launch.out"
    launcher = subprocess.Popen([BIN / "wms-launch", "--pilots", "2"], env=env, stdout=out.open("w"),
                                stderr=subprocess.STDOUT, cwd=ROOT)
    try:
        await wait_for_line(out, "wms-launch: ready:", launcher, timeout=240)
        said = out.read_text()
        assert f"no PostgreSQL answers at 127.0.0.1:{db_port}; starting a private one" in said, said
        assert f"no RabbitMQ answers at 127.0.0.1:{amqp_port}; starting a private node" in said, said
        pg_port = int(re.search(r"private PostgreSQL on 127\.0\.0\.1:(\d+)", said).group(1))  # type: ignore[union-attr]
        mq_port = int(re.search(r"private RabbitMQ on 127\.0\.0\.1:(\d+)", said).group(1))  # type: ignore[union-attr]
        assert answers("127.0.0.1", pg_port) and answers("127.0.0.1", mq_port)
        # issue 21, finding 7: the private servers trusted every local connection (a payload on this machine
        # could connect as the database's superuser, or as the broker's guest administrator). Now each asks for a
        # generated password, kept mode 600 beside the data and never printed.
        with pytest.raises((asyncpg.InvalidPasswordError, asyncpg.InvalidAuthorizationSpecificationError)):
            await asyncpg.connect(host="127.0.0.1", port=pg_port, user="postgres", database="postgres")
        with pytest.raises(aio_pika.exceptions.ProbableAuthenticationError):
            await aio_pika.connect(f"amqp://guest:guest@127.0.0.1:{mq_port}/")
        for name in ("postgres.password", "rabbitmq.password"):
            secret = base / "secrets" / name
            assert stat.S_IMODE(secret.stat().st_mode) == 0o600 and secret.read_text().strip() not in said
        assert "development mode" in said and "/monitor#token=dev-operator-token" in said
        assert f"  DSM               http://127.0.0.1:{ports['WMS_DSM_PORT']}/dsm/v1" in said

        done = await asyncio.to_thread(subprocess.run, ["bash", "-euo", "pipefail", "-c", readme_block()],
                                       env=env, cwd=ROOT, capture_output=True, text=True, timeout=300)
        assert done.returncode == 0, done.stdout + done.stderr
        assert "6 files of" in done.stdout and "dataset closed, 6 files" in done.stdout
        assert '"lfn":"raw/mine/slice-000000.raw.jsonl"' in done.stdout
        assert '"status": "done"' in done.stdout and '"final": true' in done.stdout
        outputs = [line.split("\t") for line in done.stdout.splitlines() if line.startswith("spd.events.mine/")]
        assert len(outputs) == 6, done.stdout  # one events file per raw slice
        for lfn, size, adler32, events, url in outputs:
            path = Path(url.removeprefix("file://"))
            assert path.stat().st_size == int(size) and re.fullmatch(r"[0-9a-f]{8}", adler32) and int(events) > 0
            assert str(path).startswith(str(base / "storage" / "spd.events.mine")) and lfn.endswith(path.name)

        # issue 22, finding 10: the launcher did not notice its private PostgreSQL or RabbitMQ dying. Now it
        # starts a dead one again, with its data, and says so; the WMS goes on (both servers were started by
        # this test's launcher: killing them touches nothing of the machine's)
        for name, pid_file in (("PostgreSQL", base / "postgres" / "data" / "postmaster.pid"),
                               ("RabbitMQ", base / "rabbitmq" / "pid")):
            os.kill(int(pid_file.read_text().split()[0]), signal.SIGKILL)
            await wait_for_line(out, f"private {name} restarted", launcher, timeout=180)
        again = await asyncio.to_thread(subprocess.run, [BIN / "wms", "q", "--all"], env=env, capture_output=True,
                                        text=True, timeout=300)
        assert again.returncode == 0 and "mine" in again.stdout, again.stdout + again.stderr
    finally:
        launcher.send_signal(signal.SIGINT)
        code = await asyncio.to_thread(launcher.wait, 120)
        said = out.read_text()
        for script, name in (("private-postgres", "postgres"), ("private-rabbitmq", "rabbitmq")):
            port_file = base / f"{name}.port"
            if port_file.exists():  # whatever happened, nothing of ours stays running
                await asyncio.to_thread(subprocess.run, [SCRIPTS / script, "stop", base / name,
                                                         port_file.read_text().strip()], capture_output=True)
        shutil.rmtree(base, ignore_errors=True)
    assert code == 0, said
    assert "private RabbitMQ stopped" in said and "private PostgreSQL stopped" in said, said
    assert not answers("127.0.0.1", pg_port) and not answers("127.0.0.1", mq_port)

"""A pilot's broker login (made by wms-broker-setup on a private RabbitMQ node) carries the whole pilot
conversation, and nothing else: it cannot publish to the task or job exchanges nor to any service queue, bind,
declare or delete, or read a service queue; a forged pilot request without a valid credential is answered 401."""
from __future__ import annotations

import asyncio
import json
import shutil
import subprocess
import sys
import tempfile
import uuid
from pathlib import Path

import aio_pika
import aiormq
import pytest

from common.messages import PilotCall, PilotReply, decode, wrap
from common.pilot_protocol import PilotRegistration, new_reply_queue_name
from tests.faults.conftest import SCRIPTS, free_port_pair, private_server
from tests.faults.harness import fault_run
from tools.broker_setup.setup import dead_letter_policy

pytestmark = pytest.mark.e2e
BIN = Path(sys.executable).parent
ROOT = Path(__file__).resolve().parents[2]


async def _refused(pilot_url: str, attempt) -> str:
    """Run ``attempt(channel)`` on a fresh connection of the pilot's login; the broker's refusal, as text."""
    connection = await aio_pika.connect(pilot_url)
    try:
        channel = await connection.channel(publisher_confirms=True)
        try:
            await attempt(channel)
        except (aiormq.exceptions.ChannelAccessRefused, aio_pika.exceptions.ChannelClosed) as exc:
            return str(exc)
        raise AssertionError("the pilot's broker login was allowed to do this")
    finally:
        await connection.close()


async def test_a_pilots_broker_login_reaches_only_the_pilot_conversation(postgres_server_url, private_rabbitmq,
                                                                        tmp_path) -> None:
    amqp_url, directory, port = private_rabbitmq
    async with fault_run(postgres_server_url, amqp_url, tmp_path) as run:
        ns = run.deployment.env["WMS_BROKER_NAMESPACE"]
        ctl = f"{SCRIPTS / 'private-rabbitmq'} ctl {directory} {port}"
        setup = await asyncio.to_thread(
            subprocess.run, [BIN / "wms-broker-setup", "--apply", "--namespace", ns, "--amqp-host",
                             f"127.0.0.1:{port}", "--rabbitmqctl", ctl],
            capture_output=True, text=True, timeout=180)
        assert setup.returncode == 0, setup.stderr
        pilot_url = setup.stdout.strip()
        assert pilot_url.startswith(f"amqp://{ns}-pilot:")
        policies = await asyncio.to_thread(subprocess.run, [*ctl.split(), "list_policies", "--formatter", "json"],
                                           capture_output=True, text=True, timeout=120)
        bound = next(p for p in json.loads(policies.stdout) if p["name"] == f"{ns}-dead-letter-bound")
        definition = bound["definition"]
        assert (json.loads(definition) if isinstance(definition, str) else definition) \
            == dead_letter_policy(ns)["definition"]

        # the whole conversation works with it: MQ pilots run a task to the end
        await run.start_services()
        await run.make_dataset("raw.login", 20)
        task_id = await run.submit("raw.login", "out.login")
        for _ in range(2):
            run.start_pilot("mq", WMS_PILOT_AMQP_URL=pilot_url)
        assert (await run.wait_ended(task_id, timeout=120)).status == "done"

        # and nothing else
        body = b'{"v": 1}'
        for exchange, key in ((f"{ns}.tasks", "task.cancelled"), (f"{ns}.jobs", "jobs.chunk")):
            async def publish(channel, exchange=exchange, key=key):
                target = await channel.get_exchange(exchange, ensure=False)
                await target.publish(aio_pika.Message(body), routing_key=key)
            assert "ACCESS_REFUSED" in await _refused(pilot_url, publish)

        async def to_a_service_queue(channel):
            await channel.default_exchange.publish(aio_pika.Message(body), routing_key=f"{ns}.job-manager.job-chunks")

        async def bind(channel):
            queue = await channel.declare_queue("", exclusive=True)
            await queue.bind(f"{ns}.tasks", routing_key="#")

        async def delete(channel):
            await channel.queue_delete(f"{ns}.job-manager.job-chunks")

        async def declare_queue(channel):
            await channel.declare_queue(f"{ns}.mine", durable=True)

        async def declare_exchange(channel):
            await channel.declare_exchange(f"{ns}.mine", aio_pika.ExchangeType.FANOUT)

        async def server_named_queue(channel):  # a reply queue must be named after a credential
            await channel.declare_queue("", exclusive=True)

        async def read_claims(channel):
            queue = await channel.get_queue(f"{ns}.job-executor.claims.cpu", ensure=False)
            await queue.get(fail=False)

        for attempt in (to_a_service_queue, bind, delete, declare_queue, declare_exchange, server_named_queue,
                        read_claims):
            assert "ACCESS_REFUSED" in await _refused(pilot_url, attempt), attempt.__name__

        # the service queues are all still there (a passive declare with the services' login)
        services = await aio_pika.connect(amqp_url)
        try:
            channel = await services.channel()
            for name in ("job-manager.job-chunks", "task-executor.task-events", "job-executor.claims.cpu"):
                await channel.declare_queue(f"{ns}.{name}", passive=True)
        finally:
            await services.close()

        # a forged pilot request over the permitted exchange without a valid credential: 401, no pilot made
        assert await _forged_registration(pilot_url, ns, credential="wmsp_forged") == 401
        assert await _forged_registration(pilot_url, ns, credential=None) == 401
        await run.audit(task_id, n_files=20)


async def _forged_registration(pilot_url: str, ns: str, credential: str | None) -> int:
    connection = await aio_pika.connect(pilot_url)
    try:
        channel = await connection.channel(publisher_confirms=True)
        replies = await channel.declare_queue(new_reply_queue_name(ns, credential), exclusive=True)
        call = PilotCall(credential=credential, registration=PilotRegistration(
            host="forger", resource_type="gpu", cores=64, memory_mb=1000, gpus=8, version="x"))
        exchange = await channel.get_exchange(f"{ns}.pilots", ensure=False)
        await exchange.publish(aio_pika.Message(wrap("pilot.register", call).model_dump_json().encode(),
                                                type="pilot.register", reply_to=replies.name,
                                                correlation_id=str(uuid.uuid4())), routing_key="pilot.register")
        message = await replies.get(timeout=5, fail=False)
        for _ in range(100):
            if message is not None:
                break
            await asyncio.sleep(0.1)
            message = await replies.get(fail=False)
        assert message is not None, "no reply"
        _, reply = decode(message.body)
        assert isinstance(reply, PilotReply)
        return reply.status
    finally:
        await connection.close()


async def test_the_compose_broker_definitions_load_at_boot(tmp_path) -> None:
    """deploy/rabbitmq/definitions.dev.json (what `docker compose up` mounts) on a private node: the services'
    user may do everything, the pilots' user only the pilot conversation, and there is no guest user."""
    readable = Path(tempfile.mkdtemp(prefix="wms-definitions."))
    try:
        readable.chmod(0o755)
        definitions = readable / "definitions.json"
        shutil.copy(ROOT / "deploy" / "rabbitmq" / "definitions.dev.json", definitions)
        definitions.chmod(0o644)
        conf = (ROOT / "deploy" / "rabbitmq" / "rabbitmq.conf").read_text().replace(
            "/etc/rabbitmq/definitions.json", str(definitions))
        with private_server("private-rabbitmq", free_port_pair(), "stop", PRIVATE_RABBITMQ_CONF=conf) as (_, _, port):
            services = await aio_pika.connect(f"amqp://wms:dev-broker-password@127.0.0.1:{port}/")
            try:
                channel = await services.channel()
                await channel.declare_exchange("wms.pilots", aio_pika.ExchangeType.TOPIC, durable=True)
                await channel.declare_exchange("wms.tasks", aio_pika.ExchangeType.TOPIC, durable=True)
            finally:
                await services.close()
            pilot_url = f"amqp://wms-pilot:dev-pilot-broker-password@127.0.0.1:{port}/"
            pilot = await aio_pika.connect(pilot_url)
            try:
                channel = await pilot.channel(publisher_confirms=True)
                await channel.declare_queue(new_reply_queue_name("wms", "wmsp_any"), exclusive=True)
                exchange = await channel.get_exchange("wms.pilots", ensure=False)
                await exchange.publish(aio_pika.Message(b"{}"), routing_key="pilot.register")
            finally:
                await pilot.close()

            async def to_tasks(channel):
                await (await channel.get_exchange("wms.tasks", ensure=False)).publish(
                    aio_pika.Message(b"{}"), routing_key="task.cancelled")
            assert "ACCESS_REFUSED" in await _refused(pilot_url, to_tasks)
            with pytest.raises(aio_pika.exceptions.ProbableAuthenticationError):
                await aio_pika.connect(f"amqp://guest:guest@127.0.0.1:{port}/")
    finally:
        shutil.rmtree(readable, ignore_errors=True)

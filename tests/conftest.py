"""Test harness: a real PostgreSQL and a real RabbitMQ.

URLs come from WMS_DATABASE_URL and WMS_AMQP_URL (defaults: this machine's services). When no URL is given and
the default service does not answer, a Docker engine (if any) provides one through testcontainers.
Isolation: each xdist worker migrates its own database and each test truncates it; each test gets its own
broker namespace (exchange and queue prefix) and deletes it afterwards. So the suite runs in parallel.
"""
from __future__ import annotations

import asyncio
import contextlib
import os
import shutil
import socket
import uuid
from collections.abc import AsyncIterator, Iterator
from urllib.parse import urlsplit

import aio_pika
import asyncpg
import httpx
import pytest
import sqlalchemy as sa
from sqlalchemy.engine import make_url
from sqlalchemy.ext.asyncio import AsyncEngine, create_async_engine

import services.dsm.models  # noqa: F401  (the reference DSM tables are part of the schema)
from common.broker import Topology
from common.db.migrate import upgrade
from common.db.models import metadata
from common.settings import Settings

DEFAULT_PG = "postgresql+asyncpg://postgres@127.0.0.1:5432/postgres"
DEFAULT_AMQP = "amqp://guest:guest@127.0.0.1:5672/"
WFMS_TOKEN, OPERATOR_TOKEN, PILOT_TOKEN, SERVICE_TOKEN = "test-wfms", "test-operator", "test-pilot", "test-service"


def _answers(url: str, default_port: int) -> bool:
    parts = urlsplit(url.replace("+asyncpg", ""))
    try:
        with socket.create_connection((parts.hostname or "127.0.0.1", parts.port or default_port), timeout=2):
            return True
    except OSError:
        return False


def _docker_available() -> bool:
    return shutil.which("docker") is not None and os.path.exists("/var/run/docker.sock")


@pytest.fixture(scope="session")
def postgres_server_url() -> Iterator[str]:
    if "WMS_DATABASE_URL" in os.environ:
        yield os.environ["WMS_DATABASE_URL"]
    elif _answers(DEFAULT_PG, 5432) or not _docker_available():
        yield DEFAULT_PG
    else:
        from testcontainers.postgres import PostgresContainer

        with PostgresContainer("postgres:15", driver="asyncpg") as pg:
            yield pg.get_connection_url()


@pytest.fixture(scope="session")
def amqp_url() -> Iterator[str]:
    if "WMS_AMQP_URL" in os.environ:
        yield os.environ["WMS_AMQP_URL"]
    elif _answers(DEFAULT_AMQP, 5672) or not _docker_available():
        yield DEFAULT_AMQP
    else:
        from testcontainers.rabbitmq import RabbitMqContainer

        with RabbitMqContainer("rabbitmq:3.10") as rmq:
            params = rmq.get_connection_params()
            yield f"amqp://guest:guest@{params.host}:{params.port}/"


async def create_database(server_url: str, name: str) -> str:
    url = make_url(server_url)
    conn = await asyncpg.connect(url.set(drivername="postgresql", database="postgres").render_as_string(False))
    try:
        await conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        await conn.execute(f'CREATE DATABASE "{name}"')
    finally:
        await conn.close()
    return url.set(database=name).render_as_string(hide_password=False)


async def drop_database(server_url: str, name: str) -> None:
    url = make_url(server_url)
    conn = await asyncpg.connect(url.set(drivername="postgresql", database="postgres").render_as_string(False))
    try:
        await conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
    finally:
        await conn.close()


@pytest.fixture(scope="session")
async def empty_database(postgres_server_url: str) -> AsyncIterator[str]:
    """A fresh database with no schema; factory of more via create_database."""
    name = f"wms_empty_{os.getpid()}_{uuid.uuid4().hex[:6]}"
    url = await create_database(postgres_server_url, name)
    yield url
    await drop_database(postgres_server_url, name)


@pytest.fixture(scope="session")
async def database_url(postgres_server_url: str) -> AsyncIterator[str]:
    """This worker's database, migrated to head through alembic (the only way the schema is made)."""
    name = f"wms_test_{os.environ.get('PYTEST_XDIST_WORKER', 'main')}_{uuid.uuid4().hex[:6]}"
    url = await create_database(postgres_server_url, name)
    await asyncio.to_thread(upgrade, url)
    yield url
    await drop_database(postgres_server_url, name)


@pytest.fixture(scope="session")
async def engine(database_url: str) -> AsyncIterator[AsyncEngine]:
    eng = create_async_engine(database_url, pool_size=10)
    yield eng
    await eng.dispose()


@pytest.fixture
async def db(engine: AsyncEngine) -> AsyncEngine:
    """The worker's database, emptied before the test."""
    names = ", ".join(t.name for t in metadata.sorted_tables)
    async with engine.begin() as conn:
        await conn.execute(sa.text(f"TRUNCATE {names} RESTART IDENTITY CASCADE"))
    return engine


async def delete_namespace(amqp_url: str, namespace: str) -> None:
    """Delete a namespace's exchanges and queues (a closed channel per missing one is expected)."""
    topology = Topology(namespace)
    connection = await aio_pika.connect(amqp_url)
    async with connection:
        for name in topology.all_queues():
            channel = await connection.channel()
            with contextlib.suppress(aio_pika.exceptions.ChannelClosed):
                await channel.queue_delete(name)
        for name in topology.all_exchanges():
            channel = await connection.channel()
            with contextlib.suppress(aio_pika.exceptions.ChannelClosed):
                await channel.exchange_delete(name)


@pytest.fixture
async def broker_namespace(amqp_url: str) -> AsyncIterator[str]:
    """A namespace of its own on the broker; its exchanges and queues are deleted after the test."""
    namespace = f"t-{uuid.uuid4().hex[:10]}"
    yield namespace
    await delete_namespace(amqp_url, namespace)


@pytest.fixture
def settings(db: AsyncEngine, database_url: str, amqp_url: str, broker_namespace: str) -> Settings:
    return Settings(
        database_url=database_url,
        amqp_url=amqp_url,
        broker_namespace=broker_namespace,
        db_pool_size=5,
        outbox_poll_interval_s=0.2,
        delivery_limit=2,
        api_tokens={WFMS_TOKEN: "wfms", OPERATOR_TOKEN: "operator", PILOT_TOKEN: "pilot", SERVICE_TOKEN: "service"},
        service_token=SERVICE_TOKEN,
        # most tests run small raw commands; tests/integration/test_transformations.py checks the default (off)
        allow_arbitrary_commands=True,
    )


@pytest.fixture
async def amqp(amqp_url: str) -> AsyncIterator[aio_pika.abc.AbstractRobustConnection]:
    connection = await aio_pika.connect_robust(amqp_url)
    yield connection
    await connection.close()


async def get_message(queue: aio_pika.abc.AbstractQueue, timeout: float = 10.0,
                      no_ack: bool = True) -> aio_pika.abc.AbstractIncomingMessage:
    """Poll ``queue`` until a message arrives (acked on receipt unless ``no_ack`` is false) or fail after
    ``timeout`` seconds."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while loop.time() < deadline:
        message = await queue.get(no_ack=no_ack, fail=False)
        if message is not None:
            return message
        await asyncio.sleep(0.05)
    raise AssertionError(f"no message on {queue.name} within {timeout}s")


@pytest.fixture
async def task_manager(settings: Settings) -> AsyncIterator[httpx.AsyncClient]:
    """The task-manager app with its real lifespan (database, broker, outbox relay), called in process."""
    from services.task_manager.app import create_app

    async with running_app(create_app(settings)) as client:
        yield client


def free_ports(n: int) -> list[int]:
    """``n`` distinct free loopback ports (all held open while choosing, so none is handed out twice)."""
    with contextlib.ExitStack() as stack:
        sockets = [stack.enter_context(socket.socket()) for _ in range(n)]
        for s in sockets:
            s.bind(("127.0.0.1", 0))
        return [s.getsockname()[1] for s in sockets]


def free_port() -> int:
    return free_ports(1)[0]


@contextlib.asynccontextmanager
async def serve_in_process(app) -> AsyncIterator[str]:
    """Serve an ASGI app over real HTTP on a free loopback port (for clients such as aiohttp)."""
    import uvicorn

    port = free_port()
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_config=None, lifespan="on"))
    task = asyncio.create_task(server.serve())
    while not server.started:
        if task.done():
            task.result()
        await asyncio.sleep(0.02)
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        await task


@pytest.fixture
async def dsm_url(settings: Settings) -> AsyncIterator[str]:
    """The reference DSM, served over HTTP against this test's database."""
    from services.dsm.app import create_app

    async with serve_in_process(create_app(settings)) as url:
        yield url


@pytest.fixture
async def dsm(dsm_url: str):
    from common.dsm import DsmClient

    client = DsmClient(dsm_url, SERVICE_TOKEN)
    yield client
    await client.close()


@contextlib.asynccontextmanager
async def running_app(app) -> AsyncIterator[httpx.AsyncClient]:
    """Run an app's lifespan (its consumers and background loops) and give an in-process HTTP client."""
    async with app.router.lifespan_context(app):
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://service") as client:
            client.app = app  # type: ignore[attr-defined]
            yield client


async def wait_for(predicate, timeout: float = 20.0, interval: float = 0.05):
    """Await ``predicate()`` until it returns a truthy value; fail after ``timeout`` seconds."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while True:
        value = await predicate()
        if value:
            return value
        if loop.time() > deadline:
            raise AssertionError(f"condition not met within {timeout}s (last value {value!r})")
        await asyncio.sleep(interval)


@pytest.fixture
async def job_manager(settings: Settings) -> AsyncIterator[httpx.AsyncClient]:
    from services.job_manager.app import create_app

    async with running_app(create_app(settings)) as client:
        yield client

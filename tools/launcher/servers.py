"""PostgreSQL and RabbitMQ of the launch's own, for a machine where none answers at the configured URLs (a laptop,
a fresh VM): an initdb cluster and a RabbitMQ node with their data beside the storage (<base>/postgres,
<base>/rabbitmq), on free loopback ports (the same ones again next time, so the data is found again), stopped with
the rest. The scripts/private-postgres and scripts/private-rabbitmq scripts do the work.

Neither trusts anybody: the PostgreSQL cluster asks for a generated password (scram) on every connection, and
the RabbitMQ node has a services' user with a generated password instead of guest (removed). The passwords are
kept in <base>/secrets (mode 600) for the next launch, whose servers find their data again."""
from __future__ import annotations

import json
import os
import random
import secrets
import socket
import subprocess
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import quote

from sqlalchemy.engine import make_url

from tools.broker_setup.setup import VHOST, user

CONNECT_TIMEOUT_S = 2.0
START_TIMEOUT_S = 180
# The RabbitMQ node's distribution port is its AMQP port + 20000: both must be free and below 65536.
RABBITMQ_PORTS = (20000, 45000)
POSTGRES_PORTS = (15000, 45000)


class ServerFailed(Exception):
    pass


def answers(host: str, port: int) -> bool:
    """Whether something accepts TCP connections there."""
    try:
        with socket.create_connection((host, port), timeout=CONNECT_TIMEOUT_S):
            return True
    except OSError:
        return False


def _free(port: int) -> bool:
    """Nothing listens there (a connection of a stopped server in TIME_WAIT does not count: PostgreSQL and
    RabbitMQ bind with SO_REUSEADDR, and so does this check)."""
    with socket.socket() as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def choose_port(remembered: Path, span: tuple[int, int], also_free: int | None = None) -> int:
    """The port this server had last time if it is free, else a free one in ``span`` (with ``port + also_free``
    free too when given); remembered for next time."""
    def usable(port: int) -> bool:
        return _free(port) and (also_free is None or _free(port + also_free))

    if remembered.exists():
        port = int(remembered.read_text().strip() or 0)
        if span[0] <= port < span[1] and usable(port):
            return port
    for _ in range(200):
        port = random.randrange(*span)
        if usable(port):
            remembered.parent.mkdir(parents=True, exist_ok=True)
            remembered.write_text(str(port))
            return port
    raise ServerFailed(f"no free port in {span[0]}-{span[1]}")


@dataclass
class PrivateServer:
    """One server started by a script of scripts/ (start prints its URL; ``stop_command`` ends it)."""

    name: str
    script: Path
    directory: Path
    port: int
    stop_command: str
    running: bool = False
    env: dict[str, str] = field(default_factory=dict)  # for the script's start

    def start(self) -> str:
        try:
            done = subprocess.run([self.script, "start", str(self.directory), str(self.port)], capture_output=True,
                                  text=True, timeout=START_TIMEOUT_S, env={**os.environ, **self.env})
        except KeyboardInterrupt:
            self.stop()  # whatever came up of it goes again
            raise
        except subprocess.TimeoutExpired as exc:
            self.stop()
            raise ServerFailed(f"the private {self.name} did not start within {START_TIMEOUT_S} s") from exc
        if done.returncode != 0:
            self.stop()
            raise ServerFailed(f"the private {self.name} did not start: {done.stderr.strip()[-1500:]}")
        self.running = True
        return done.stdout.strip().splitlines()[-1]

    def stop(self) -> None:
        subprocess.run([self.script, self.stop_command, str(self.directory), str(self.port)], capture_output=True,
                       text=True, timeout=START_TIMEOUT_S)
        self.running = False


class ServerSupervisor:
    """Watches the launch's private servers like its services: one that stops answering (killed, crashed) is
    started again with its data, and both are said."""

    CHECK_EVERY_S = 2.0
    MISSES = 2  # checks in a row without an answer before it counts as dead (a busy server may be slow once)

    def __init__(self, servers: list[PrivateServer], say: Callable[[str], None]) -> None:
        self.servers, self.say = servers, say
        self._misses = {id(s): 0 for s in servers}
        self._next = time.monotonic() + self.CHECK_EVERY_S
        self.restarts = 0

    def check(self) -> None:
        """Call often; looks every CHECK_EVERY_S. ServerFailed when a dead server cannot be started again."""
        if time.monotonic() < self._next:
            return
        self._next = time.monotonic() + self.CHECK_EVERY_S
        for server in self.servers:
            if not server.running or answers("127.0.0.1", server.port):
                self._misses[id(server)] = 0
                continue
            self._misses[id(server)] += 1
            if self._misses[id(server)] < self.MISSES:
                continue
            self.say(f"private {server.name} on 127.0.0.1:{server.port} stopped answering; starting it again "
                     f"(data in {server.directory})")
            server.start()
            self._misses[id(server)] = 0
            self.restarts += 1
            self.say(f"private {server.name} restarted on 127.0.0.1:{server.port}")


SERVICES_BROKER_USER = "wms"


def kept_secret(path: Path) -> str:
    """A generated password kept in ``path`` (mode 600) from one launch to the next."""
    if not path.exists():
        path.parent.mkdir(parents=True, exist_ok=True)
        path.parent.chmod(0o700)
        descriptor = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(descriptor, "w") as out:
            out.write(secrets.token_urlsafe(24))
    return path.read_text().strip()


def private_postgres(scripts: Path, base: Path, database_url: str) -> tuple[PrivateServer, str]:
    """A cluster in <base>/postgres that asks for a generated password, and the configured database URL pointed at
    it (same database name, as postgres with that password on 127.0.0.1)."""
    directory = base / "postgres"
    port = choose_port(directory.with_name("postgres.port"), POSTGRES_PORTS)
    password_file = base / "secrets" / "postgres.password"
    password = kept_secret(password_file)
    server = PrivateServer("PostgreSQL", scripts / "private-postgres", directory, port, "stop",
                           env={"PRIVATE_POSTGRES_PASSWORD_FILE": str(password_file)})
    server.start()
    url = make_url(database_url).set(host="127.0.0.1", port=port, username="postgres", password=password)
    return server, url.render_as_string(hide_password=False)


def private_rabbitmq(scripts: Path, base: Path) -> tuple[PrivateServer, str]:
    """A node with its data in <base>/rabbitmq (kept between launches) and the AMQP URL of its services' user
    (administrator, generated password); guest is removed."""
    directory = base / "rabbitmq"
    port = choose_port(directory.with_name("rabbitmq.port"), RABBITMQ_PORTS, also_free=20000)
    server = PrivateServer("RabbitMQ", scripts / "private-rabbitmq", directory, port, "halt")
    server.start()
    password = kept_secret(base / "secrets" / "rabbitmq.password")
    users = {"users": [user(SERVICES_BROKER_USER, password, ["administrator"])], "vhosts": [{"name": VHOST}],
             "permissions": [{"user": SERVICES_BROKER_USER, "vhost": VHOST, "configure": ".*", "write": ".*",
                              "read": ".*"}]}
    ctl = [str(scripts / "private-rabbitmq"), "ctl", str(directory), str(port)]
    imported = subprocess.run([*ctl, "import_definitions", "--format", "json"], input=json.dumps(users),
                              capture_output=True, text=True, timeout=START_TIMEOUT_S)
    if imported.returncode != 0:
        server.stop()
        raise ServerFailed(f"the private RabbitMQ's services user could not be made: {imported.stderr[-1000:]}")
    listed = subprocess.run([*ctl, "list_users", "--formatter", "json"], capture_output=True, text=True,
                            timeout=START_TIMEOUT_S)
    removed = listed
    if listed.returncode == 0 and "guest" in {u["user"] for u in json.loads(listed.stdout)}:
        removed = subprocess.run([*ctl, "delete_user", "guest"], capture_output=True, text=True,
                                 timeout=START_TIMEOUT_S)
    if removed.returncode != 0:
        server.stop()
        raise ServerFailed(f"the private RabbitMQ's guest user could not be removed: {removed.stderr[-1000:]}")
    return server, f"amqp://{SERVICES_BROKER_USER}:{quote(password, safe='')}@127.0.0.1:{port}/"

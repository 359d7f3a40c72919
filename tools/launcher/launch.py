"""wms-launch: migrations, then the DSM and the four services, then N pilot daemons, as local processes.

``--replicas N`` runs the task-executor, job-manager and job-executor as N processes each (replica i on the
service's port + 100 i; pilots get every job-executor's URL). ``--slurm`` runs pilots the Slurm way instead of as
daemons: a single-node Slurm cluster of the launch's own (scripts/slurm-cluster, beside the storage) and the pilot
factory submitting up to ``--pilots`` pilots to it as the backlog needs; Ctrl-C cancels them and stops the cluster.

Everything is configured by the usual WMS_* environment (PostgreSQL, RabbitMQ, ports, tokens). Where no PostgreSQL
or RabbitMQ answers at the configured URLs (a laptop, a fresh VM), the launcher starts private ones with their data
beside the storage, on free ports, and stops them at the end (``--no-private-servers``: fail instead). Each child runs
in its own session so that Ctrl-C reaches only the launcher, which then stops the pilots first (they finish or
fail their jobs cleanly), then the services in reverse order. A service that dies stops the whole launch.
"""
from __future__ import annotations

import argparse
import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import urlsplit

from sqlalchemy.engine import make_url

from common.settings import Settings
from tools.launcher import servers as private
from tools.launcher.logs import RotatingLog, pump

BIN = Path(sys.executable).parent
READY_TIMEOUT_S = 60.0
STOP_TIMEOUT_S = 30.0


# what a pilot takes from the launch's environment: nothing of the services (tokens, database, broker)
PILOT_INHERITS = frozenset({"PATH", "HOME", "USER", "LOGNAME", "LANG", "LC_ALL", "LC_CTYPE", "TZ", "TMPDIR",
                            "WMS_LOG_LEVEL", "WMS_PILOT_RUNTIME", "WMS_PILOT_PAYLOAD_USER",
                            "WMS_PILOT_SANDBOX_PATHS", "WMS_PILOT_MEMORY_FACTOR", "WMS_PILOT_MAX_OUTPUT_MB",
                            "WMS_PILOT_MAX_LOG_MB", "WMS_PILOT_CGROUPS"})


def write_pilot_token(directory: Path) -> Path:
    """The pilots' token in a file of mode 600 (WMS_PILOT_TOKEN_FILE): never in a pilot's environment."""
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / "pilot-token"
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(os.environ.get("WMS_PILOT_TOKEN", "dev-pilot-token"))
    os.chmod(path, 0o600)
    return path


@dataclass
class Child:
    name: str
    process: subprocess.Popen[bytes]
    essential: bool


@dataclass
class Launch:
    env: dict[str, str]
    logs: Path
    log_max_bytes: int = 50 << 20
    log_backups: int = 5
    children: list[Child] = field(default_factory=list)
    stopping: bool = False

    def start(self, name: str, command: list[str], essential: bool = True, inherit: bool = True,
              extra_env: dict[str, str] | None = None, **env: str) -> Child:
        """``inherit``: the child gets the launch's whole environment (the services); without it, only the
        node's harmless variables and ``env`` (pilots: never the services' tokens or database URL)."""
        base = self.env if inherit else {k: v for k, v in self.env.items() if k in PILOT_INHERITS}
        process = subprocess.Popen(command, env={**base, **(extra_env or {}), **env}, stdout=subprocess.PIPE,
                                   stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, start_new_session=True)
        assert process.stdout is not None
        pump(process.stdout, RotatingLog(self.logs / f"{name}.log", self.log_max_bytes, self.log_backups))
        child = Child(name, process, essential)
        self.children.append(child)
        return child

    def wait_ready(self, child: Child, url: str) -> None:
        deadline = time.monotonic() + READY_TIMEOUT_S
        while time.monotonic() < deadline and not self.stopping:
            if child.process.poll() is not None:
                raise LaunchFailed(f"{child.name} exited with {child.process.returncode}; "
                                   f"see {self.logs / (child.name + '.log')}")
            try:
                with urllib.request.urlopen(url + "/readyz", timeout=2) as answer:
                    if answer.status == 200:
                        return
            except (urllib.error.URLError, OSError):
                pass
            time.sleep(0.2)
        if not self.stopping:
            raise LaunchFailed(f"{child.name} not ready within {READY_TIMEOUT_S:.0f} s; "
                               f"see {self.logs / (child.name + '.log')}")

    def stop(self) -> None:
        """Pilots first, then the services in reverse start order: SIGTERM, wait, SIGKILL if need be."""
        self.stopping = True
        pilots = [c for c in self.children if not c.essential]
        services = [c for c in reversed(self.children) if c.essential]
        for group in (pilots, services):
            for child in group:
                if child.process.poll() is None:
                    child.process.send_signal(signal.SIGTERM)
            deadline = time.monotonic() + STOP_TIMEOUT_S
            for child in group:
                try:
                    child.process.wait(timeout=max(0.1, deadline - time.monotonic()))
                except subprocess.TimeoutExpired:
                    print(f"wms-launch: {child.name} did not stop in time; killed", file=sys.stderr)
                    child.process.kill()
                    child.process.wait()


class LaunchFailed(Exception):
    pass


class PilotBrokerUser:
    """The MQ pilots' broker user (wms-broker-setup through rabbitmqctl), removed again when the launch ends."""

    def __init__(self, rabbitmqctl: str = "rabbitmqctl") -> None:
        self.namespace: str | None = None
        self.rabbitmqctl = rabbitmqctl  # the private node's own when the launch started one

    def set_up(self, settings: Settings, env: dict[str, str]) -> str:
        address = urlsplit(settings.amqp_url)
        done = subprocess.run([BIN / "wms-broker-setup", "--apply", "--namespace", settings.broker_namespace,
                               "--amqp-host", f"{address.hostname}:{address.port or 5672}",
                               "--rabbitmqctl", self.rabbitmqctl],
                              env=env, capture_output=True, text=True)
        if done.returncode != 0:
            # never the services' login instead: a payload could do anything on the broker with it
            raise LaunchFailed(f"no broker user of their own for the MQ pilots ({done.stderr.strip()[-500:]}): run "
                               "wms-broker-setup --apply as the broker's administrator and set WMS_PILOT_AMQP_URL to "
                               "the URL it prints, or use --channel rest")
        self.namespace = settings.broker_namespace
        print(f"wms-launch: MQ pilots use broker user {self.namespace}-pilot (the pilot conversation only)",
              flush=True)
        return done.stdout.strip()

    def remove(self, env: dict[str, str]) -> None:
        if self.namespace is not None:
            subprocess.run([BIN / "wms-broker-setup", "--remove", "--namespace", self.namespace,
                            "--rabbitmqctl", self.rabbitmqctl], env=env, capture_output=True, text=True)


SCRIPTS = Path(__file__).resolve().parents[2] / "scripts"


def factory_port() -> int:
    return int(os.environ.get("WMS_FACTORY_PORT", "8086"))


def free_port_pair() -> int:
    """A loopback port p with p + 1 free too (slurmctld and slurmd)."""
    for _ in range(50):
        with socket.socket() as first, socket.socket() as second:
            first.bind(("127.0.0.1", 0))
            port = first.getsockname()[1]
            try:
                second.bind(("127.0.0.1", port + 1))
            except OSError:
                continue
            return int(port)
    raise LaunchFailed("no two consecutive free ports for the Slurm cluster")


class SlurmCluster:
    """The launch's own single-node Slurm cluster (scripts/slurm-cluster), cancelled and stopped at the end."""

    def __init__(self, directory: Path) -> None:
        self.directory = directory
        self.conf: str | None = None

    def start(self) -> str:
        script = SCRIPTS / "slurm-cluster"
        if not script.exists():
            raise LaunchFailed(f"--slurm needs the source tree's scripts/slurm-cluster ({script} is missing)")
        port = free_port_pair()
        done = subprocess.run([script, "start", str(self.directory), str(port)], capture_output=True, text=True,
                              timeout=120)
        if done.returncode != 0:
            subprocess.run([script, "stop", str(self.directory)], capture_output=True, timeout=120)
            raise LaunchFailed(f"the Slurm cluster did not start: {done.stderr.strip()[-1000:]} "
                               "(scripts/slurm-cluster install installs Slurm)")
        self.conf = done.stdout.strip()
        print(f"wms-launch: Slurm cluster up (SLURM_CONF={self.conf})", flush=True)
        return self.conf

    def stop(self) -> None:
        if self.conf is None:
            return
        env = {**os.environ, "SLURM_CONF": self.conf}
        subprocess.run(["scancel", f"--user={os.getuid()}"], env=env, capture_output=True, timeout=60)
        for _ in range(60):  # the pilots wind down (SIGTERM, then Slurm's SIGKILL after its KillWait)
            squeue = subprocess.run(["squeue", "--noheader"], env=env, capture_output=True, text=True, timeout=60)
            if squeue.returncode != 0 or not squeue.stdout.strip():
                break
            time.sleep(0.5)
        subprocess.run([SCRIPTS / "slurm-cluster", "stop", str(self.directory)], capture_output=True, timeout=120)
        self.conf = None


def start_factory(launch: Launch, slurm: SlurmCluster, args: argparse.Namespace, settings: Settings,
                  job_executors: str, pilot_env: dict[str, str], logs: Path, base: Path) -> Child:
    """The pilot factory with one CPU queue on the launch's Slurm cluster: up to ``--pilots`` pilots of
    ``--pilot-cores`` cores and ``--pilot-slots`` slots, two waiting at most."""
    conf = slurm.start()
    queues = base / "factory-queues.json"
    queues.write_text(json.dumps([{
        "name": "local-slurm", "batch_system": "slurm", "resource_type": "cpu", "cores": args.pilot_cores,
        "memory_mb": 2000 * args.pilot_slots, "slots": args.pilot_slots, "max_running": args.pilots,
        "max_queued": 2, "max_submit_per_cycle": args.pilots, "pilot_idle_limit_s": 60, "channel": args.channel,
        "pilot_env": {"WMS_PILOT_WORKDIR": str(base / "pilots")},
    }], indent=1))
    return launch.start("pilot-factory", [str(BIN / "wms-pilot-factory")], SLURM_CONF=conf,
                        WMS_FACTORY_QUEUES_FILE=str(queues), WMS_FACTORY_LOG_DIR=str(logs / "batch"),
                        WMS_FACTORY_PILOT_SERVER_URLS=job_executors,
                        WMS_FACTORY_PILOT_AMQP_URL=pilot_env.get("WMS_PILOT_AMQP_URL", ""),
                        WMS_FACTORY_PILOT_TOKEN=os.environ.get("WMS_PILOT_TOKEN", "dev-pilot-token"),
                        WMS_FACTORY_INTERVAL_S="2")


def at_least(minimum: int) -> Callable[[str], int]:
    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not a whole number") from None
        if value < minimum:
            raise argparse.ArgumentTypeError(f"must be >= {minimum}")
        return value
    return parse


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="wms-launch", description=__doc__.split("\n")[0])
    parser.add_argument("--pilots", type=at_least(0), default=2, help="CPU pilot daemons (default 2)")
    parser.add_argument("--gpu-pilots", type=at_least(0), default=0, help="pilot daemons that offer a GPU (default 0)")
    parser.add_argument("--channel", choices=["rest", "mq"], default="rest", help="the pilots' channel")
    parser.add_argument("--pilot-cores", type=at_least(1), default=1, help="cores each pilot offers (default 1)")
    parser.add_argument("--pilot-slots", type=at_least(1), default=1,
                        help="jobs each pilot runs at once, within its cores (default 1)")
    parser.add_argument("--replicas", type=at_least(1), default=1,
                        help="processes of the task-executor, job-manager and job-executor each (default 1)")
    parser.add_argument("--slurm", action="store_true",
                        help="pilots as Slurm batch jobs: a single-node Slurm cluster of the launch's own and the "
                             "pilot factory submitting up to --pilots of them as the backlog needs")
    parser.add_argument("--no-dsm", action="store_true", help="the site runs its own DSM at WMS_DSM_URL")
    parser.add_argument("--no-private-servers", action="store_true",
                        help="never start a private PostgreSQL or RabbitMQ (fail when none answers)")
    parser.add_argument("--logs", type=Path, default=None, help="log directory (default <storage>/../logs)")
    parser.add_argument("--log-max-mb", type=at_least(1), default=50,
                        help="a log is rotated (<name>.log.1 ...) once it reaches this size (default 50)")
    parser.add_argument("--log-backups", type=at_least(0), default=5, help="rotated logs kept per process (default 5)")
    return parser.parse_args(argv)


def start_missing_servers(settings: Settings, base: Path, started: list[private.PrivateServer]) -> None:
    """Private PostgreSQL and RabbitMQ where none answers at the configured URLs, added to ``started`` as each
    comes up; their URLs go into os.environ (the services, the migration and the pilots read them there)."""
    database = make_url(settings.database_url)
    host, port = database.host or "127.0.0.1", database.port or 5432
    if not private.answers(host, port):
        print(f"wms-launch: no PostgreSQL answers at {host}:{port}; starting a private one (data in "
              f"{base / 'postgres'})", flush=True)
        server, url = private.private_postgres(SCRIPTS, base, settings.database_url)
        started.append(server)
        os.environ["WMS_DATABASE_URL"] = url
        print(f"wms-launch: private PostgreSQL on 127.0.0.1:{server.port} (WMS_DATABASE_URL="
              f"{make_url(url).render_as_string(hide_password=True)}; the password in {base / 'secrets'})", flush=True)
    brokers = [urlsplit(u.strip()) for u in settings.amqp_url.split(",") if u.strip()]
    if not any(private.answers(b.hostname or "127.0.0.1", b.port or 5672) for b in brokers):
        where = ", ".join(f"{b.hostname}:{b.port or 5672}" for b in brokers)
        print(f"wms-launch: no RabbitMQ answers at {where}; starting a private node (data in {base / 'rabbitmq'})",
              flush=True)
        server, url = private.private_rabbitmq(SCRIPTS, base)
        started.append(server)
        os.environ["WMS_AMQP_URL"] = url
        print(f"wms-launch: private RabbitMQ on 127.0.0.1:{server.port} (user {private.SERVICES_BROKER_USER}, "
              f"no guest; the password in {base / 'secrets'})", flush=True)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    settings = Settings()
    base = Path(settings.storage_root).parent
    servers: list[private.PrivateServer] = []
    if not args.no_private_servers:
        base.mkdir(parents=True, exist_ok=True)
        try:
            start_missing_servers(settings, base, servers)
        except (private.ServerFailed, KeyboardInterrupt) as exc:
            print(f"wms-launch: {exc or 'interrupted'}; stopping the private servers started", file=sys.stderr)
            for server in reversed(servers):
                server.stop()
            return 1
        settings = Settings()
    try:
        return launch_everything(args, settings, base, servers)
    finally:
        for server in reversed(servers):
            server.stop()
            print(f"wms-launch: private {server.name} stopped (its data stays in {server.directory})",
                  file=sys.stderr, flush=True)


def launch_everything(args: argparse.Namespace, settings: Settings, base: Path,
                      servers: list[private.PrivateServer]) -> int:
    logs = args.logs or base / "logs"
    logs.mkdir(parents=True, exist_ok=True)
    host = "127.0.0.1" if settings.listen_host in ("0.0.0.0", "::") else settings.listen_host
    ports = {"dsm": settings.dsm_port, "task-manager": settings.task_manager_port,
             "job-manager": settings.job_manager_port, "task-executor": settings.task_executor_port,
             "job-executor": settings.job_executor_port}
    if args.slurm and args.gpu_pilots:
        print("wms-launch: --slurm runs CPU pilots only (the cluster it starts has no GPU)", file=sys.stderr)
        return 2
    # replica i of a replicated service listens on its port + 100 i
    processes = [(name, 0) for name in ["dsm"] * (not args.no_dsm) + ["task-manager"]] + [
        (name, i) for name in ("job-manager", "task-executor", "job-executor") for i in range(args.replicas)]
    url = {f"{name}{'-' + str(i) if i else ''}": f"http://{host}:{ports[name] + 100 * i}" for name, i in processes}
    job_executors = ",".join(url[f"job-executor{'-' + str(i) if i else ''}"] for i in range(args.replicas))
    env = {**os.environ, "PATH": f"{BIN}{os.pathsep}{os.environ.get('PATH', '')}"}
    if settings.uses_dev_tokens:
        # a laptop or a demo: no tokens were given, so the well-known development ones are used, openly
        env["WMS_DEV_MODE"] = "1"
        print("wms-launch: development mode (WMS_DEV_MODE=1): the development tokens are live; set "
              "WMS_API_TOKENS and WMS_SERVICE_TOKEN for anything else", flush=True)
    if not args.no_dsm:
        env.setdefault("WMS_DSM_URL", url["dsm"])
    launch = Launch(env=env, logs=logs, log_max_bytes=args.log_max_mb << 20, log_backups=args.log_backups)
    private_broker = next((s for s in servers if s.name == "RabbitMQ"), None)
    pilot_broker = PilotBrokerUser(
        f"{SCRIPTS / 'private-rabbitmq'} ctl {private_broker.directory} {private_broker.port}" if private_broker
        else "rabbitmqctl")
    slurm = SlurmCluster(base / "slurm") if args.slurm else None

    def on_signal(signum: int, _frame: object) -> None:
        if not launch.stopping:
            print(f"\nwms-launch: {signal.Signals(signum).name}: stopping pilots, then services", file=sys.stderr)
        launch.stopping = True

    signal.signal(signal.SIGINT, on_signal)
    signal.signal(signal.SIGTERM, on_signal)

    print(f"wms-launch: migrating {settings.database_url.split('@')[-1]}", flush=True)
    migrated = subprocess.run([BIN / "wms-migrate"], env=env, capture_output=True, text=True)
    if migrated.returncode != 0:
        print(f"wms-launch: migration failed:\n{migrated.stderr[-3000:]}", file=sys.stderr)
        return 1
    try:
        for name, i in processes:
            label = f"{name}{'-' + str(i) if i else ''}"
            port_variable = f"WMS_{name.upper().replace('-', '_')}_PORT"
            launch.wait_ready(launch.start(label, [str(BIN / f"wms-{name}")],
                                           extra_env={port_variable: str(ports[name] + 100 * i)}), url[label])
            if launch.stopping:
                break
        services = [label for label in url]
        pilot_env = {
            "WMS_PILOT_CHANNEL": args.channel, "WMS_PILOT_SERVER_URL": job_executors,
            "WMS_PILOT_BROKER_NAMESPACE": settings.broker_namespace, "WMS_PILOT_CORES": str(args.pilot_cores),
            "WMS_PILOT_SLOTS": str(args.pilot_slots),
            "WMS_PILOT_TOKEN_FILE": str(write_pilot_token(base / "secrets")),
        }
        if args.channel == "mq" and not launch.stopping:
            # MQ pilots get a broker login of their own (the pilot conversation only), never the services' one
            pilot_env["WMS_PILOT_AMQP_URL"] = os.environ.get("WMS_PILOT_AMQP_URL") or pilot_broker.set_up(settings, env)
        kinds = ["cpu"] * args.pilots * (not args.slurm) + ["gpu"] * args.gpu_pilots
        if slurm is not None and not launch.stopping:
            launch.wait_ready(start_factory(launch, slurm, args, settings, job_executors, pilot_env, logs, base),
                              f"http://{host}:{factory_port()}")
        for i, kind in enumerate(kinds):
            if launch.stopping:
                break
            launch.start(f"pilot{i}", [str(BIN / "wms-pilot-daemon"), "--backoff", "2", "--max-backoff", "10"],
                         essential=False, inherit=False, **pilot_env, WMS_PILOT_RESOURCE_TYPE=kind,
                         WMS_PILOT_GPUS="1" if kind == "gpu" else "0",
                         WMS_PILOT_HOST=f"{socket.gethostname()}-pilot{i}",
                         WMS_PILOT_WORKDIR=str(base / "pilots" / f"pilot{i}"))
        if not launch.stopping:
            token_hint = "dev-operator-token" if settings.uses_dev_tokens else "<operator token>"
            pilots_line = (f"the pilot factory (up to {args.pilots} Slurm pilots, SLURM_CONF={slurm.conf})"
                           if slurm is not None else f"{len(kinds)} pilot daemons")
            lines = [f"wms-launch: ready: {', '.join(services)} and {pilots_line} ({args.channel})",
                     f"  task-manager API  {url['task-manager']}/api/v1   (OpenAPI: {url['task-manager']}/docs)",
                     f"  web monitor       {url['task-manager']}/monitor#token={token_hint}",
                     f"  pilot API         {url['job-executor']}/pilot/v1"]
            if "dsm" in url:
                lines.append(f"  DSM               {url['dsm']}/dsm/v1")
            lines += [f"  {'private ' + s.name:<17} 127.0.0.1:{s.port} (data in {s.directory})" for s in servers]
            lines += [f"  logs              {logs}", "  try: wms demo     Ctrl-C stops everything"]
            print("\n".join(lines), flush=True)
        supervisor = private.ServerSupervisor(servers, lambda line: print(f"wms-launch: {line}", flush=True))
        while not launch.stopping:
            for child in launch.children:
                if child.process.poll() is not None and child.essential:
                    raise LaunchFailed(f"{child.name} exited with {child.process.returncode}; "
                                       f"see {logs / (child.name + '.log')}")
            try:
                supervisor.check()
            except private.ServerFailed as exc:
                raise LaunchFailed(str(exc)) from exc
            time.sleep(0.5)
        return 0
    except LaunchFailed as exc:
        print(f"wms-launch: {exc}; stopping everything", file=sys.stderr)
        return 1
    finally:
        launch.stop()
        if slurm is not None:
            slurm.stop()
        pilot_broker.remove(env)
        print("wms-launch: stopped", file=sys.stderr)


if __name__ == "__main__":
    sys.exit(main())

"""``wms-broker-setup``: creates the pilots' broker user with permissions limited to the pilot conversation.

A pilot (or the payload it runs) holding this login may only publish to the pilots' request exchange
(``<namespace>.pilots``) and declare, read and delete its reply queues (``<namespace>.reply.<digest>.<id>``,
exclusive to its connection, named after its credential: common.pilot_protocol.reply_queue_prefix): it cannot
publish to the task or job exchanges, nor to the default exchange (so to no service queue), nor bind, declare or
delete anything else. The services keep their own login.

The users are written as RabbitMQ definitions (password hashes, never plain text on a command line):
With them goes the policy that bounds the namespace's dead-letter queues (what the services declare, also for
queues an older version declared without a bound).
  --apply           import them now through rabbitmqctl (``--rabbitmqctl`` names the command, e.g. to reach a
                    node of another name); additive: other users and objects are left alone
  --definitions F   write them to F, with the services' user, for a node that loads definitions at boot (compose:
                    deploy/rabbitmq/); at boot RabbitMQ then creates no default user, hence the services' user
  --remove          delete the pilot user (what the launcher does when it ends)
Passwords come from the environment (WMS_PILOT_BROKER_PASSWORD, WMS_BROKER_SERVICE_PASSWORD), or are generated
and printed with the pilot's AMQP URL.
"""
from __future__ import annotations

import argparse
import base64
import hashlib
import json
import os
import re
import secrets
import shlex
import subprocess
import sys
from pathlib import Path
from typing import Any
from urllib.parse import quote

from common.broker import dead_letter_bounds
from common.pilot_protocol import reply_queue_pattern
from common.settings import Settings

VHOST = "/"
NAME = re.compile(r"^[a-z][a-z0-9-]{0,40}$")


def pilot_permissions(namespace: str) -> dict[str, str]:
    """configure / write / read patterns (regular expressions over resource names) of the pilots' user."""
    reply_queue = reply_queue_pattern(namespace)
    return {"configure": reply_queue, "write": f"^{re.escape(namespace)}\\.pilots$", "read": reply_queue}


def password_hash(password: str, salt: bytes | None = None) -> str:
    """RabbitMQ's rabbit_password_hashing_sha256: base64(salt + sha256(salt + password)), a 4-byte salt."""
    salt = salt if salt is not None else secrets.token_bytes(4)
    return base64.b64encode(salt + hashlib.sha256(salt + password.encode()).digest()).decode()


def user(name: str, password: str, tags: list[str]) -> dict[str, Any]:
    return {"name": name, "password_hash": password_hash(password),
            "hashing_algorithm": "rabbit_password_hashing_sha256", "tags": tags, "limits": {}}


def definitions(namespace: str, pilot_user: str, pilot_password: str,
                service: tuple[str, str] | None = None) -> dict[str, Any]:
    """The users and permissions; with ``service`` (user, password) also the services' administrator."""
    users = [user(pilot_user, pilot_password, [])]
    permissions = [{"user": pilot_user, "vhost": VHOST, **pilot_permissions(namespace)}]
    if service is not None:
        users.append(user(service[0], service[1], ["administrator"]))
        permissions.append({"user": service[0], "vhost": VHOST, "configure": ".*", "write": ".*", "read": ".*"})
    return {"users": users, "vhosts": [{"name": VHOST}], "permissions": permissions,
            "policies": [dead_letter_policy(namespace)]}


def dead_letter_policy(namespace: str) -> dict[str, Any]:
    """Bounds the namespace's dead-letter queues as the services declare them (WMS_DEAD_LETTER_MAX_MESSAGES and
    _BYTES): also those an older version declared without a bound (a queue's arguments cannot change)."""
    return {"vhost": VHOST, "name": f"{namespace}-dead-letter-bound", "pattern": f"^{re.escape(namespace)}\\..*\\.dlq$",
            "apply-to": "queues", "priority": 0, "definition": dead_letter_bounds(Settings())}


def rabbitmqctl(command: str, *args: str, stdin: str | None = None) -> None:
    done = subprocess.run([*shlex.split(command), *args], input=stdin, capture_output=True, text=True, timeout=120)
    if done.returncode != 0:
        raise SystemExit(f"wms-broker-setup: {command} {' '.join(args)} failed ({done.returncode}): "
                         f"{(done.stderr or done.stdout).strip()[-500:]}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="wms-broker-setup", description=__doc__.split("\n")[0])
    parser.add_argument("--namespace", default=os.environ.get("WMS_BROKER_NAMESPACE", "wms"))
    parser.add_argument("--pilot-user", default=None, help="default: <namespace>-pilot")
    parser.add_argument("--amqp-host", default="127.0.0.1:5672", help="host:port for the printed pilot URL")
    action = parser.add_mutually_exclusive_group(required=True)
    action.add_argument("--apply", action="store_true", help="import the pilot user now through rabbitmqctl")
    action.add_argument("--definitions", type=Path, help="write boot-time definitions (with the services' user)")
    action.add_argument("--remove", action="store_true", help="delete the pilot user")
    parser.add_argument("--rabbitmqctl", default="rabbitmqctl", help="the rabbitmqctl command (default: %(default)s)")
    parser.add_argument("--service-user", default=os.environ.get("WMS_BROKER_SERVICE_USER", "wms"))
    args = parser.parse_args(argv)
    if not NAME.match(args.namespace):
        parser.error(f"namespace {args.namespace!r} must match {NAME.pattern}")
    pilot_user = args.pilot_user or f"{args.namespace}-pilot"
    if not re.fullmatch(r"[A-Za-z0-9_.-]{1,64}", pilot_user):
        parser.error(f"pilot user {pilot_user!r}: letters, digits, '_', '.', '-' only")

    if args.remove:
        rabbitmqctl(args.rabbitmqctl, "delete_user", pilot_user)
        print(f"broker user {pilot_user} deleted")
        return 0
    pilot_password = os.environ.get("WMS_PILOT_BROKER_PASSWORD") or secrets.token_urlsafe(24)
    if args.definitions is not None:
        service_password = os.environ.get("WMS_BROKER_SERVICE_PASSWORD")
        if not service_password:
            parser.error("--definitions needs WMS_BROKER_SERVICE_PASSWORD (the services' broker password): at boot "
                         "RabbitMQ creates no default user when it loads definitions")
        document = definitions(args.namespace, pilot_user, pilot_password, (args.service_user, service_password))
        args.definitions.parent.mkdir(parents=True, exist_ok=True)
        args.definitions.write_text(json.dumps(document, indent=2) + "\n")
        args.definitions.chmod(0o644)  # password hashes only; the broker's container reads it
        print(f"wrote {args.definitions}: users {args.service_user} (services) and {pilot_user} (pilots)",
              file=sys.stderr)
    else:
        rabbitmqctl(args.rabbitmqctl, "import_definitions", "--format", "json",  # no file: standard input
                    stdin=json.dumps(definitions(args.namespace, pilot_user, pilot_password)))
        print(f"broker user {pilot_user} set up: publish to {args.namespace}.pilots, own reply queue only; "
              f"policy {args.namespace}-dead-letter-bound set", file=sys.stderr)
    print(f"amqp://{pilot_user}:{quote(pilot_password, safe='')}@{args.amqp_host}/")
    return 0


if __name__ == "__main__":
    sys.exit(main())

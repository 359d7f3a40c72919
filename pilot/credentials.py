"""The pilot's secrets never reach a payload, whatever runtime runs it.

- The token is read from a file (WMS_PILOT_TOKEN_FILE, which must not be readable by others) rather than the
  environment. A pilot started with secrets in its environment (WMS_PILOT_TOKEN, a broker URL with a password)
  re-executes itself at once without them, handing them over through a pipe: /proc/PID/environ shows the
  environment a process was started with, so deleting a variable in place would not hide it.
- The pilot makes itself non-dumpable (prctl PR_SET_DUMPABLE 0): its /proc/PID/{environ,mem,fd} then belong to
  root, so a payload of the same uid (the ``plain`` runtime) can neither read nor trace it.
"""
from __future__ import annotations

import ctypes
import json
import logging
import os
import stat
import sys
from pathlib import Path

log = logging.getLogger("wms.pilot.credentials")
SECRET_VARIABLES = ("WMS_PILOT_TOKEN", "WMS_PILOT_AMQP_URL")
HANDOVER_VARIABLE = "WMS_PILOT_SECRETS_FD"
PR_SET_DUMPABLE = 4


class CredentialFileError(Exception):
    pass


def read_token_file(path: Path) -> str:
    """The token in ``path``: refused if others (or, for a file of another owner, anybody else) may read it."""
    try:
        st = path.stat()
        token = path.read_text().strip()
    except OSError as exc:
        raise CredentialFileError(f"cannot read the pilot's token file {path}: {exc}") from exc
    if st.st_mode & (stat.S_IRWXG | stat.S_IRWXO):
        raise CredentialFileError(f"the pilot's token file {path} is readable by others (mode "
                                  f"{stat.S_IMODE(st.st_mode):o}): chmod 600 it")
    if not token:
        raise CredentialFileError(f"the pilot's token file {path} is empty")
    return token


def scrub_environment(argv: list[str]) -> None:
    """If secrets came in the environment, re-execute this pilot without them (they follow through a pipe).
    Returns only when the environment holds none."""
    secrets = {name: os.environ[name] for name in SECRET_VARIABLES if name in os.environ}
    if not secrets:
        return
    read_end, write_end = os.pipe()
    payload = json.dumps(secrets).encode()
    if len(payload) > 60_000:  # a pipe holds 64 KiB: the write must not block with nobody reading yet
        raise CredentialFileError("pilot secrets too large to hand over")
    os.write(write_end, payload)
    os.close(write_end)
    os.set_inheritable(read_end, True)
    env = {k: v for k, v in os.environ.items() if k not in SECRET_VARIABLES}
    env[HANDOVER_VARIABLE] = str(read_end)
    os.execve(sys.executable, [sys.executable, *argv], env)


def take_handed_over_secrets() -> dict[str, str]:
    """The secrets a scrubbing re-execution handed over (and the pipe closed), or none."""
    fd = os.environ.pop(HANDOVER_VARIABLE, None)
    if fd is None:
        return {}
    with os.fdopen(int(fd), "rb") as f:
        secrets: dict[str, str] = json.loads(f.read())
    return secrets


def make_undumpable() -> bool:
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        return int(libc.prctl(PR_SET_DUMPABLE, 0, 0, 0, 0)) == 0
    except (OSError, AttributeError):
        log.warning("prctl(PR_SET_DUMPABLE) unavailable: a same-uid payload may read this pilot's /proc entries")
        return False

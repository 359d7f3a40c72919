"""The pilot daemon of a worker node: launches pilot applications one after another.

After a pilot that found no work it waits (backoff doubling up to a limit), after a crash it relaunches
(also with backoff), after a normal end at once. SIGTERM is passed on to the running pilot, which finishes or
fails its job cleanly; then the daemon exits.

A pilot application that dies without ending its session (killed, crashed) leaves the session in a file of the
daemon's own; the daemon then tells the job-executor that the pilot is lost, so the jobs it held are retried at
once instead of after the pilot's heartbeat timeout.
"""
from __future__ import annotations

import argparse
import asyncio
import json
import logging
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from common.jsonlog import configure_logging
from pilot import credentials
from pilot.channels import ChannelRefused, ChannelUnavailable
from pilot.channels.by_setting import channel_for
from pilot.config import PilotSettings
from pilot.exit_codes import EXIT_REFUSED, EXIT_RUNTIME

log = logging.getLogger("wms.pilot.daemon")
LOST_CALL_TRIES = 3
LOST_CALL_PAUSE_S = 2.0


def how_it_ended(code: int) -> str:
    return f"killed by signal {-code}" if code < 0 else f"exit status {code} without ending its session"


def say_lost(session_file: Path, code: int) -> bool:
    """If the pilot application that just ended left its session (it did not end it: killed, crashed), tell the
    job-executor it is lost. True if it was told."""
    try:
        left = json.loads(session_file.read_text())
        pilot_id, session = int(left["pilot_id"]), str(left["session"])
    except FileNotFoundError:
        return False  # ended cleanly
    except (OSError, ValueError, KeyError, TypeError) as exc:
        log.warning("the pilot's session file is unreadable", extra={"error": str(exc)})
        return False
    finally:
        session_file.unlink(missing_ok=True)
    settings = PilotSettings()
    if settings.token_file:
        settings = settings.model_copy(update={"token": credentials.read_token_file(Path(settings.token_file))})
    reason = how_it_ended(code)
    for attempt in range(1, LOST_CALL_TRIES + 1):
        try:
            asyncio.run(_say_lost(settings, pilot_id, session, reason))
            log.warning("pilot lost: told the job-executor", extra={"pilot_id": pilot_id, "reason": reason})
            return True
        except ChannelRefused as exc:
            log.warning("the job-executor refused the word that the pilot is lost", extra={
                "pilot_id": pilot_id, "status": exc.status, "detail": str(exc.detail)[:500]})
            return False
        except ChannelUnavailable as exc:
            log.warning("cannot tell the job-executor that the pilot is lost", extra={
                "pilot_id": pilot_id, "attempt": attempt, "error": str(exc)[:500]})
            time.sleep(LOST_CALL_PAUSE_S * attempt)
    return False  # its heartbeat timeout will tell


async def _say_lost(settings: PilotSettings, pilot_id: int, session: str, reason: str) -> None:
    channel = channel_for(settings)
    try:
        channel.resume(pilot_id, session)
        await channel.lost(reason)
    finally:
        await channel.close()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="wms-pilot-daemon", description=__doc__.split("\n")[0])
    parser.add_argument("--max-pilots", type=int, default=0, help="stop after this many launches (0: never)")
    parser.add_argument("--backoff", type=float, default=5.0, help="first wait after an idle or failed pilot (s)")
    parser.add_argument("--max-backoff", type=float, default=300.0)
    args = parser.parse_args(argv)
    configure_logging("pilot-daemon", os.environ.get("WMS_LOG_LEVEL", "INFO"))
    credentials.make_undumpable()  # a payload of the same uid (plain runtime) cannot read this daemon's environment

    stopping = False
    current: subprocess.Popen[bytes] | None = None

    def on_term(signum: int, _frame: object) -> None:
        nonlocal stopping
        stopping = True
        if current is not None and current.poll() is None:
            current.send_signal(signal.SIGTERM)

    signal.signal(signal.SIGTERM, on_term)
    signal.signal(signal.SIGINT, on_term)
    private = Path(tempfile.mkdtemp(prefix="wms-pilot-daemon-"))  # mode 700: the daemon's own
    session_file = private / "session.json"
    launches, backoff = 0, args.backoff
    try:
        while not stopping and (args.max_pilots == 0 or launches < args.max_pilots):
            launches += 1
            current = subprocess.Popen([sys.executable, "-m", "pilot.app"],
                                       env={**os.environ, "WMS_PILOT_SESSION_FILE": str(session_file)})
            code = current.wait()
            log.info("pilot ended", extra={"exit_code": code, "launch": launches})
            say_lost(session_file, code)
            if stopping:
                break
            if code == 0:
                backoff = args.backoff
                continue
            if code == EXIT_REFUSED:
                log.error("the job-executor refuses this node's pilot credential (unknown, revoked, or not allowed "
                          "for this node's resources): not relaunching; fix WMS_PILOT_TOKEN and restart the daemon")
                return EXIT_REFUSED
            if code == EXIT_RUNTIME:
                log.error("the payload runtime does not work on this node (see the pilot's log): not relaunching; "
                          "install bubblewrap, allow user namespaces, or set WMS_PILOT_RUNTIME=plain explicitly")
                return EXIT_RUNTIME
            # no work, or a crash: do not hammer the job-executor
            deadline = time.monotonic() + backoff
            while not stopping and time.monotonic() < deadline:
                time.sleep(0.2)
            backoff = min(backoff * 2, args.max_backoff)
        return 0
    finally:
        shutil.rmtree(private, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())

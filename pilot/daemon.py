"""The pilot daemon of a worker node: launches pilot applications one after another.

After a pilot that found no work it waits (backoff doubling up to a limit), after a crash it relaunches
(also with backoff), after a normal end at once. SIGTERM is passed on to the running pilot, which finishes or
fails its job cleanly; then the daemon exits.
"""
from __future__ import annotations

import argparse
import logging
import os
import signal
import subprocess
import sys
import time

from common.jsonlog import configure_logging
from pilot import credentials
from pilot.exit_codes import EXIT_REFUSED, EXIT_RUNTIME

log = logging.getLogger("wms.pilot.daemon")


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
    launches, backoff = 0, args.backoff
    while not stopping and (args.max_pilots == 0 or launches < args.max_pilots):
        launches += 1
        current = subprocess.Popen([sys.executable, "-m", "pilot.app"])
        code = current.wait()
        log.info("pilot ended", extra={"exit_code": code, "launch": launches})
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


if __name__ == "__main__":
    sys.exit(main())

"""The ``plain`` runtime: the payload as a subprocess of the pilot, as the pilot's own user, in its own session.

For a node where user namespaces and bubblewrap are not available; chosen explicitly (WMS_PILOT_RUNTIME=plain)
and logged as a warning at every pilot start. It contains nothing: the payload sees the node as the pilot does
and its process tree is found by an environment tag and /proc parentage (pilot/payload.py), which a hostile
payload can defeat. The pilot's credentials stay closed all the same: the token is read from a file and scrubbed
from the pilot's environment, and the pilot is not dumpable (pilot/credentials.py).
"""
from __future__ import annotations

from common.pilot_protocol import PayloadRuntimeName
from pilot.runtimes import Command, Launch, payload_view


class Plain:
    name: PayloadRuntimeName = "plain"
    contained = False

    def owner(self) -> tuple[int, int] | None:
        return None

    def command(self, launch: Launch, info_fd: int | None) -> Command:
        args, env, inputs = payload_view(launch, launch.workdir)
        return Command([launch.command, *args], env, launch.workdir, (), launch.workdir, inputs)

"""Payload runtimes: how the pilot starts a payload, one module per runtime (docs/security.md says what each
guarantees).

- ``sandbox`` (pilot/runtimes/sandbox.py, the default): bubblewrap, its own PID namespace and /proc, the host (or
  the task's image) read-only, the attempt's directory the only writable place, the payload an unprivileged user.
- ``plain`` (pilot/runtimes/plain.py): a subprocess as the pilot's own user, for a node without namespaces;
  chosen explicitly, and said loudly.

A runtime turns a ``Launch`` (what to run, where, what it may read) into a ``Command`` (argv, environment, working
directory and the paths the payload sees). pilot/payload.py runs it, measures it and kills it.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

from common.pilot_protocol import PayloadRuntimeName


@dataclass(frozen=True)
class Launch:
    command: str
    args: list[str]  # with {inputs}, {output_dir} and {job_id} still in them: paths differ inside a sandbox
    env: dict[str, str]
    workdir: Path  # the attempt's directory on the node (read-write for the payload); outputs/ inside it
    inputs: list[tuple[Path, str]]  # (file on the node, name under the payload's inputs/): read-only
    job_id: int
    image: Path | None = None  # an unpacked root filesystem to run in instead of the node's own
    network: bool = True


@dataclass
class Command:
    argv: list[str]
    env: dict[str, str]
    cwd: Path
    pass_fds: tuple[int, ...] = ()
    # the payload's view of its attempt: where it finds its inputs and writes its outputs
    workdir: Path = Path()
    inputs: list[Path] = field(default_factory=list)


class RuntimeUnavailable(Exception):
    """The runtime cannot run payloads on this node (said at pilot start, never per job)."""


class Runtime(Protocol):
    name: PayloadRuntimeName
    # True: killing the process the info fd names (the sandbox's PID 1) ends every process of the payload
    contained: bool

    def command(self, launch: Launch, info_fd: int | None) -> Command: ...

    def owner(self) -> tuple[int, int] | None:
        """The (uid, gid) that must own the attempt's directory for the payload to write there, if not ours."""
        ...


def expand_args(args: list[str], inputs: list[Path], output_dir: Path, job_id: int) -> list[str]:
    """``{inputs}`` as a whole argument becomes one argument per input file; ``{output_dir}`` and ``{job_id}``
    are replaced anywhere."""
    out: list[str] = []
    for arg in args:
        if arg == "{inputs}":
            out.extend(str(p) for p in inputs)
        else:
            out.append(arg.replace("{output_dir}", str(output_dir)).replace("{job_id}", str(job_id)))
    return out


def payload_view(launch: Launch, workdir: Path) -> tuple[list[str], dict[str, str], list[Path]]:
    """Arguments, environment and input paths as the payload sees them with its attempt directory at
    ``workdir``."""
    inputs = [workdir / "inputs" / name for _, name in launch.inputs]
    output_dir = workdir / "outputs"
    env = {**launch.env, "WMS_OUTPUT_DIR": str(output_dir), "WMS_WORKDIR": str(workdir)}
    return expand_args(launch.args, inputs, output_dir, launch.job_id), env, inputs

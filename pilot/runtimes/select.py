"""Choosing the pilot's runtime from its settings, and proving it on this node before any job is taken: a
sentinel payload (the pilot's own Python reading an input and writing an output) runs the way every job will;
if it fails, the pilot fails at start, not job after job."""
from __future__ import annotations

import asyncio
import os
import pwd
import secrets
import shutil
import sys
from pathlib import Path

import pilot
from pilot.cgroups import Cgroups
from pilot.config import PilotSettings
from pilot.runtimes import Launch, Runtime, RuntimeUnavailable
from pilot.runtimes.plain import Plain
from pilot.runtimes.sandbox import Sandbox, SandboxSettings

# The pilot's own package imported (read through the paths the payloads' software comes from), an input read, an
# output written: what every job does.
SENTINEL = ("import os, sys, pilot.runtimes; "
            "open(os.path.join(os.environ['WMS_OUTPUT_DIR'], 'sentinel'), 'w').write(open(sys.argv[1]).read())")
SENTINEL_TEXT = "the runtime works\n"


def payload_user(spec: str) -> tuple[int, int]:
    """``nobody`` or ``uid:gid``; root is refused."""
    if ":" in spec:
        uid, _, gid = spec.partition(":")
        ids = int(uid), int(gid)
    else:
        try:
            entry = pwd.getpwnam(spec)
        except KeyError as exc:
            raise RuntimeUnavailable(f"payload user {spec!r} does not exist on this node") from exc
        ids = entry.pw_uid, entry.pw_gid
    if 0 in ids:
        raise RuntimeUnavailable("the payload user may not be root")
    return ids


def software_paths(settings: PilotSettings) -> tuple[Path, ...]:
    """What payloads need read-only besides the system: the pilot's Python (its environment and the
    interpreter's installation), the project's source tree (an editable install), and the site's own."""
    here = Path(pilot.__file__).resolve().parents[1]
    paths = {Path(sys.prefix), Path(sys.base_prefix), Path(os.path.realpath(sys.executable)).parent.parent, here}
    paths.update(Path(p) for p in settings.sandbox_paths)
    return tuple(sorted(p for p in paths if p != Path("/")))


def make_runtime(settings: PilotSettings) -> Runtime:
    if settings.runtime == "plain":
        return Plain()
    return Sandbox(SandboxSettings(
        bwrap=settings.bwrap, pilot_root=Path(settings.workdir).resolve(), software=software_paths(settings),
        masked=(Path(settings.token_file).resolve(),) if settings.token_file else (),
        payload_user=payload_user(settings.payload_user) if os.geteuid() == 0 else None))


async def prove(runtime: Runtime, workdir: Path, cgroups: Cgroups) -> None:
    """Run the sentinel; RuntimeUnavailable says what went wrong."""
    from pilot.payload import Limits, run_payload  # the runner needs the runtime package: imported late

    # unique: pilots in containers share a work area and often a pid
    name = f"sentinel-{os.getpid()}-{secrets.token_hex(6)}"
    attempt = workdir / name
    private = workdir / ".pilot"
    (attempt / "outputs").mkdir(parents=True)
    private.mkdir(mode=0o700, exist_ok=True)
    source = private / f"{name}.in"
    log_path = private / f"{name}.log"
    source.write_text(SENTINEL_TEXT)
    (attempt / "inputs").mkdir()
    (attempt / "inputs" / "sentinel.in").symlink_to(source)  # as stage-in links an input (plain reads it there)
    owner = runtime.owner()
    if owner is not None:
        for path in (attempt, attempt / "outputs"):
            os.chown(path, *owner)
    try:
        result = await run_payload(runtime, Launch(sys.executable, ["-c", SENTINEL, "{inputs}"], {}, attempt,
                                                   [(source, "sentinel.in")], 0),
                                   log_path, Limits(60, 1 << 30, 1 << 20, 1 << 20),
                                   asyncio.Event(), cgroups)
        produced = attempt / "outputs" / "sentinel"
        if result.exit_code != 0 or not produced.is_file() or produced.read_text() != SENTINEL_TEXT:
            log_text = log_path.read_text(errors="replace")[-2000:]
            raise RuntimeUnavailable(f"the {runtime.name} runtime cannot run a payload on this node (exit "
                                     f"{result.exit_code}): {log_text.strip() or 'no output'}")
    except OSError as exc:
        raise RuntimeUnavailable(f"the {runtime.name} runtime cannot start a payload here: {exc}") from exc
    finally:
        shutil.rmtree(attempt, ignore_errors=True)
        source.unlink(missing_ok=True)
        log_path.unlink(missing_ok=True)

"""What a payload leaves behind: its output files, staged only if each is a regular file of its own within the
output volume limit, and its optional outputs.json of event counts, read the same careful way. Blocking: the
pilot runs these in a worker thread."""
from __future__ import annotations

import json
import os
from pathlib import Path

from common.pilot_protocol import JobSpec, StagedFile
from pilot.staging import Throttle, UnsafeFile, open_directory, open_regular, read_small, remove_staged, stage_out

MANIFEST_MAX_BYTES = 16 << 20
MB = 1 << 20


class ManifestError(Exception):
    pass


class OutputTooLarge(Exception):
    pass


def stage_outputs(job: JobSpec, workdir: Path, max_bytes: int, throttle: Throttle) -> list[StagedFile]:
    """Every entry of the output directory, each a regular file of one link, or the attempt fails
    (UnsafeFile, naming it) before anything is copied; their total within the output limit."""
    events = read_manifest(workdir)
    directory = open_directory(workdir / "outputs")
    try:
        opened: list[tuple[str, int]] = []
        try:
            total = 0
            for name in sorted(os.listdir(directory)):
                fd = open_regular(name, directory)
                opened.append((name, fd))
                total += os.fstat(fd).st_size
            if total > max_bytes:
                raise OutputTooLarge(f"outputs of {total // MB} MB, over {max_bytes // MB} MB")
        except BaseException:
            for _, fd in opened:
                os.close(fd)
            raise
        staged: list[StagedFile] = []
        for i, (name, fd) in enumerate(opened):
            try:
                lfn = f"{job.output_dataset}/{job.job_id}/{name}"
                staged.append(stage_out(fd, name, job.output_url_prefix, lfn, events.get(name), throttle))
            except BaseException:
                for _, rest in opened[i + 1:]:
                    os.close(rest)
                remove_staged(staged)
                raise
        return staged
    finally:
        os.close(directory)


def read_manifest(workdir: Path) -> dict[str, int]:
    """The payload's optional outputs.json in its work directory: ``{"<output file name>": {"events": n}, ...}``
    (read only if it is a regular file of its own, and not too large)."""
    try:
        data = _read_manifest_file(workdir)
    except FileNotFoundError:
        return {}
    except (OSError, UnsafeFile) as exc:
        raise ManifestError(f"outputs.json: {exc}") from exc
    try:
        manifest = json.loads(data)
        if not isinstance(manifest, dict):
            raise ValueError("not a JSON object")
        events: dict[str, int] = {}
        for name, entry in manifest.items():
            if not isinstance(entry, dict):
                raise ValueError(f"entry {name!r} is not an object")
            if "events" in entry:
                value = entry["events"]
                if isinstance(value, bool) or not isinstance(value, int) or value < 0:
                    raise ValueError(f"entry {name!r}: events must be a non-negative integer")
                events[name] = value
        return events
    except ValueError as exc:
        raise ManifestError(f"malformed outputs.json: {exc}") from exc


def _read_manifest_file(workdir: Path) -> bytes:
    directory = os.open(workdir, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC)
    try:
        return read_small("outputs.json", directory, MANIFEST_MAX_BYTES)
    finally:
        os.close(directory)

"""``wms dsm``: datasets in the DSM without curl: create one, register the files of a directory (size, adler32,
events), close it, list datasets and files. Talks to the DSM (WMS_CLI_DSM_URL) with WMS_CLI_DSM_TOKEN: writing
takes the service role, as a site's data acquisition would have.

A file's catalogue entry: ``lfn`` = the prefix + its path relative to the directory (``raw/slice-000001.jsonl``),
``url`` = ``file://`` + its absolute path (the path pilots see on shared storage), ``size`` in bytes, ``adler32``
as 8 lowercase hex digits (zlib's adler32 of the whole file, starting value 1), ``events`` from the payload
convention: an ``outputs.json`` in the directory ({"<file name>": {"events": N}}), or with ``--count-lines``
the file's non-empty lines (one event per JSON line, as the SPD example writes them).
"""
from __future__ import annotations

import asyncio
import json
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Annotated, Any, TypeVar

import aiohttp
import typer
from pydantic import ValidationError

from common.checksums import adler32_of
from common.dsm import Dataset, DsmClient, DsmError, DsmFile
from tools.cli import render
from tools.cli.client import EXIT_UNREACHABLE, CliError, CliSettings, say_waiting

EXIT_USAGE = 2
BATCH = 5000
MANIFEST = "outputs.json"
T = TypeVar("T")

dsm = typer.Typer(help="Datasets in the DSM: create, register a directory's files, close, list.",
                  short_help="Datasets in the DSM.", no_args_is_help=True, rich_markup_mode=None)
Name = Annotated[str, typer.Argument(help="dataset name, dot-separated words (e.g. spd.raw.run42)")]


class Output:
    json = False


output = Output()


def _run(call: Callable[[DsmClient], Awaitable[T]]) -> T:
    settings = CliSettings()

    async def go() -> T:
        client = DsmClient(settings.dsm_url, settings.dsm_token, settings.timeout_s, settings.retry_s,
                           say_waiting)
        try:
            return await call(client)
        except DsmError as exc:
            if exc.status == 0:
                raise CliError(f"cannot reach the DSM at {settings.dsm_url}: {exc} (set WMS_CLI_DSM_URL)",
                               EXIT_UNREACHABLE) from exc
            raise CliError(f"DSM: HTTP {exc.status}: {exc.detail}") from exc
        except aiohttp.ClientError as exc:
            raise CliError(f"cannot reach the DSM at {settings.dsm_url}: {exc} (set WMS_CLI_DSM_URL)",
                           EXIT_UNREACHABLE) from exc
        finally:
            await client.close()

    return asyncio.run(go())


def _show(value: Any, human: Callable[[Any], None]) -> None:
    if output.json:
        render.as_json(value)
    else:
        human(value)


def _show_dataset(dataset: Dataset) -> None:
    _show(dataset.model_dump(), lambda d: render.console.print(
        f"dataset {d['name']}: {d['status']}, {d['n_files']} files", markup=False, highlight=False, soft_wrap=True))


def catalogue_entries(directory: Path, prefix: str, pattern: str, count_lines: bool) -> list[DsmFile]:
    """The entries of the regular files under ``directory`` matching ``pattern`` (the manifest excluded)."""
    if not directory.is_dir():
        raise CliError(f"{directory} is not a directory", EXIT_USAGE)
    manifest: dict[str, Any] = {}
    if (directory / MANIFEST).is_file():
        try:
            manifest = json.loads((directory / MANIFEST).read_text())
        except ValueError as exc:
            raise CliError(f"{directory / MANIFEST} is not JSON: {exc}", EXIT_USAGE) from exc
    entries = []
    for path in sorted(p for p in directory.glob(pattern) if p.is_file() and p.name != MANIFEST):
        relative = path.relative_to(directory).as_posix()
        events = (manifest.get(path.name) or {}).get("events") if isinstance(manifest, dict) else None
        if events is None and count_lines:
            with path.open("rb") as f:
                events = sum(1 for line in f if line.strip())
        try:
            entries.append(DsmFile(lfn=f"{prefix}{relative}", url=f"file://{path.resolve()}",
                                   size=path.stat().st_size, adler32=adler32_of(path), events=events))
        except ValidationError as exc:
            reason = "; ".join(f"{'.'.join(map(str, e['loc']))}: {e['msg']}" for e in exc.errors())
            raise CliError(f"{path}: cannot be registered ({reason})", EXIT_USAGE) from exc
        except OSError as exc:
            raise CliError(f"cannot read {path}: {exc.strerror}", EXIT_USAGE) from exc
    if not entries:
        raise CliError(f"no file in {directory} matches {pattern!r}", EXIT_USAGE)
    return entries


@dsm.command("create", short_help="Create an open dataset.")
def create(name: Name) -> None:
    """Create an open dataset (creating an existing one changes nothing)."""
    _show_dataset(_run(lambda c: c.create_dataset(name)))


@dsm.command("register")
def register(
    name: Name,
    directory: Annotated[Path, typer.Argument(help="directory of the files (on the storage pilots see)")],
    prefix: Annotated[str, typer.Option(help="lfn prefix, e.g. raw/ (lfn = prefix + relative path)")] = "",
    pattern: Annotated[str, typer.Option("--glob", help="which files, e.g. '*.jsonl' or '**/*' for a tree")] = "*",
    count_lines: Annotated[bool, typer.Option("--count-lines", help="events = non-empty lines (JSON lines)")] = False,
    close: Annotated[bool, typer.Option("--close", help="then close the dataset (no more files)")] = False,
) -> None:
    """Register the files of a directory: size, adler32, events. Registering the same files again is a no-op."""
    entries = catalogue_entries(directory, prefix, pattern, count_lines)

    async def go(client: DsmClient) -> dict[str, Any]:
        added = 0
        for i in range(0, len(entries), BATCH):
            added += (await client.register_files(name, entries[i:i + BATCH])).registered
        dataset = await (client.close_dataset(name) if close else client.dataset(name))
        return {"files": len(entries), "registered": added, "dataset": dataset.model_dump() if dataset else None}

    result = _run(go)
    _show(result, lambda r: render.console.print(
        f"{r['files']} files of {directory} in {name} ({r['registered']} new); dataset "
        f"{r['dataset']['status']}, {r['dataset']['n_files']} files", markup=False, highlight=False, soft_wrap=True))


@dsm.command("close", short_help="Close a dataset: its file list is final.")
def close_dataset(name: Name) -> None:
    """Close a dataset: its file list is final (tasks reading it can end)."""
    _show_dataset(_run(lambda c: c.close_dataset(name)))


@dsm.command("ls")
def list_datasets(
    name: Annotated[str | None, typer.Argument(help="a dataset: list its files")] = None,
    prefix: Annotated[str, typer.Option(help="datasets whose name starts with this")] = "",
    limit: Annotated[int, typer.Option(min=1, max=1000)] = 100,
) -> None:
    """Datasets (name order), or the files of one dataset."""
    if name is None:
        found = _run(lambda c: c.list_datasets(prefix, None, limit))
        _show([d.model_dump() for d in found.items], lambda items: render.table(
            "Datasets", ["name", "state", "files"], [[d["name"], d["status"], d["n_files"]] for d in items],
            wrap=("name",)))
        return
    page = _run(lambda c: c.list_files(name, 0, limit))

    def blocks(p: dict[str, Any]) -> None:
        render.console.print(f"{name}: {p['status']}, {p['n_files']} files", highlight=False, markup=False)
        render.file_blocks(p["items"])
        if p["n_files"] > len(p["items"]):
            render.console.print(f"(the first {len(p['items'])}: --limit shows more)", highlight=False)
    _show(page.model_dump(), blocks)

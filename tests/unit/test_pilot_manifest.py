"""The payload's outputs.json: read when well formed, a clear ManifestError (job failed, pilot goes on) when not,
and never through a link or from a FIFO (a hostile payload's ways to make the pilot read or hang on another file)."""
from __future__ import annotations

import os
from pathlib import Path

import pytest

from pilot.outputs import ManifestError, read_manifest


def test_missing_manifest_means_no_event_counts(tmp_path: Path) -> None:
    assert read_manifest(tmp_path) == {}


def test_well_formed_manifest(tmp_path: Path) -> None:
    (tmp_path / "outputs.json").write_text('{"a.out": {"events": 3}, "b.out": {}}')
    assert read_manifest(tmp_path) == {"a.out": 3}


@pytest.mark.parametrize("text", [
    "{not json", "[1, 2]", '{"a.out": 3}', '{"a.out": {"events": "many"}}', '{"a.out": {"events": -1}}',
    '{"a.out": {"events": true}}', "\udcff",
])
def test_malformed_manifest_is_a_manifest_error(tmp_path: Path, text: str) -> None:
    (tmp_path / "outputs.json").write_bytes(text.encode(errors="surrogateescape"))
    with pytest.raises(ManifestError, match="malformed outputs.json"):
        read_manifest(tmp_path)


def test_a_manifest_that_links_elsewhere_is_refused(tmp_path: Path) -> None:
    elsewhere = tmp_path / "secret.json"
    elsewhere.write_text('{"a.out": {"events": 1}}')
    work = tmp_path / "work"
    work.mkdir()
    (work / "outputs.json").symlink_to(elsewhere)
    with pytest.raises(ManifestError, match="symbolic link"):
        read_manifest(work)
    (work / "outputs.json").unlink()
    os.link(elsewhere, work / "outputs.json")
    with pytest.raises(ManifestError, match="hard link"):
        read_manifest(work)


def test_a_fifo_manifest_is_refused_without_hanging(tmp_path: Path) -> None:
    os.mkfifo(tmp_path / "outputs.json")
    with pytest.raises(ManifestError, match="FIFO"):
        read_manifest(tmp_path)

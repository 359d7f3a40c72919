"""The payload's outputs.json: read when well formed, a clear ManifestError (job failed, pilot goes on) when not."""
from __future__ import annotations

from pathlib import Path

import pytest

from pilot.app import ManifestError, read_manifest


def test_missing_manifest_means_no_event_counts(tmp_path: Path) -> None:
    assert read_manifest(tmp_path / "outputs.json") == {}


def test_well_formed_manifest(tmp_path: Path) -> None:
    path = tmp_path / "outputs.json"
    path.write_text('{"a.out": {"events": 3}, "b.out": {}}')
    assert read_manifest(path) == {"a.out": 3}


@pytest.mark.parametrize("text", [
    "{not json", "[1, 2]", '{"a.out": 3}', '{"a.out": {"events": "many"}}', '{"a.out": {"events": -1}}',
    '{"a.out": {"events": true}}', "\udcff",
])
def test_malformed_manifest_is_a_manifest_error(tmp_path: Path, text: str) -> None:
    path = tmp_path / "outputs.json"
    path.write_bytes(text.encode(errors="surrogateescape"))
    with pytest.raises(ManifestError, match="malformed outputs.json"):
        read_manifest(path)

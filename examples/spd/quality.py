"""Online data-quality monitoring: histograms of the filter's output, one JSON file per job.

Reads hot-event files (JSON lines, as spd-filter writes them: each kept event carries ``slice_events``, how many
events its time slice had) and writes ``quality-<job>.json`` with the histograms a shifter looks at: hot events
per time slice (the rate the filter lets through), hit multiplicity, energy, and the filter's keep fraction per
slice. A slice with no hot event leaves an empty file and no keep fraction (the filter kept nothing to carry it).
"""
from __future__ import annotations

import json
import os
import sys
from pathlib import Path
from typing import Any


def histogram(name: str, title: str, x_label: str, values: list[float], low: float, high: float,
              bins: int) -> dict[str, Any]:
    """Fixed-bin histogram; values outside [low, high) go to the first or last bin (under/overflow folded in)."""
    width = (high - low) / bins
    counts = [0] * bins
    for v in values:
        counts[min(bins - 1, max(0, int((v - low) // width)))] += 1
    edges = [round(low + i * width, 6) for i in range(bins + 1)]
    return {"name": name, "title": title, "x_label": x_label, "edges": edges, "counts": counts,
            "entries": len(values)}


def quality_of(files: dict[str, list[dict[str, Any]]]) -> dict[str, Any]:
    """The histograms of some hot-event files ({file name: its events})."""
    per_slice = {name: len(events) for name, events in files.items()}
    events = [e for evs in files.values() for e in evs]
    fractions = [len(evs) / evs[0]["slice_events"] for evs in files.values()
                 if evs and evs[0].get("slice_events")]
    seen = sum(evs[0].get("slice_events", 0) for evs in files.values() if evs)
    return {
        "files": len(files),
        "events_in": seen,
        "events_kept": len(events),
        "histograms": [
            histogram("hot_per_slice", "hot events per time slice", "events", list(per_slice.values()), 0, 20, 20),
            histogram("hit_multiplicity", "hits per hot event", "hits", [e["nhits"] for e in events], 0, 80, 16),
            histogram("energy", "energy of hot events", "ADC sum", [e["energy"] for e in events], 0, 200_000, 20),
            histogram("keep_fraction", "filter keep fraction per slice", "kept / seen", fractions, 0, 1, 10),
        ],
    }


def main(argv: list[str]) -> None:
    run, paths = (argv[1], argv[2:]) if argv[:1] == ["--run"] and len(argv) > 1 else ("", argv)
    out_dir = Path(os.environ["WMS_OUTPUT_DIR"])
    files = {Path(p).name: [json.loads(line) for line in Path(p).read_text().splitlines() if line] for p in paths}
    report = quality_of(files)
    report["run"] = run
    report["inputs"] = sorted(files)
    target = out_dir / f"quality-{os.environ.get('WMS_JOB_ID', '0')}.json"
    target.write_text(json.dumps(report))
    Path(os.environ.get("WMS_WORKDIR", ".")).joinpath("outputs.json").write_text(
        json.dumps({target.name: {"events": report["events_kept"]}}))
    print(f"quality of {len(files)} files: {report['events_kept']} hot events of {report['events_in']}")


def cli() -> None:
    """Console script (spd-quality): [--run NAME] then the input paths."""
    main(sys.argv[1:])


if __name__ == "__main__":
    cli()

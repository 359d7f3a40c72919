"""Unscramble time slices into events: hits closer than GAP_NS in time belong to one event."""
from __future__ import annotations

import json
import os
import sys
from pathlib import Path
from typing import Any

GAP_NS = 50.0


def events_of(hits: list[dict[str, Any]], slice_name: str) -> list[dict[str, Any]]:
    events: list[list[dict[str, Any]]] = []
    for hit in sorted(hits, key=lambda h: h["t"]):
        if events and hit["t"] - events[-1][-1]["t"] <= GAP_NS:
            events[-1].append(hit)
        else:
            events.append([hit])
    return [
        {"id": f"{slice_name}:{i}", "t0": group[0]["t"], "nhits": len(group),
         "energy": sum(h["adc"] for h in group), "channels": sorted({h["ch"] for h in group})}
        for i, group in enumerate(events)
    ]


def main(paths: list[str]) -> None:
    out_dir = Path(os.environ["WMS_OUTPUT_DIR"])
    manifest = {}
    for path in map(Path, paths):
        hits = [json.loads(line) for line in path.read_text().splitlines() if line]
        name = path.name.split(".")[0]
        events = events_of(hits, name)
        target = out_dir / f"{name}.events.jsonl"
        target.write_text("".join(json.dumps(e) + "\n" for e in events))
        manifest[target.name] = {"events": len(events)}
    Path(os.environ.get("WMS_WORKDIR", ".")).joinpath("outputs.json").write_text(json.dumps(manifest))
    print(f"unscrambled {len(paths)} slices into {sum(m['events'] for m in manifest.values())} events")


def cli() -> None:
    """Console script (spd-unscramble): input paths as arguments."""
    main(sys.argv[1:])


if __name__ == "__main__":
    cli()

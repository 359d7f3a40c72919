"""Keep 'hot' events: total energy above ENERGY_MIN with at least CHANNELS_MIN channels hit."""
from __future__ import annotations

import json
import os
import sys
from pathlib import Path
from typing import Any

ENERGY_MIN = int(os.environ.get("SPD_ENERGY_MIN", "20000"))
CHANNELS_MIN = int(os.environ.get("SPD_CHANNELS_MIN", "15"))


def is_hot(event: dict[str, Any]) -> bool:
    return event["energy"] >= ENERGY_MIN and len(event["channels"]) >= CHANNELS_MIN


def main(paths: list[str]) -> None:
    out_dir = Path(os.environ["WMS_OUTPUT_DIR"])
    manifest, seen, kept = {}, 0, 0
    for path in map(Path, paths):
        events = [json.loads(line) for line in path.read_text().splitlines() if line]
        # each kept event says how many its slice had, so the quality stage can tell the keep fraction
        hot = [{**e, "slice_events": len(events)} for e in events if is_hot(e)]
        seen, kept = seen + len(events), kept + len(hot)
        target = out_dir / path.name.replace(".events.", ".hot.")
        target.write_text("".join(json.dumps(e) + "\n" for e in hot))
        manifest[target.name] = {"events": len(hot)}
    Path(os.environ.get("WMS_WORKDIR", ".")).joinpath("outputs.json").write_text(json.dumps(manifest))
    print(f"filtered {seen} events, kept {kept} hot ones")


def cli() -> None:
    """Console script (spd-filter): input paths as arguments."""
    main(sys.argv[1:])


if __name__ == "__main__":
    cli()

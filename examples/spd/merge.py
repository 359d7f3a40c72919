"""Merge event files (JSON lines) into one file named after the job."""
from __future__ import annotations

import json
import os
import sys
from pathlib import Path


def main(paths: list[str]) -> None:
    out_dir = Path(os.environ["WMS_OUTPUT_DIR"])
    target = out_dir / f"merged-{os.environ.get('WMS_JOB_ID', '0')}.jsonl"
    n = 0
    with target.open("w") as out:
        for path in map(Path, paths):
            for line in path.read_text().splitlines():
                if line:
                    out.write(line + "\n")
                    n += 1
    Path(os.environ.get("WMS_WORKDIR", ".")).joinpath("outputs.json").write_text(
        json.dumps({target.name: {"events": n}}))
    print(f"merged {len(paths)} files, {n} events")


def cli() -> None:
    """Console script (spd-merge): input paths as arguments."""
    main(sys.argv[1:])


if __name__ == "__main__":
    cli()

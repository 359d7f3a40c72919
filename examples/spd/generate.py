"""Generate synthetic SPD raw data: time slices of detector hits.

Collisions happen at random times; each leaves a burst of hits (channel, ADC amplitude) within a few ns.
The hit stream is cut into slices of fixed duration, one file per slice (JSON lines, one hit per line).
"""
from __future__ import annotations

import argparse
import json
import random
import zlib
from pathlib import Path
from typing import Any

SLICE_NS = 100_000
CHANNELS = 500_000


def generate_slice(index: int, seed: int, mean_events: int = 20) -> list[dict[str, Any]]:
    rng = random.Random(seed * 1_000_003 + index)
    hits = []
    t = index * SLICE_NS
    for _ in range(mean_events):
        t0 = t + rng.uniform(0, SLICE_NS)
        hot = rng.random() < 0.2  # a fifth of the collisions are interesting
        for _ in range(rng.randint(20, 60) if hot else rng.randint(3, 15)):
            hit_t = t0 + rng.uniform(0, 30)
            if hit_t >= t + SLICE_NS:
                continue  # belongs to the next slice: this event stays partial here
            hits.append({"t": round(hit_t, 3), "ch": rng.randrange(CHANNELS),
                         "adc": rng.randint(200, 4000) if hot else rng.randint(5, 300)})
    hits.sort(key=lambda h: h["t"])
    return hits


def write_slices(directory: Path, n: int, seed: int = 1, start: int = 0) -> list[dict[str, Any]]:
    """Write slices ``start .. start+n-1``; returns their catalogue entries (lfn, url, size, adler32, events)."""
    directory.mkdir(parents=True, exist_ok=True)
    entries = []
    for index in range(start, start + n):
        path = directory / f"slice-{index:06d}.raw.jsonl"
        data = "".join(json.dumps(h) + "\n" for h in generate_slice(index, seed)).encode()
        path.write_bytes(data)
        entries.append({"lfn": f"raw/{path.name}", "url": f"file://{path}", "size": len(data),
                        "adler32": f"{zlib.adler32(data) & 0xFFFFFFFF:08x}", "events": None})
    return entries


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("directory", type=Path)
    parser.add_argument("--slices", type=int, default=10)
    parser.add_argument("--seed", type=int, default=1)
    args = parser.parse_args()
    for entry in write_slices(args.directory, args.slices, args.seed):
        print(json.dumps(entry))


if __name__ == "__main__":
    main()

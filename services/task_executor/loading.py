"""Controlled loading (pure): how many generated-but-undispatched jobs each resource type may have.

The bound follows the live pilot capacity: ``per_pilot`` waiting jobs for each live pilot that can run the type
(GPU pilots fall back to CPU work, so they count for both), never below ``floor`` so work is ready when pilots
arrive. A 1M-file task therefore becomes jobs at the pace the cluster takes them, not 1M queued jobs.
"""
from __future__ import annotations

from collections.abc import Mapping

RESOURCE_TYPES = ("cpu", "gpu")


def backlog_bounds(live_pilots: Mapping[str, int], floor: int, per_pilot: int) -> dict[str, int]:
    slots = {"cpu": live_pilots.get("cpu", 0) + live_pilots.get("gpu", 0), "gpu": live_pilots.get("gpu", 0)}
    return {rt: max(floor, per_pilot * slots[rt]) for rt in RESOURCE_TYPES}


def headroom(bounds: Mapping[str, int], backlog: Mapping[str, int]) -> dict[str, int]:
    return {rt: max(bounds[rt] - backlog.get(rt, 0), 0) for rt in RESOURCE_TYPES}

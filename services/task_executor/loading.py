"""Controlled loading (pure): how many generated-but-undispatched jobs each resource type may have.

The bound follows the live pilot capacity: ``per_pilot`` waiting jobs for each live pilot that can run the type
(GPU pilots fall back to CPU work, so they count for both), never below ``floor`` so work is ready when pilots
arrive. A 1M-file task therefore becomes jobs at the pace the cluster takes them, not 1M queued jobs.
"""
from __future__ import annotations

from collections.abc import Mapping

from common.policies import RESOURCE_TYPES, pilot_types_serving


def backlog_bounds(live_pilots: Mapping[str, int], floor: int, per_pilot: int) -> dict[str, int]:
    slots = {rt: sum(live_pilots.get(p, 0) for p in pilot_types_serving(rt)) for rt in RESOURCE_TYPES}
    return {rt: max(floor, per_pilot * slots[rt]) for rt in RESOURCE_TYPES}


def headroom(bounds: Mapping[str, int], backlog: Mapping[str, int]) -> dict[str, int]:
    return {rt: max(bounds[rt] - backlog.get(rt, 0), 0) for rt in RESOURCE_TYPES}

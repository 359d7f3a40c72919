"""Controlled loading (pure): how many generated-but-undispatched jobs each resource type may have.

The bound follows the live pilot capacity: ``per_slot`` waiting jobs for each job slot of the live pilots that can
run the type (GPU pilots fall back to CPU work, so their slots count for both), never below ``floor`` so work is
ready when pilots arrive. Per slot, not per pilot: an 8-slot pilot takes 8 jobs an exchange, and a bound of a
couple of jobs per pilot left its slots waiting for the next chunk (docs/benchmarks.md). A 1M-file task therefore
becomes jobs at the pace the cluster takes them, not 1M queued jobs.
"""
from __future__ import annotations

from collections.abc import Mapping

from common.policies import RESOURCE_TYPES, pilot_types_serving


def backlog_bounds(live_slots: Mapping[str, int], floor: int, per_slot: int) -> dict[str, int]:
    """``live_slots``: job slots of the live pilots by the pilots' resource type."""
    slots = {rt: sum(live_slots.get(p, 0) for p in pilot_types_serving(rt)) for rt in RESOURCE_TYPES}
    return {rt: max(floor, per_slot * slots[rt]) for rt in RESOURCE_TYPES}


def headroom(bounds: Mapping[str, int], backlog: Mapping[str, int]) -> dict[str, int]:
    return {rt: max(bounds[rt] - backlog.get(rt, 0), 0) for rt in RESOURCE_TYPES}

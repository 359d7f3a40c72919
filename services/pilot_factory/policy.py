"""How many pilots to submit to a queue, and whether to withdraw its queued ones (pure)."""
from __future__ import annotations

import dataclasses
import math

from services.pilot_factory.queues import SiteQueue


@dataclasses.dataclass(frozen=True)
class QueueState:
    backlog: int  # ready jobs of the queue's resource type that its pilots can run (cores, memory)
    queued: int  # its pilots waiting in the batch system (or about to be submitted)
    running: int  # its pilots whose batch job runs


@dataclasses.dataclass(frozen=True)
class Decision:
    submit: int
    withdraw_queued: bool


def decide(queue: SiteQueue, state: QueueState) -> Decision:
    """Submit enough pilots for the ready backlog that the queued ones will not cover (each pilot takes up to its
    slots), within max_queued, max_running (running and queued together) and the per-cycle rate; with no backlog,
    submit nothing and withdraw the queued pilots. Running pilots are never withdrawn: they end by their idle
    limit, so a backlog that comes back a moment later finds them."""
    if state.backlog <= 0:
        return Decision(submit=0, withdraw_queued=state.queued > 0)
    wanted = math.ceil(state.backlog / queue.pilot_slots) - state.queued
    room = min(queue.max_queued - state.queued, queue.max_running - state.running - state.queued,
               queue.max_submit_per_cycle)
    return Decision(submit=max(0, min(wanted, room)), withdraw_queued=False)

"""A pilot's room on its node: the jobs it runs at once, within its slots, cores, memory and GPUs.

A pilot may hold more jobs than it runs (prefetch, the job-executor's setting for its queue): the others wait here,
in the order they came, until a running one ends and the next fits. The job-executor counts a waiting job as
dispatched, not running: its wall time starts when it starts.
"""
from __future__ import annotations

import asyncio
import dataclasses

from common.pilot_protocol import JobSpec

RECHECK_S = 0.5  # a waiting job also looks again this often (an abort order does not notify the room)


@dataclasses.dataclass
class NodeRoom:
    slots: int
    cores: int
    memory_mb: int
    gpus: int
    running: int = 0
    cores_used: int = 0
    memory_used: int = 0
    gpus_used: int = 0

    def _memory_of(self, job: JobSpec) -> int:
        return min(job.memory_mb, self.memory_mb)  # never more than the pilot has (run_job caps it so)

    def fits(self, job: JobSpec) -> bool:
        """Whether ``job`` may start now. With nothing running anything may (one job larger than the node is the
        job-executor's to refuse, never a reason to wait forever)."""
        if self.running == 0:
            return True
        return (self.running < self.slots and self.cores_used + job.cores <= self.cores
                and self.memory_used + self._memory_of(job) <= self.memory_mb
                and self.gpus_used + job.gpus <= self.gpus)

    def take(self, job: JobSpec) -> None:
        self.running += 1
        self.cores_used += job.cores
        self.memory_used += self._memory_of(job)
        self.gpus_used += job.gpus

    def give(self, job: JobSpec) -> None:
        self.running -= 1
        self.cores_used -= job.cores
        self.memory_used -= self._memory_of(job)
        self.gpus_used -= job.gpus


class Slots:
    """Jobs start in the order they came, each when it fits the room left."""

    def __init__(self, room: NodeRoom) -> None:
        self.room = room
        self._changed = asyncio.Condition()
        self._queue: list[int] = []  # job ids waiting, first come first

    async def take(self, job: JobSpec, give_up: asyncio.Event) -> bool:
        """Wait until ``job`` is first in line and fits, then take its room: True. False if ``give_up`` was set
        first (the job was aborted while it waited)."""
        self._queue.append(job.job_id)
        try:
            async with self._changed:
                while not give_up.is_set():
                    if self._queue[0] == job.job_id and self.room.fits(job):
                        self.room.take(job)
                        return True
                    try:
                        await asyncio.wait_for(self._changed.wait(), RECHECK_S)
                    except TimeoutError:
                        pass
                return False
        finally:
            self._queue.remove(job.job_id)
            await self._notify()

    async def give(self, job: JobSpec) -> None:
        self.room.give(job)
        await self._notify()

    async def _notify(self) -> None:
        async with self._changed:
            self._changed.notify_all()

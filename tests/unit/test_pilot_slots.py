"""A pilot's room on its node (pilot/slots.py): prefetched jobs wait, in order, until they fit."""
from __future__ import annotations

import asyncio

from common.pilot_protocol import JobSpec
from pilot.slots import NodeRoom, Slots


def spec(job_id: int, cores: int = 1, memory_mb: int = 1000, gpus: int = 0) -> JobSpec:
    return JobSpec(job_id=job_id, attempt=1, task_id=1, command="true", args=[], env={}, container_image=None,
                   memory_mb=memory_mb, cores=cores, gpus=gpus, inputs=[], output_dataset="o", log_dataset="o.log",
                   output_url_prefix="file:///o/", wall_time_s=60)


def test_a_job_fits_within_slots_cores_memory_and_gpus() -> None:
    room = NodeRoom(slots=2, cores=4, memory_mb=4000, gpus=1)
    assert room.fits(spec(1, cores=8))  # nothing runs: anything may start (the job-executor sized it)
    room.take(spec(1, cores=3, gpus=1))
    assert not room.fits(spec(2, cores=2))  # 3 + 2 cores > 4
    assert not room.fits(spec(2, gpus=1))  # the one GPU is taken
    assert not room.fits(spec(2, memory_mb=3500))
    assert room.fits(spec(2, cores=1, memory_mb=2000))
    room.take(spec(2))
    assert not room.fits(spec(3, cores=0 + 1, memory_mb=1))  # both slots taken
    room.give(spec(1, cores=3, gpus=1))
    assert (room.running, room.cores_used, room.gpus_used) == (1, 1, 0)


async def test_waiting_jobs_start_in_the_order_they_came_as_room_frees() -> None:
    slots = Slots(NodeRoom(slots=1, cores=4, memory_mb=4000, gpus=0))
    never = asyncio.Event()
    started: list[int] = []

    async def run(job: JobSpec, hold: asyncio.Event) -> None:
        assert await slots.take(job, never)
        started.append(job.job_id)
        await hold.wait()
        await slots.give(job)

    holds = {i: asyncio.Event() for i in (1, 2, 3)}
    tasks = [asyncio.create_task(run(spec(i), holds[i])) for i in (1, 2, 3)]
    await asyncio.sleep(0.05)
    assert started == [1]  # one slot: the others wait
    holds[1].set()
    await asyncio.sleep(0.05)
    assert started == [1, 2]
    holds[2].set()
    holds[3].set()
    await asyncio.gather(*tasks)
    assert started == [1, 2, 3]


async def test_a_job_aborted_while_waiting_never_takes_room_and_lets_the_next_go() -> None:
    slots = Slots(NodeRoom(slots=1, cores=4, memory_mb=4000, gpus=0))
    never, abort = asyncio.Event(), asyncio.Event()
    assert await slots.take(spec(1), never)
    aborted = asyncio.create_task(slots.take(spec(2), abort))
    after = asyncio.create_task(slots.take(spec(3), never))
    await asyncio.sleep(0.05)
    abort.set()
    assert await asyncio.wait_for(aborted, 2) is False
    await slots.give(spec(1))
    assert await asyncio.wait_for(after, 2) is True  # 3 was behind 2 in line: 2's abort does not block it
    assert slots.room.running == 1

"""The pilot factory without a batch cluster: one leader among several factories, and the local batch system
(pilots as processes of this machine)."""
from __future__ import annotations

import asyncio
import os
import stat

from services.pilot_factory.batch import BatchState, PilotJob, load
from services.pilot_factory.factory import Factory
from services.pilot_factory.settings import FactorySettings


async def test_one_factory_leads_and_another_takes_over_when_it_goes(settings, db) -> None:
    factory_settings = FactorySettings(**settings.model_dump())
    first, second = (Factory(db, factory_settings, [], {}) for _ in range(2))
    try:
        await first.run_once()
        await second.run_once()
        assert (first.leading, second.leading) == (True, False)
        await first.run_once()  # still leading: its connection, and so its lock, lives
        assert first.leading
        await first.close()  # a factory that stops (or dies: its connection closes) frees the lock
        await second.run_once()
        assert second.leading
    finally:
        await first.close()
        await second.close()


async def test_the_local_batch_system_runs_pilots_as_processes_and_reports_how_they_ended(settings, tmp_path) -> None:
    pilot = tmp_path / "fake-pilot"
    pilot.write_text('#!/bin/sh\necho "$WMS_PILOT_SLOTS slots, batch $WMS_PILOT_BATCH_SYSTEM"\nexit 3\n')
    pilot.chmod(pilot.stat().st_mode | stat.S_IXUSR)
    system = load("local", FactorySettings(**settings.model_dump(), factory_pilot_command=str(pilot)))
    job_id = await system.submit(PilotJob(name="wms-x-pilot-local-1", cores=2, memory_mb=100, gpus=0,
                                          env={"WMS_PILOT_SLOTS": "2"}, log_dir=str(tmp_path / "logs"), options={}))
    assert job_id.isdigit()
    for _ in range(100):
        jobs = await system.jobs("wms-x-pilot-")
        if jobs and jobs[0].state == BatchState.ENDED:
            break
        await asyncio.sleep(0.05)
    assert [(j.job_id, j.state, j.detail) for j in jobs] == [(job_id, BatchState.ENDED, "exit 3")]
    assert (tmp_path / "logs" / "wms-x-pilot-local-1.log").read_text() == "2 slots, batch local\n"
    assert await system.jobs("wms-other-") == []
    assert os.path.exists(tmp_path / "logs")

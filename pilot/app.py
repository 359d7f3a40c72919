"""The pilot application: register, then take and run jobs one after another until its lifetime or idle limit.

Each job: stage in, report running, run the payload (own work directory, environment, wall time, log file)
while heartbeating, stage out, report the outcome. A heartbeat answer (or a 409) can tell it to abort: the
payload's whole process group is killed. Exit status: 0 lifetime reached or stopped, 3 no work (idle limit),
4 declared dead by the job-executor, 1 failure.
"""
from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import shutil
import signal
import sys
import time
from pathlib import Path

import aiohttp

from common.observability import configure_logging
from common.pilot_protocol import Heartbeat, JobReport, JobSpec, StagedFile
from pilot.channels import ChannelRefused
from pilot.channels.mq import MqChannel
from pilot.channels.rest import RestChannel
from pilot.config import PilotSettings
from pilot.payload import expand_args, run_payload
from pilot.resources import identify
from pilot.staging import StagingError, stage_in, stage_out

log = logging.getLogger("wms.pilot")
EXIT_OK, EXIT_FAILURE, EXIT_NO_WORK, EXIT_DEAD = 0, 1, 3, 4
REPORT_TRIES = 5


class PilotDeclaredDead(Exception):
    pass


class Pilot:
    def __init__(self, settings: PilotSettings) -> None:
        self.settings = settings
        self.channel: RestChannel | MqChannel = (
            RestChannel(settings.server_url, settings.token, settings.request_timeout_s)
            if settings.channel == "rest"
            else MqChannel(settings.amqp_url, settings.broker_namespace, settings.request_timeout_s)
        )
        self.stopping = asyncio.Event()  # SIGTERM: finish the current job, take no other

    async def run(self) -> int:
        registration = identify(self.settings)
        session = await self.channel.register(registration)
        self.heartbeat_interval = session.heartbeat_interval_s
        log.info("pilot registered", extra={"pilot_id": session.pilot_id, **registration.model_dump()})
        started = idle_since = time.monotonic()
        try:
            while not self.stopping.is_set() and time.monotonic() - started < self.settings.lifetime_s:
                job = await self.channel.claim()
                if job is None:
                    if time.monotonic() - idle_since > self.settings.idle_limit_s:
                        return EXIT_NO_WORK
                    with contextlib.suppress(TimeoutError):
                        await asyncio.wait_for(self.stopping.wait(), self.settings.idle_poll_s)
                    continue
                await self.run_job(job)
                idle_since = time.monotonic()
            return EXIT_OK
        except PilotDeclaredDead:
            return EXIT_DEAD
        except ChannelRefused as exc:
            if exc.status == 409:  # declared dead (or ended) by the job-executor
                log.error("pilot refused by the job-executor", extra={"detail": str(exc.detail)[:300]})
                return EXIT_DEAD
            raise
        finally:
            log.info("pilot ending", extra={"pilot_id": self.channel.pilot_id})
            with contextlib.suppress(Exception):
                await self.channel.exit()
            await self.channel.close()
            log.info("pilot ended", extra={"pilot_id": self.channel.pilot_id})

    async def run_job(self, job: JobSpec) -> None:
        ids = {"pilot_id": self.channel.pilot_id, "job_id": job.job_id, "attempt": job.attempt}
        workdir = Path(self.settings.workdir) / f"job-{job.job_id}-{job.attempt}"
        shutil.rmtree(workdir, ignore_errors=True)
        output_dir = workdir / "outputs"
        output_dir.mkdir(parents=True)
        log_path = workdir / "payload.log"
        abort = asyncio.Event()
        beats = asyncio.create_task(self._heartbeat(job, abort))
        try:
            try:
                inputs = stage_in(job.inputs, workdir / "inputs")
            except StagingError as exc:
                await self._report(job, JobReport(attempt=job.attempt, state="failed", error_category="stage-in",
                                                  error_message=str(exc)))
                return
            await self._report(job, JobReport(attempt=job.attempt, state="running"))
            env = {**os.environ, **job.env, "WMS_JOB_ID": str(job.job_id), "WMS_ATTEMPT": str(job.attempt),
                   "WMS_OUTPUT_DIR": str(output_dir), "WMS_WORKDIR": str(workdir)}
            args = expand_args(job.args, inputs, output_dir, job.job_id)
            log.info("payload starting", extra={**ids, "command": job.command})
            try:
                result = await run_payload(job.command, args, env, workdir, log_path, job.wall_time_s, abort)
            except OSError as exc:
                log_path.write_text(f"cannot start payload: {exc}\n")
                result = None
            log_file = self._stage_log(job, log_path)
            if result is None or result.aborted or result.timed_out or result.exit_code != 0:
                category, message = (
                    ("payload", "payload could not be started") if result is None
                    else ("cancelled", "aborted on the job-executor's request") if result.aborted
                    else ("timeout", f"wall time {job.wall_time_s} s exceeded") if result.timed_out
                    else ("payload", f"exit code {result.exit_code}")
                )
                await self._report(job, JobReport(attempt=job.attempt, state="failed", error_category=category,
                                                  error_message=message, log=log_file,
                                                  exit_code=None if result is None else result.exit_code))
                return
            try:
                outputs = self._stage_outputs(job, output_dir, workdir)
            except StagingError as exc:
                await self._report(job, JobReport(attempt=job.attempt, state="failed", error_category="stage-out",
                                                  error_message=str(exc), log=log_file))
                return
            await self._report(job, JobReport(attempt=job.attempt, state="finished", exit_code=0, outputs=outputs,
                                              log=log_file))
            log.info("job finished", extra={**ids, "outputs": len(outputs)})
        finally:
            beats.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await beats
            shutil.rmtree(workdir, ignore_errors=True)

    def _stage_log(self, job: JobSpec, log_path: Path) -> StagedFile | None:
        named = log_path.with_name(f"{job.job_id}.{job.attempt}.log")
        try:
            log_path.rename(named)
            return stage_out(named, job.output_url_prefix + "logs/", f"{job.log_dataset}/{named.name}")
        except (OSError, StagingError):
            log.exception("log could not be staged", extra={"job_id": job.job_id})
            return None

    def _stage_outputs(self, job: JobSpec, output_dir: Path, workdir: Path) -> list[StagedFile]:
        events: dict[str, int] = {}
        manifest = workdir / "outputs.json"
        if manifest.exists():
            events = {k: int(v["events"]) for k, v in json.loads(manifest.read_text()).items() if "events" in v}
        return [
            stage_out(path, job.output_url_prefix, f"{job.output_dataset}/{job.job_id}/{path.name}",
                      events.get(path.name))
            for path in sorted(output_dir.iterdir()) if path.is_file()
        ]

    async def _report(self, job: JobSpec, report: JobReport) -> None:
        """Send a report; transient failures are retried (the job-executor takes a repeat as the same report)."""
        for attempt in range(1, REPORT_TRIES + 1):
            try:
                await self.channel.report(job.job_id, report)
                return
            except ChannelRefused as exc:
                if exc.status == 409 and "pilot" in str(exc.detail) and "is dead" in str(exc.detail):
                    raise PilotDeclaredDead(str(exc.detail)) from exc
                log.warning("report refused", extra={"job_id": job.job_id, "status": exc.status,
                                                     "detail": str(exc.detail)[:300]})
                return  # superseded attempt or cancelled job: nothing more to say about it
            except (aiohttp.ClientError, TimeoutError, OSError) as exc:
                if attempt == REPORT_TRIES:
                    raise
                log.warning("report failed, retrying", extra={"job_id": job.job_id, "error": str(exc)})
                await asyncio.sleep(min(2**attempt, 10))

    async def _heartbeat(self, job: JobSpec, abort: asyncio.Event) -> None:
        while True:
            await asyncio.sleep(self.heartbeat_interval)
            try:
                reply = await self.channel.heartbeat(Heartbeat(job_id=job.job_id, attempt=job.attempt))
            except ChannelRefused as exc:
                log.error("heartbeat refused: stopping the payload", extra={"job_id": job.job_id,
                                                                            "detail": str(exc.detail)[:300]})
                abort.set()
                return
            except (aiohttp.ClientError, TimeoutError, OSError) as exc:
                log.warning("heartbeat failed", extra={"job_id": job.job_id, "error": str(exc)})
                continue
            if reply.abort:
                log.warning("abort requested", extra={"job_id": job.job_id, "reason": reply.reason})
                abort.set()
                return


async def amain(settings: PilotSettings) -> int:
    pilot = Pilot(settings)
    loop = asyncio.get_running_loop()
    loop.add_signal_handler(signal.SIGTERM, pilot.stopping.set)
    loop.add_signal_handler(signal.SIGINT, pilot.stopping.set)
    return await pilot.run()


def main() -> None:
    settings = PilotSettings()
    configure_logging("pilot", os.environ.get("WMS_LOG_LEVEL", "INFO"))
    try:
        code = asyncio.run(amain(settings))
    except Exception:
        log.exception("pilot failed")
        code = EXIT_FAILURE
    sys.exit(code)


if __name__ == "__main__":
    main()

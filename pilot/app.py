"""The pilot application: register, then take and run jobs one after another until its lifetime or idle limit.

Each job: stage in, report running, run the payload (own work directory, environment, wall time, log file)
while heartbeating, stage out, report the outcome. A heartbeat answer (or a 409) can tell it to abort: the
payload's whole process tree is killed. Staging runs in a worker thread, so heartbeats go on meanwhile.

An unavailable server (5xx, a timeout, a lost connection, the broker down) is never a reason to give up: every
call is retried with backoff, a running job keeps running and heartbeating, a finished job's report is kept and
retried until the job-executor accepts or refuses it; a claim is retried with the same request id, so it cannot
produce a second job. Only a refusal (4xx) is final.

Exit status: 0 lifetime reached or stopped, 3 no work (idle limit), 4 declared dead by the job-executor,
1 failure.
"""
from __future__ import annotations

import asyncio
import contextlib
import functools
import json
import logging
import os
import random
import shutil
import signal
import sys
import time
import uuid
from collections.abc import Awaitable, Callable, Sequence
from pathlib import Path
from typing import TypeVar

from common.jsonlog import configure_logging
from common.pilot_protocol import ErrorCategory, Heartbeat, JobReport, JobSpec, StagedFile
from pilot.channels import ChannelRefused, ChannelUnavailable
from pilot.channels.mq import MqChannel
from pilot.channels.rest import RestChannel
from pilot.config import PilotSettings
from pilot.exit_codes import EXIT_DEAD, EXIT_FAILURE, EXIT_NO_WORK, EXIT_OK, EXIT_REFUSED
from pilot.payload import expand_args, run_payload
from pilot.resources import identify
from pilot.staging import StagingError, Throttle, remove_staged, stage_in, stage_out

log = logging.getLogger("wms.pilot")
CREDENTIAL_REFUSED = (401, 403)  # no use trying again with this credential
RETRY_FIRST_S = 0.5
EXIT_CALL_TIMEOUT_S = 5.0
DETAIL_LOG_MAX = 300
T = TypeVar("T")


class PilotDeclaredDead(Exception):
    pass


class Stopped(Exception):
    """The pilot was asked to stop while waiting for an unavailable server."""


class ManifestError(Exception):
    pass


class Pilot:
    def __init__(self, settings: PilotSettings) -> None:
        self.settings = settings
        self.channel: RestChannel | MqChannel = (
            RestChannel(settings.server_url, settings.token, settings.request_timeout_s)
            if settings.channel == "rest"
            else MqChannel(settings.amqp_url, settings.broker_namespace, settings.token, settings.request_timeout_s)
        )
        self.stopping = asyncio.Event()  # SIGTERM: finish the current job, take no other
        self.throttle_bytes_per_s = settings.stage_bandwidth_mbps * 1e6

    async def _retrying(self, what: str, call: Callable[[], Awaitable[T]], interruptible: bool = False,
                        give_up_s: float | None = None) -> T:
        """``call()`` until it answers or is refused; an outage is waited out with backoff (and jitter).
        ``interruptible``: a stop request ends the wait (Stopped). ``give_up_s``: the outage is re-raised after
        that long, or ``stop_grace_s`` after a stop request."""
        delay, started = RETRY_FIRST_S, time.monotonic()
        stop_seen: float | None = None
        while True:
            try:
                return await call()
            except ChannelUnavailable as exc:
                now = time.monotonic()
                if give_up_s is not None and now - started > give_up_s:
                    raise
                if self.stopping.is_set():
                    stop_seen = stop_seen or now
                    if now - stop_seen > self.settings.stop_grace_s:
                        raise
                log.warning("server unavailable; retrying", extra={
                    "call": what, "error": str(exc)[:DETAIL_LOG_MAX], "retry_in_s": round(delay, 2),
                    "pilot_id": self.channel.pilot_id})
            pause = delay * random.uniform(0.8, 1.2)
            if interruptible:
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self.stopping.wait(), pause)
                if self.stopping.is_set():
                    raise Stopped(what)
            else:
                await asyncio.sleep(pause)
            delay = min(delay * 2, self.settings.retry_max_s)

    async def run(self) -> int:
        registration = identify(self.settings)
        try:
            session = await self._retrying("register", lambda: self.channel.register(registration),
                                           interruptible=True)
        except Stopped:
            await self.channel.close()
            return EXIT_OK
        except ChannelRefused as exc:
            await self.channel.close()
            if exc.status in CREDENTIAL_REFUSED:
                log.error("pilot credential refused", extra={"status": exc.status,
                                                             "detail": str(exc.detail)[:DETAIL_LOG_MAX]})
                return EXIT_REFUSED
            raise
        self.heartbeat_interval = session.heartbeat_interval_s
        log.info("pilot registered", extra={"pilot_id": session.pilot_id, **registration.model_dump()})
        started = idle_since = time.monotonic()
        try:
            while not self.stopping.is_set() and time.monotonic() - started < self.settings.lifetime_s:
                request_id = uuid.uuid4()  # the same for every retry of this claim
                asked = time.monotonic()
                job = await self._retrying("claim", functools.partial(self.channel.claim, request_id),
                                           interruptible=True)
                if job is None:
                    if time.monotonic() - asked > self.settings.request_timeout_s:
                        idle_since = time.monotonic()  # time spent waiting out an outage is not idleness
                    if time.monotonic() - idle_since > self.settings.idle_limit_s:
                        return EXIT_NO_WORK
                    with contextlib.suppress(TimeoutError):
                        await asyncio.wait_for(self.stopping.wait(), self.settings.idle_poll_s)
                    continue
                await self.run_job(job)
                idle_since = time.monotonic()
            return EXIT_OK
        except Stopped:
            return EXIT_OK
        except PilotDeclaredDead:
            return EXIT_DEAD
        except ChannelRefused as exc:
            if exc.status == 409:  # declared dead (or ended) by the job-executor
                log.error("pilot refused by the job-executor", extra={"detail": str(exc.detail)[:DETAIL_LOG_MAX]})
                return EXIT_DEAD
            if exc.status in CREDENTIAL_REFUSED:  # the credential was revoked
                log.error("pilot credential refused", extra={"status": exc.status,
                                                             "detail": str(exc.detail)[:DETAIL_LOG_MAX]})
                return EXIT_REFUSED
            raise
        finally:
            log.info("pilot ending", extra={"pilot_id": self.channel.pilot_id})
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self.channel.exit(), EXIT_CALL_TIMEOUT_S)
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
        throttle = Throttle(self.throttle_bytes_per_s)
        try:
            try:
                inputs = await asyncio.to_thread(stage_in, job.inputs, workdir / "inputs", throttle)
            except StagingError as exc:
                await self._report(job, JobReport(attempt=job.attempt, state="failed", error_category="stage-in",
                                                  error_message=str(exc)))
                return
            if abort.is_set():
                return  # superseded or cancelled while staging in: nothing to report
            await self._report(job, JobReport(attempt=job.attempt, state="running"))
            env = payload_environment(self.settings.payload_env, job, output_dir, workdir)
            args = expand_args(job.args, inputs, output_dir, job.job_id)
            log.info("payload starting", extra={**ids, "command": job.command})
            try:
                result = await run_payload(job.command, args, env, workdir, log_path, job.wall_time_s, abort)
            except OSError as exc:
                log_path.write_text(f"cannot start payload: {exc}\n")
                result = None
            log_file = await asyncio.to_thread(self._stage_log, job, log_path, throttle)
            if result is None or result.aborted or result.timed_out or result.exit_code != 0:
                category: ErrorCategory
                category, message = (
                    ("payload", "payload could not be started") if result is None
                    else ("cancelled", "aborted on the job-executor's request") if result.aborted
                    else ("timeout", f"wall time {job.wall_time_s} s exceeded") if result.timed_out
                    else ("payload", f"exit code {result.exit_code}")
                )
                await self._report(job, JobReport(attempt=job.attempt, state="failed", error_category=category,
                                                  error_message=message, log=log_file,
                                                  exit_code=None if result is None else result.exit_code),
                                   staged=[log_file] if log_file else [])
                return
            try:
                outputs = await asyncio.to_thread(self._stage_outputs, job, output_dir, workdir, throttle)
            except (StagingError, ManifestError) as exc:
                failed_as: ErrorCategory = "manifest" if isinstance(exc, ManifestError) else "stage-out"
                await self._report(job, JobReport(attempt=job.attempt, state="failed", error_category=failed_as,
                                                  error_message=str(exc), log=log_file),
                                   staged=[log_file] if log_file else [])
                return
            accepted = await self._report(
                job, JobReport(attempt=job.attempt, state="finished", exit_code=0, outputs=outputs, log=log_file),
                staged=[*outputs, *([log_file] if log_file else [])])
            log.info("job finished" if accepted else "job finished but its attempt was superseded",
                     extra={**ids, "outputs": len(outputs)})
        finally:
            beats.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await beats
            shutil.rmtree(workdir, ignore_errors=True)

    def _stage_log(self, job: JobSpec, log_path: Path, throttle: Throttle) -> StagedFile | None:
        named = log_path.with_name(f"{job.job_id}.{job.attempt}.log")
        try:
            log_path.rename(named)
            return stage_out(named, job.output_url_prefix + "logs/", f"{job.log_dataset}/{named.name}",
                             throttle=throttle)
        except (OSError, StagingError):
            log.exception("log could not be staged", extra={"job_id": job.job_id})
            return None

    def _stage_outputs(self, job: JobSpec, output_dir: Path, workdir: Path, throttle: Throttle) -> list[StagedFile]:
        events = read_manifest(workdir / "outputs.json")
        return [
            stage_out(path, job.output_url_prefix, f"{job.output_dataset}/{job.job_id}/{path.name}",
                      events.get(path.name), throttle)
            for path in sorted(output_dir.iterdir()) if path.is_file()
        ]

    async def _report(self, job: JobSpec, report: JobReport, staged: Sequence[StagedFile] = ()) -> bool:
        """Send a report until the job-executor accepts (True) or refuses it (False); an outage is waited out.
        What a refused attempt staged is removed: it will never be registered."""
        try:
            await self._retrying(f"report {report.state}", lambda: self.channel.report(job.job_id, report),
                                 give_up_s=self.settings.report_give_up_s)
            return True
        except ChannelUnavailable as exc:
            # given up (stopping, or a very long outage): the job-executor will find the job lost and retry it
            log.error("report given up", extra={"job_id": job.job_id, "error": str(exc)[:DETAIL_LOG_MAX]})
            return False
        except ChannelRefused as exc:
            if exc.status == 409 and "pilot" in str(exc.detail) and "is dead" in str(exc.detail):
                await asyncio.to_thread(remove_staged, list(staged))
                raise PilotDeclaredDead(str(exc.detail)) from exc
            log.warning("report refused", extra={"job_id": job.job_id, "status": exc.status,
                                                 "detail": str(exc.detail)[:DETAIL_LOG_MAX]})
            await asyncio.to_thread(remove_staged, list(staged))
            return False  # superseded attempt or cancelled job: nothing more to say about it

    async def _heartbeat(self, job: JobSpec, abort: asyncio.Event) -> None:
        while True:
            await asyncio.sleep(self.heartbeat_interval)
            try:
                reply = await self.channel.heartbeat(Heartbeat(job_id=job.job_id, attempt=job.attempt))
            except ChannelRefused as exc:
                log.error("heartbeat refused: stopping the payload", extra={
                    "job_id": job.job_id, "detail": str(exc.detail)[:DETAIL_LOG_MAX]})
                abort.set()
                return
            except ChannelUnavailable as exc:
                log.warning("heartbeat failed; the job goes on", extra={"job_id": job.job_id,
                                                                       "error": str(exc)[:DETAIL_LOG_MAX]})
                continue
            if reply.abort:
                log.warning("abort requested", extra={"job_id": job.job_id, "reason": reply.reason})
                abort.set()
                return


def payload_environment(allowed: list[str], job: JobSpec, output_dir: Path, workdir: Path) -> dict[str, str]:
    """A clean environment: the allowed variables of the pilot's own (never its credentials or broker URL),
    the task's, and the job's coordinates. The task's variables were checked at submission."""
    inherited = {name: os.environ[name] for name in allowed if name in os.environ and not name.startswith("WMS_")}
    return {**inherited, **job.env, "WMS_JOB_ID": str(job.job_id), "WMS_ATTEMPT": str(job.attempt),
            "WMS_OUTPUT_DIR": str(output_dir), "WMS_WORKDIR": str(workdir)}


def read_manifest(path: Path) -> dict[str, int]:
    """The payload's optional outputs.json: ``{"<output file name>": {"events": n}, ...}``."""
    if not path.exists():
        return {}
    try:
        manifest = json.loads(path.read_text())
        if not isinstance(manifest, dict):
            raise ValueError("not a JSON object")
        events: dict[str, int] = {}
        for name, entry in manifest.items():
            if not isinstance(entry, dict):
                raise ValueError(f"entry {name!r} is not an object")
            if "events" in entry:
                value = entry["events"]
                if isinstance(value, bool) or not isinstance(value, int) or value < 0:
                    raise ValueError(f"entry {name!r}: events must be a non-negative integer")
                events[name] = value
        return events
    except (OSError, ValueError) as exc:
        raise ManifestError(f"malformed outputs.json: {exc}") from exc


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

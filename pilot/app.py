"""The pilot application: register, then run up to ``slots`` jobs at once until its lifetime or idle limit.

It talks protocol 2 (docs/dispatch.md): each cycle is one exchange that carries the reports of its jobs, the
heartbeat of those in flight, and a request for as many jobs as it has free slots (the job-executor gives what
fits its cores, memory and GPUs). A cycle runs when a job has something to report, at least every heartbeat
interval, and, while slots are free, as a long poll that the job-executor answers when work appears.

Each job: stage in, report running, run the payload (own work directory, environment, wall time, log file),
stage out, report the outcome. An abort order (cancelled, superseded) kills the payload's whole process tree.
Staging runs in worker threads, so the cycles go on meanwhile.

An unavailable server (5xx, a timeout, a lost connection, the broker down) is never a reason to give up: every
call is retried with backoff, a running job keeps running and heartbeating, a finished job's report is kept and
retried until the job-executor accepts or refuses it; a claim is retried with the same request id, so it cannot
produce a second job. Only a refusal (4xx) is final.

Exit status (pilot/exit_codes.py): 0 lifetime reached or stopped, 3 no work (idle limit), 4 declared dead by
the job-executor, 5 credential refused, 1 failure.
"""
from __future__ import annotations

import asyncio
import contextlib
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
from dataclasses import dataclass, field
from pathlib import Path
from typing import TypeVar

from common.jsonlog import configure_logging
from common.pilot_protocol import (
    ErrorCategory,
    ExchangeReply,
    ExchangeReport,
    ExchangeRequest,
    JobBeat,
    JobReport,
    JobSpec,
    StagedFile,
)
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
UNANSWERED = 0  # the outcome of a report whose exchange never answered (the pilot gave up or was refused)
T = TypeVar("T")


class Stopped(Exception):
    """The pilot was asked to stop while waiting for an unavailable server."""


class ManifestError(Exception):
    pass


@dataclass
class RunningJob:
    spec: JobSpec
    abort: asyncio.Event = field(default_factory=asyncio.Event)
    task: asyncio.Task[None] | None = None


@dataclass
class PendingReport:
    """A report waiting for the next exchange, with what the attempt staged (removed if it is refused)."""

    report: ExchangeReport
    staged: Sequence[StagedFile] = ()
    answered: asyncio.Future[int] = field(default_factory=lambda: asyncio.get_running_loop().create_future())
    # sent in an exchange that got no answer (a timeout, a lost connection or reply): the job-executor may have
    # applied it and registered what it staged, so those files are never removed without an explicit refusal
    maybe_applied: bool = False


class Pilot:
    def __init__(self, settings: PilotSettings) -> None:
        self.settings = settings
        self.channel: RestChannel | MqChannel = (
            RestChannel(settings.server_url, settings.token, settings.request_timeout_s)
            if settings.channel == "rest"
            else MqChannel(settings.amqp_url, settings.broker_namespace, settings.token, settings.request_timeout_s)
        )
        self.stopping = asyncio.Event()  # SIGTERM: finish the running jobs, take no other
        self.throttle_bytes_per_s = settings.stage_bandwidth_mbps * 1e6
        self.jobs: dict[int, RunningJob] = {}
        self.pending: dict[tuple[int, int], PendingReport] = {}
        self.wake = asyncio.Event()  # something to report: run a cycle now
        self.abandoned = False  # no more exchanges: reports go nowhere

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
        try:
            return await self._cycles(registration.slots)
        except Stopped:
            return EXIT_OK
        except ChannelRefused as exc:
            await self._abandon_jobs()
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

    async def _cycles(self, slots: int) -> int:
        """Exchange after exchange until the lifetime or the idle limit is reached, or a stop is asked for;
        then the running jobs finish and their reports are delivered."""
        started = idle_since = time.monotonic()
        while True:
            accepting = not self.stopping.is_set() and time.monotonic() - started < self.settings.lifetime_s
            if not accepting and not self.jobs and not self.pending:
                return EXIT_OK
            want = max(0, slots - len(self.jobs)) if accepting else 0
            # free slots and nothing to report: wait at the server for work (shorter while jobs run, so their
            # reports do not wait long behind the poll)
            wait_s = 0.0
            if want and not self.pending:
                idle_left = self.settings.idle_limit_s - (time.monotonic() - idle_since)
                longest = min(self.settings.long_poll_s, self.heartbeat_interval)  # heard every interval
                wait_s = min(longest, 1.0) if self.jobs else max(0.0, min(longest, idle_left))
            self.wake.clear()
            asked = time.monotonic()
            reply = await self._exchange(want, wait_s)
            self._apply(reply)
            if self.jobs or reply.jobs:
                idle_since = time.monotonic()
            elif time.monotonic() - asked > self.settings.request_timeout_s:
                idle_since = time.monotonic()  # time spent waiting out an outage is not idleness
            if accepting and not self.jobs and time.monotonic() - idle_since > self.settings.idle_limit_s:
                return EXIT_NO_WORK
            if self.wake.is_set() or (want and not reply.jobs and wait_s and not self.pending):
                continue  # a report to send, or a long poll that came back empty: the next cycle at once
            pause = self.heartbeat_interval if self.jobs else self.settings.idle_poll_s
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._woken(), pause)

    async def _woken(self) -> None:
        stop = asyncio.ensure_future(self.stopping.wait())
        wake = asyncio.ensure_future(self.wake.wait())
        try:
            await asyncio.wait({stop, wake}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            stop.cancel()
            wake.cancel()

    async def _exchange(self, want: int, wait_s: float) -> ExchangeReply:
        request = ExchangeRequest(
            reports=[p.report for p in self.pending.values()],
            running=[JobBeat(job_id=j.spec.job_id, attempt=j.spec.attempt) for j in self.jobs.values()],
            want=want, request_id=uuid.uuid4(), wait_s=wait_s)  # the same request (id) for every retry
        busy = bool(self.jobs or self.pending)
        carried = list(self.pending.values())

        async def call() -> ExchangeReply:
            try:
                return await self.channel.exchange(request)
            except ChannelUnavailable:
                for pending in carried:
                    pending.maybe_applied = True
                raise

        try:
            if wait_s and not busy:
                return await self._stoppable(self._retrying("exchange", call, interruptible=True))
            return await self._retrying("exchange", call, interruptible=not busy,
                                        give_up_s=self.settings.report_give_up_s if self.pending else None)
        except ChannelUnavailable:
            # given up (stopping, or a very long outage): the job-executor will find the jobs lost and retry them
            log.error("exchange given up: abandoning the running jobs and their reports",
                      extra={"jobs": len(self.jobs), "reports": len(self.pending)})
            await self._abandon_jobs()
            raise Stopped("exchange") from None

    async def _stoppable(self, call: Awaitable[ExchangeReply]) -> ExchangeReply:
        """An idle long poll ends at once on a stop request (a job it claimed at that very moment is declared
        lost by the job-executor and retried, without counting against the task's attempts)."""
        waiting = asyncio.ensure_future(call)
        stop = asyncio.ensure_future(self.stopping.wait())
        try:
            await asyncio.wait({waiting, stop}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            stop.cancel()
        if waiting.done():
            return waiting.result()
        waiting.cancel()
        with contextlib.suppress(asyncio.CancelledError, Exception):
            await waiting
        raise Stopped("exchange")

    def _apply(self, reply: ExchangeReply) -> None:
        for outcome in reply.reports:
            pending = self.pending.pop((outcome.job_id, outcome.attempt), None)
            if pending is None:
                continue
            if outcome.status != 200:
                log.warning("report refused", extra={"job_id": outcome.job_id, "status": outcome.status,
                                                     "detail": str(outcome.detail)[:DETAIL_LOG_MAX]})
            if not pending.answered.done():
                pending.answered.set_result(outcome.status)
        for order in reply.abort:
            job = self.jobs.get(order.job_id)
            if job is not None and job.spec.attempt == order.attempt:
                log.warning("abort requested", extra={"job_id": order.job_id, "reason": order.reason})
                job.abort.set()
        for spec in reply.jobs:
            job = RunningJob(spec)
            job.task = asyncio.create_task(self._run_and_forget(job))
            self.jobs[spec.job_id] = job

    async def _run_and_forget(self, job: RunningJob) -> None:
        try:
            await self.run_job(job.spec, job.abort)
        except Exception:
            log.exception("job crashed in the pilot", extra={"job_id": job.spec.job_id})
        finally:
            self.jobs.pop(job.spec.job_id, None)
            self.wake.set()

    async def _abandon_jobs(self) -> None:
        """Stop every payload and forget every report (the job-executor declares those attempts lost)."""
        self.abandoned = True
        for job in list(self.jobs.values()):
            job.abort.set()
        for pending in self.pending.values():
            if not pending.answered.done():
                pending.answered.set_result(UNANSWERED)
        tasks = [j.task for j in self.jobs.values() if j.task is not None]
        if tasks:
            await asyncio.wait(tasks, timeout=30)

    async def run_job(self, job: JobSpec, abort: asyncio.Event) -> None:
        ids = {"pilot_id": self.channel.pilot_id, "job_id": job.job_id, "attempt": job.attempt}
        workdir = Path(self.settings.workdir) / f"job-{job.job_id}-{job.attempt}"
        shutil.rmtree(workdir, ignore_errors=True)
        output_dir = workdir / "outputs"
        output_dir.mkdir(parents=True)
        log_path = workdir / "payload.log"
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
            if not await self._report(job, JobReport(attempt=job.attempt, state="running")):
                return  # superseded or cancelled before its payload started
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
        """Hand a report to the next exchange and wait for its outcome: True if accepted. What a refused attempt
        staged is removed: it will never be registered."""
        if self.abandoned:
            if staged:
                await asyncio.to_thread(remove_staged, list(staged))
            return False
        pending = PendingReport(ExchangeReport(job_id=job.job_id, **report.model_dump()), staged)
        self.pending[(job.job_id, job.attempt)] = pending
        self.wake.set()
        status = await pending.answered
        if staged and (status >= 400 or (status == UNANSWERED and not pending.maybe_applied)):
            await asyncio.to_thread(remove_staged, list(staged))
        elif staged and status == UNANSWERED:
            log.warning("report unanswered and possibly accepted: its staged outputs are kept",
                        extra={"job_id": job.job_id, "attempt": job.attempt, "files": len(staged)})
        return status == 200


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

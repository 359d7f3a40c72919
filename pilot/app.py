"""The pilot application: register, then run up to ``slots`` jobs at once until its lifetime or idle limit.

It talks protocol 2 (docs/dispatch.md): each cycle is one exchange that carries the reports of its jobs, the
heartbeat of those in flight, and a request for as many jobs as it has free slots, plus what its queue lets it
prefetch (the job-executor gives what fits its cores, memory and GPUs; a prefetched job waits on the node for a
slot, pilot/slots.py). A cycle runs when a job has something to report, at least every heartbeat
interval, and, while slots are free, as a long poll that the job-executor answers when work appears.

Each job: stage in, report running, run the payload with the pilot's runtime (pilot/runtimes: a sandbox by
default) within its limits (memory, output, log, wall time) while measuring it (pilot/usage.py), stage out what
it left (regular files only), report the outcome with its usage. An abort order (cancelled, superseded) kills the
payload and everything it started. Staging runs in worker threads, so the cycles go on meanwhile. At start the
pilot proves its runtime with a sentinel payload: a runtime that does not work fails the pilot, not jobs.

An unavailable server (5xx, a timeout, a lost connection, the broker down) is never a reason to give up: every
call is retried with backoff, a running job keeps running and heartbeating, a finished job's report is kept and
retried until the job-executor accepts or refuses it; a claim is retried with the same request id, so it cannot
produce a second job. Only a refusal (4xx) is final.

Exit status (pilot/exit_codes.py): 0 lifetime reached or stopped, 3 no work (idle limit), 4 declared dead by
the job-executor, 5 credential refused, 6 the payload runtime does not work on this node, 1 failure.
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
    PilotSession,
    StagedFile,
    Usage,
)
from pilot import cgroups, credentials
from pilot.channels import ChannelRefused, ChannelUnavailable
from pilot.channels.by_setting import channel_for
from pilot.config import PilotSettings
from pilot.exit_codes import EXIT_DEAD, EXIT_FAILURE, EXIT_NO_WORK, EXIT_OK, EXIT_REFUSED, EXIT_RUNTIME
from pilot.outputs import ManifestError, OutputTooLarge, stage_outputs
from pilot.payload import Limits, PayloadResult, run_payload
from pilot.resources import identify
from pilot.runtimes import Launch, RuntimeUnavailable
from pilot.runtimes.select import make_runtime, prove
from pilot.slots import NodeRoom, Slots
from pilot.staging import StagingError, Throttle, UnsafeFile, open_regular, remove_staged, stage_in, stage_out

log = logging.getLogger("wms.pilot")
CREDENTIAL_REFUSED = (401, 403)  # no use trying again with this credential
RETRY_FIRST_S = 0.5


def retry_pause_s(delay: float, retry_after_s: float | None, max_s: float, jitter: float) -> float:
    """How long to wait before asking again: our backoff ``delay`` times ``jitter`` (around 1), but never less
    than what the server asked for (Retry-After), and never more than ``max_s`` for either."""
    return max(delay * jitter, min(retry_after_s or 0.0, max_s))


EXIT_CALL_TIMEOUT_S = 5.0
DETAIL_LOG_MAX = 300
UNANSWERED = 0  # the outcome of a report whose exchange never answered (the pilot gave up or was refused)
MB = 1 << 20
# how a payload that was ended is reported
ENDED_AS: dict[str, ErrorCategory] = {"aborted": "cancelled", "timeout": "timeout", "memory": "memory",
                                      "output_too_large": "output_too_large"}
T = TypeVar("T")


class Stopped(Exception):
    """The pilot was asked to stop while waiting for an unavailable server."""


@dataclass
class RunningJob:
    spec: JobSpec
    abort: asyncio.Event = field(default_factory=asyncio.Event)
    task: asyncio.Task[None] | None = None
    usage: Usage | None = None  # the latest figures of its payload
    usage_sent: float = 0.0  # when figures last travelled with a heartbeat


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
        self.channel = channel_for(settings)
        self.stopping = asyncio.Event()  # SIGTERM: finish the running jobs, take no other
        self.throttle_bytes_per_s = settings.stage_bandwidth_mbps * 1e6
        self.jobs: dict[int, RunningJob] = {}
        self.pending: dict[tuple[int, int], PendingReport] = {}
        self.wake = asyncio.Event()  # something to report: run a cycle now
        self.abandoned = False  # no more exchanges: reports go nowhere
        self.runtime = make_runtime(settings)
        self.cgroups = cgroups.detect(f"spd-wms-pilot-{os.getpid()}", settings.cgroups)
        self.workdir = Path(settings.workdir)
        self.private = self.workdir / ".pilot"  # the pilot's own files (payload logs): never in a sandbox
        self.memory_mb = settings.memory_mb or 0  # what it offers (set at registration)
        self.slots: Slots | None = None  # its room on the node (set at registration)

    async def prepare(self) -> None:
        """Make the work area and prove the runtime on this node (RuntimeUnavailable if it does not work)."""
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.private.mkdir(mode=0o700, exist_ok=True)
        if self.runtime.name == "plain":
            log.warning("payloads run PLAINLY: as the pilot's own user, neither contained nor isolated "
                        "(WMS_PILOT_RUNTIME=plain); use the sandbox wherever the node allows it")
        await prove(self.runtime, self.workdir, self.cgroups)
        log.info("payload runtime ready", extra={"runtime": self.runtime.name, "cgroups": self.cgroups.description})

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
                pause = retry_pause_s(delay, exc.retry_after_s, self.settings.retry_max_s, random.uniform(0.8, 1.2))
                now = time.monotonic()
                if give_up_s is not None and now - started > give_up_s:
                    raise
                if self.stopping.is_set():
                    stop_seen = stop_seen or now
                    if now - stop_seen > self.settings.stop_grace_s:
                        raise
                log.warning("server unavailable; retrying", extra={
                    "call": what, "error": str(exc)[:DETAIL_LOG_MAX], "retry_in_s": round(pause, 2),
                    "pilot_id": self.channel.pilot_id})
            if interruptible:
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self.stopping.wait(), pause)
                if self.stopping.is_set():
                    raise Stopped(what)
            else:
                await asyncio.sleep(pause)
            delay = min(delay * 2, self.settings.retry_max_s)

    async def run(self) -> int:
        try:
            await self.prepare()
        except RuntimeUnavailable as exc:
            log.error("payload runtime unavailable: this pilot takes no job", extra={
                "runtime": self.runtime.name, "error": str(exc)[:2000]})
            await self.channel.close()
            self.cgroups.remove()
            return EXIT_RUNTIME
        try:
            return await self._registered_run()
        finally:
            self.cgroups.remove()

    async def _registered_run(self) -> int:
        registration = identify(self.settings, self.runtime.name)
        self.memory_mb = registration.memory_mb
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
            leave_session(self.settings.session_file, session)
            self.slots = Slots(NodeRoom(registration.slots, registration.cores, registration.memory_mb,
                                        registration.gpus))
            return await self._cycles(registration.slots + session.prefetch)
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
            if self.settings.session_file:  # it ended its session itself: nothing for its daemon to say
                Path(self.settings.session_file).unlink(missing_ok=True)
            log.info("pilot ended", extra={"pilot_id": self.channel.pilot_id})

    async def _cycles(self, holds: int) -> int:
        """Exchange after exchange until the lifetime or the idle limit is reached, or a stop is asked for;
        then the running jobs finish and their reports are delivered."""
        started = idle_since = time.monotonic()
        while True:
            accepting = not self.stopping.is_set() and time.monotonic() - started < self.settings.lifetime_s
            if not accepting and not self.jobs and not self.pending:
                return EXIT_OK
            want = max(0, holds - len(self.jobs)) if accepting else 0  # its slots and what it may prefetch
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
            running=[self._beat(j) for j in self.jobs.values()],
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

    def _beat(self, job: RunningJob) -> JobBeat:
        """A running job's heartbeat, with its payload's latest figures now and then."""
        now = time.monotonic()
        if job.usage is None or now - job.usage_sent < self.settings.usage_report_s:
            return JobBeat(job_id=job.spec.job_id, attempt=job.spec.attempt)
        job.usage_sent = now
        return JobBeat(job_id=job.spec.job_id, attempt=job.spec.attempt, usage=job.usage)

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
            job = RunningJob(spec, usage_sent=time.monotonic())
            job.task = asyncio.create_task(self._run_and_forget(job))
            self.jobs[spec.job_id] = job

    async def _run_and_forget(self, job: RunningJob) -> None:
        slots = self.slots
        assert slots is not None, "jobs come only after registration"
        try:
            if not await slots.take(job.spec, job.abort):
                return  # aborted while it waited for a slot: nothing ran, nothing to report
            try:
                await self.run_job(job.spec, job.abort, job)
            finally:
                await slots.give(job.spec)
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

    async def run_job(self, job: JobSpec, abort: asyncio.Event, running: RunningJob | None = None) -> None:
        ids = {"pilot_id": self.channel.pilot_id, "job_id": job.job_id, "attempt": job.attempt}
        workdir = self.workdir / f"job-{job.job_id}-{job.attempt}"
        shutil.rmtree(workdir, ignore_errors=True)
        output_dir = workdir / "outputs"
        output_dir.mkdir(parents=True)
        owner = self.runtime.owner()
        if owner is not None:  # the payload user writes there, and nowhere else
            for path in (workdir, output_dir):
                os.chown(path, *owner)
        log_path = self.private / f"{job.job_id}.{job.attempt}.log"
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
            refusal = self._cannot_run(job)
            if refusal is not None:
                await self._report(job, JobReport(attempt=job.attempt, state="failed", error_category="pilot",
                                                  error_message=refusal))
                return
            launch = Launch(job.command, job.args, payload_environment(self.settings.payload_env, job), workdir,
                            inputs, job.job_id, Path(job.container_image) if job.container_image else None,
                            job.network)
            # never more than the pilot has: a job retried with more memory than that fails again, with the reason
            memory_mb = min(int(job.memory_mb * self.settings.memory_factor), self.memory_mb)
            limits = Limits(job.wall_time_s, memory_mb * MB,
                            self.settings.max_output_mb * MB, self.settings.max_log_mb * MB,
                            self.settings.max_processes)
            log.info("payload starting", extra={**ids, "command": job.command, "runtime": self.runtime.name})

            def latest(usage: Usage) -> None:
                if running is not None:
                    running.usage = usage

            result: PayloadResult | None
            try:
                result = await run_payload(self.runtime, launch, log_path, limits, abort, self.cgroups,
                                           self.settings.usage_interval_s, latest)
            except OSError as exc:
                log_path.write_text(f"cannot start payload: {exc}\n")
                result = None
            log_file = await asyncio.to_thread(self._stage_log, job, log_path, throttle)
            usage = result.usage if result is not None else None
            failure = payload_failure(result)
            if failure is not None:
                category, message = failure
                await self._report(job, JobReport(attempt=job.attempt, state="failed", error_category=category,
                                                  error_message=message, log=log_file, usage=usage,
                                                  exit_code=None if result is None else result.exit_code),
                                   staged=[log_file] if log_file else [])
                return
            try:
                outputs = await asyncio.to_thread(stage_outputs, job, workdir, self.settings.max_output_mb * MB,
                                                  throttle)
            except (StagingError, ManifestError, UnsafeFile, OutputTooLarge) as exc:
                failed_as: ErrorCategory = (
                    "output_too_large" if isinstance(exc, OutputTooLarge)
                    else "manifest" if isinstance(exc, (ManifestError, UnsafeFile)) else "stage-out")
                await self._report(job, JobReport(attempt=job.attempt, state="failed", error_category=failed_as,
                                                  error_message=str(exc), log=log_file, usage=usage),
                                   staged=[log_file] if log_file else [])
                return
            accepted = await self._report(
                job, JobReport(attempt=job.attempt, state="finished", exit_code=0, outputs=outputs, log=log_file,
                               usage=usage),
                staged=[*outputs, *([log_file] if log_file else [])])
            log.info("job finished" if accepted else "job finished but its attempt was superseded",
                     extra={**ids, "outputs": len(outputs)})
        finally:
            shutil.rmtree(workdir, ignore_errors=True)
            log_path.unlink(missing_ok=True)

    def _cannot_run(self, job: JobSpec) -> str | None:
        """Why this pilot cannot run the job here (another pilot may): an image without a sandbox, or missing."""
        if job.container_image is None:
            return None
        if self.runtime.name != "sandbox":
            return f"this pilot runs payloads plainly and cannot run image {job.container_image}"
        if not Path(job.container_image).is_dir():
            return f"image {job.container_image} is not on this node"
        return None

    def _stage_log(self, job: JobSpec, log_path: Path, throttle: Throttle) -> StagedFile | None:
        try:
            return stage_out(open_regular(str(log_path)), f"{job.job_id}.{job.attempt}.log",
                             job.output_url_prefix + "logs/",
                             f"{job.log_dataset}/{job.job_id}.{job.attempt}.log", throttle=throttle)
        except (OSError, StagingError, UnsafeFile):
            log.exception("log could not be staged", extra={"job_id": job.job_id})
            return None

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


def payload_failure(result: PayloadResult | None) -> tuple[ErrorCategory, str] | None:
    """How a payload failed (its error category and message), or None if it succeeded."""
    if result is None:
        return "payload", "payload could not be started"
    if result.ended_by is not None:
        return ENDED_AS[result.ended_by], result.detail
    if result.exit_code != 0:
        return "payload", f"exit code {result.exit_code}"
    return None


def payload_environment(allowed: list[str], job: JobSpec) -> dict[str, str]:
    """A clean environment: the allowed variables of the pilot's own (never its credentials or broker URL),
    the task's, and the job's coordinates (the runtime adds where its directories are). The task's variables
    were checked at submission."""
    inherited = {name: os.environ[name] for name in allowed if name in os.environ and not name.startswith("WMS_")}
    return {**inherited, **job.env, "WMS_JOB_ID": str(job.job_id), "WMS_ATTEMPT": str(job.attempt)}


def leave_session(path: str | None, session: PilotSession) -> None:
    """The session for the pilot daemon (mode 600, the pilot's own): if this application dies without ending it,
    the daemon says so and the jobs it held are retried at once."""
    if not path:
        return
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as f:
        json.dump({"pilot_id": session.pilot_id, "session": session.session}, f)


async def amain(settings: PilotSettings) -> int:
    pilot = Pilot(settings)
    loop = asyncio.get_running_loop()
    loop.add_signal_handler(signal.SIGTERM, pilot.stopping.set)
    loop.add_signal_handler(signal.SIGINT, pilot.stopping.set)
    return await pilot.run()


def load_settings(argv: list[str]) -> PilotSettings:
    """The pilot's settings with its secrets out of its environment (pilot/credentials.py): re-executes itself
    first if they came in it."""
    credentials.scrub_environment(argv)
    handed = credentials.take_handed_over_secrets()
    settings = PilotSettings()
    # an empty variable means unset, as for every other setting (compose passes WMS_PILOT_TOKEN empty by default)
    secrets = {name.removeprefix("WMS_PILOT_").lower(): value for name, value in handed.items() if value}
    if settings.token_file:
        secrets["token"] = credentials.read_token_file(Path(settings.token_file))
    settings = settings.model_copy(update=secrets)
    credentials.make_undumpable()
    return settings


def main() -> None:
    configure_logging("pilot", os.environ.get("WMS_LOG_LEVEL", "INFO"))
    try:
        settings = load_settings(["-m", "pilot.app"])
        code = asyncio.run(amain(settings))
    except credentials.CredentialFileError as exc:
        log.error("pilot credential unusable", extra={"error": str(exc)})
        code = EXIT_REFUSED
    except Exception:
        log.exception("pilot failed")
        code = EXIT_FAILURE
    sys.exit(code)


if __name__ == "__main__":
    main()

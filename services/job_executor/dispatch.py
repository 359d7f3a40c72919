"""The pilot conversation's domain (whatever the channel): registration, claims, heartbeats, reports.

Fencing: every change a pilot asks for is applied with ``WHERE id = job AND attempt = attempt AND pilot_id =
pilot AND status IN (...)``; a superseded pilot's late report matches nothing and is refused (409).
"""
from __future__ import annotations

import hashlib
import posixpath
import secrets
import time
import uuid
from collections.abc import Callable, Sequence
from typing import Any

from common.db.models import Record
from common.db.session import Database, Transaction
from common.pilot_protocol import (
    Heartbeat,
    HeartbeatReply,
    InputFile,
    JobReport,
    JobSpec,
    PilotRegistration,
    PilotSession,
    StagedFile,
)
from common.policies import memory_for_attempt, resource_types_served
from common.settings import Settings
from common.states import AttemptOutcome, FileRole, FileState, JobState, PilotState
from services.job_executor import errors, queries
from services.job_executor.credentials import PilotGrant, registration_refusal
from services.job_executor.retries import retry_or_fail, retry_policy

PILOT_SLOTS = 1  # jobs a pilot runs at once in this version


class PilotRefused(Exception):
    """The job-executor will not talk with this pilot (the transports map each kind to their answer)."""

    def __init__(self, detail: str) -> None:
        super().__init__(detail)
        self.detail = detail


class UnknownPilot(PilotRefused):
    """No pilot has this id."""


class WrongSession(PilotRefused):
    """The session secret is not this pilot's: nobody may speak for another pilot."""


class PilotEnded(PilotRefused):
    """The pilot was declared dead or exited: its calls are refused, it must stop."""


class PilotBusy(PilotRefused):
    """The pilot holds as many jobs as it has slots (one, in this version): it may not claim more."""


class CredentialMismatch(PilotRefused):
    """The credential does not allow this registration (resource type, cores, GPUs or host)."""


class TooManyRegistrations(Exception):
    """This credential registers pilots faster than its rate: try again later."""

    def __init__(self, retry_after_s: float) -> None:
        super().__init__(f"too many pilot registrations with this credential: retry in {retry_after_s:.1f} s")
        self.retry_after_s = retry_after_s


class RegistrationLimiter:
    """A token bucket per credential (pure: the clock is passed in)."""

    def __init__(self, rate_per_s: float, burst: int) -> None:
        self.rate, self.burst = rate_per_s, burst
        self._buckets: dict[str, tuple[float, float]] = {}  # credential -> (tokens, at)

    def take(self, credential: str, now: float) -> None:
        tokens, at = self._buckets.get(credential, (float(self.burst), now))
        tokens = min(self.burst, tokens + (now - at) * self.rate)
        if tokens < 1:
            self._buckets[credential] = (tokens, now)
            raise TooManyRegistrations((1 - tokens) / self.rate)
        self._buckets[credential] = (tokens - 1, now)


class ReportInvalid(ValueError):
    """The report names files this attempt may not register (outside its storage directory, or an lfn outside
    its job's): refused, nothing changes."""


class ReportRefused(Exception):
    """The report names an attempt this pilot no longer holds: it must stop its payload."""

    def __init__(self, detail: str, current_state: str | None) -> None:
        super().__init__(detail)
        self.detail, self.current_state = detail, current_state


def _hash(session: str) -> str:
    return hashlib.sha256(session.encode()).hexdigest()


def log_dataset(output_dataset: str) -> str:
    return f"{output_dataset}.log"


def check_staged_files(prefix: str, dataset: str, job_id: int, report: JobReport) -> None:
    """What a pilot reports is checked, not trusted: each output lies in this attempt's storage directory and is
    named under its job (``<dataset>/<job>/...``); the log lies in the attempt's ``logs/`` and is named under the
    log dataset. Anything else (another job's name, /proc, a FIFO elsewhere, '..') is a ReportInvalid."""
    expected = [(f, prefix, f"{dataset}/{job_id}/") for f in report.outputs]
    if report.log is not None:
        expected.append((report.log, prefix + "logs/", f"{log_dataset(dataset)}/"))
    for f, url_prefix, lfn_prefix in expected:
        path = f.url.removeprefix("file://")
        if (not f.url.startswith(url_prefix) or posixpath.normpath(path) != path
                or "/" in path.removeprefix(url_prefix.removeprefix("file://"))):
            raise ReportInvalid(f"{f.url!r} is not a file of this attempt's storage directory {url_prefix!r}")
        if not f.lfn.startswith(lfn_prefix) or "/" in f.lfn.removeprefix(lfn_prefix):
            raise ReportInvalid(f"lfn {f.lfn!r} is not a name under {lfn_prefix!r}")


def storage_prefix(settings: Settings, dataset: str, job_id: int, attempt: int) -> str:
    """Where one attempt stages its outputs: a directory per attempt, so a superseded pilot that writes late can
    never overwrite what the current attempt staged and registered."""
    return f"file://{settings.storage_root.rstrip('/')}/{dataset}/{job_id}/{attempt}/"


def staged_file_row(task_id: int, job_id: int, dataset: str, f: StagedFile, role: FileRole) -> dict[str, Any]:
    """The FILE_DAT row of a staged output (in the output dataset) or log (in its log dataset)."""
    return {"lfn": f.lfn, "dataset": dataset if role == FileRole.OUTPUT else log_dataset(dataset),
            "task_id": task_id, "job_id": job_id, "role": role, "url": f.url, "size": f.size,
            "adler32": f.adler32, "events": f.events, "status": FileState.STAGED.value}


def job_spec(settings: Settings, job_id: int, attempt: int, task: Record, inputs: Sequence[Record],
             last_error: str | None = None) -> JobSpec:
    """What a pilot needs to run this attempt: ``task`` (id, payload, output dataset, memory) and the job's inputs;
    ``last_error``: how its previous attempt failed."""
    payload = task.payload
    return JobSpec(
        job_id=job_id, attempt=attempt, task_id=task.id, command=payload["command"], args=payload.get("args", []),
        env=payload.get("env", {}), container_image=payload.get("container_image"),
        network=payload.get("network", True),
        memory_mb=memory_for_attempt(task.memory_mb, last_error, settings.memory_retry_factor),
        inputs=[InputFile(lfn=f.lfn, url=f.url, size=f.size, adler32=f.adler32) for f in inputs],
        output_dataset=task.output_dataset, log_dataset=log_dataset(task.output_dataset),
        output_url_prefix=storage_prefix(settings, task.output_dataset, job_id, attempt),
        wall_time_s=int(payload.get("wall_time_s") or settings.job_wall_time_s))


class Dispatcher:
    def __init__(self, engine: Database, settings: Settings, on_job_ended: Callable[[int], None]) -> None:
        self.engine, self.settings = engine, settings
        self.retry_policy = retry_policy(settings)
        self.registrations = RegistrationLimiter(settings.pilot_registrations_per_s, settings.pilot_registration_burst)
        # Called with the task id when a job reached a terminal state: the task may be complete.
        self.on_job_ended = on_job_ended

    async def register(self, registration: PilotRegistration, channel: str, grant: PilotGrant,
                       peer: str | None = None) -> PilotSession:
        """``grant``: what the pilot's credential allows (checked here, with ``peer``, the address the pilot
        connects from; registrations are rate-limited per credential)."""
        refusal = registration_refusal(grant, registration, peer)
        if refusal is not None:
            raise CredentialMismatch(refusal)
        self.registrations.take(grant.key, time.monotonic())
        session = secrets.token_urlsafe(24)
        async with self.engine.begin() as conn:
            pilot_id = await queries.insert_pilot(
                conn, {**registration.model_dump(), "session_hash": _hash(session), "channel": channel,
                       "credential_id": grant.credential_id}
            )
        return PilotSession(pilot_id=pilot_id, session=session, heartbeat_interval_s=self.settings.heartbeat_interval_s)

    async def authenticate(self, conn: Transaction, pilot_id: int, session: str | None) -> Record:
        pilot = await queries.select_pilot(conn, pilot_id)
        if pilot is None:
            raise UnknownPilot(f"pilot {pilot_id} not registered")
        if session is None or not secrets.compare_digest(pilot.session_hash, _hash(session)):
            raise WrongSession(f"wrong session for pilot {pilot_id}")
        if pilot.status not in (PilotState.IDLE, PilotState.BUSY):
            raise PilotEnded(f"pilot {pilot_id} is {pilot.status}: stop and exit")
        return pilot

    async def claim(self, pilot_id: int, session: str | None, request_id: uuid.UUID | None = None) -> JobSpec | None:
        """Give the pilot its next job (a GPU pilot takes GPU work first, then CPU work), or None.

        ``request_id`` (chosen by the pilot, the same for every retry of one claim) makes the claim idempotent:
        a claim retried after a lost answer (REST) or redelivered after a crash (MQ) gets the attempt the first
        one produced, if it is still the pilot's, instead of a second job.
        """
        async with self.engine.begin() as conn:
            pilot = await self.authenticate(conn, pilot_id, session)
            claimed = None
            if request_id is not None:
                claimed = next(iter(await queries.jobs_claimed_by_request(conn, pilot_id, request_id)), None)
            if claimed is None:
                if await queries.jobs_held_by(conn, pilot_id) >= PILOT_SLOTS:
                    raise PilotBusy(f"pilot {pilot_id} already holds a job: report it before claiming another")
                for resource_type in resource_types_served(pilot.resource_type):
                    claimed = await queries.claim_job(conn, pilot_id, resource_type, pilot.cores, pilot.memory_mb,
                                                      request_id)
                    if claimed is not None:
                        break
                if claimed is None:
                    await queries.set_pilot_busy(conn, pilot_id, None)
                    return None
                await queries.start_attempt(conn, claimed.id, claimed.attempt, pilot_id)
            await queries.set_pilot_busy(conn, pilot_id, claimed.id)
            task, inputs = await queries.job_context(conn, claimed.id)
        return job_spec(self.settings, claimed.id, claimed.attempt, task, inputs)

    async def heartbeat(self, pilot_id: int, session: str | None, beat: Heartbeat) -> HeartbeatReply:
        async with self.engine.begin() as conn:
            await self.authenticate(conn, pilot_id, session)
            await queries.beat_pilot(conn, pilot_id)
            if beat.job_id is None or beat.attempt is None:
                return HeartbeatReply(abort=False)
            if await queries.beat_job(conn, beat.job_id, beat.attempt, pilot_id):
                return HeartbeatReply(abort=False)
            job = await queries.select_job(conn, beat.job_id)
        reason = "job unknown" if job is None else (
            f"job {beat.job_id} is {job.status}, attempt {job.attempt}: this attempt ({beat.attempt}) must stop"
        )
        return HeartbeatReply(abort=True, reason=reason)

    async def report(self, pilot_id: int, session: str | None, job_id: int, report: JobReport) -> None:
        async with self.engine.begin() as conn:
            await self.authenticate(conn, pilot_id, session)
            if report.state == "running":
                if not await queries.start_running(conn, job_id, report.attempt, pilot_id):
                    await self._refuse_unless_repeat(conn, job_id, report.attempt, pilot_id, JobState.RUNNING)
                return
            if report.state == "finished":
                task_id = await self._finish(conn, pilot_id, job_id, report)
            else:
                task_id = await self._fail(conn, pilot_id, job_id, report)
        if task_id is not None:
            self.on_job_ended(task_id)

    async def _finish(self, conn: Transaction, pilot_id: int, job_id: int, report: JobReport) -> int | None:
        moved = await queries.finish_job(conn, job_id, report.attempt, pilot_id, report.exit_code or 0)
        if moved is None:
            # The same final report again (a retry after a lost answer) changes nothing and is no error.
            await self._refuse_unless_repeat(conn, job_id, report.attempt, pilot_id, JobState.FINISHED)
            return None
        task_id = int(moved.task_id)
        await self._stage(conn, task_id, job_id, report)
        await queries.set_input_files(conn, [job_id], FileState.DONE)
        await queries.end_attempts(conn, [(job_id, report.attempt)], AttemptOutcome.FINISHED, report.exit_code or 0,
                                   None, None)
        await queries.set_pilot_busy(conn, pilot_id, None)
        return task_id

    async def _fail(self, conn: Transaction, pilot_id: int, job_id: int, report: JobReport) -> int | None:
        category = report.error_category or "payload"
        in_flight = await queries.attempt_in_flight(conn, job_id, report.attempt, pilot_id)
        retried, failed = await retry_or_fail(conn, in_flight, self.retry_policy, category, report.error_message,
                                              report.exit_code)
        if not retried and not failed:
            await self._refuse_unless_repeat(conn, job_id, report.attempt, pilot_id, None)
            return None
        task_id = (retried or failed)[0].task_id
        if report.log is not None:
            await self._stage(conn, task_id, job_id, report.model_copy(update={"outputs": []}))
        errors.attempts_failed(category)
        await queries.end_attempts(conn, [(job_id, report.attempt)], AttemptOutcome.FAILED, report.exit_code, category,
                                   report.error_message)
        await queries.set_pilot_busy(conn, pilot_id, None)
        return task_id if failed else None

    async def _stage(self, conn: Transaction, task_id: int, job_id: int, report: JobReport) -> None:
        if not report.outputs and report.log is None:
            return
        dataset = (await queries.job_context(conn, job_id))[0].output_dataset
        check_staged_files(storage_prefix(self.settings, dataset, job_id, report.attempt), dataset, job_id, report)

        rows = [staged_file_row(task_id, job_id, dataset, f, FileRole.OUTPUT) for f in report.outputs]
        if report.log:
            rows.append(staged_file_row(task_id, job_id, dataset, report.log, FileRole.LOG))
        await queries.insert_staged_files(conn, rows)

    async def _refuse_unless_repeat(self, conn: Transaction, job_id: int, attempt: int, pilot_id: int,
                                    repeated_state: JobState | None) -> None:
        job = await queries.select_job(conn, job_id)
        if job is None:
            raise ReportRefused(f"job {job_id} not found", None)
        repeated = (job.status, job.attempt, job.pilot_id) == (repeated_state, attempt, pilot_id)
        if repeated_state is not None and repeated:
            return
        raise ReportRefused(
            f"job {job_id} is {job.status} at attempt {job.attempt}; attempt {attempt} of pilot {pilot_id} is "
            "no longer current", job.status,
        )

    async def pilot_exit(self, pilot_id: int, session: str | None) -> None:
        async with self.engine.begin() as conn:
            await self.authenticate(conn, pilot_id, session)
            await queries.end_pilot(conn, pilot_id)

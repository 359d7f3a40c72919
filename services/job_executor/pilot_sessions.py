"""Pilots' sessions, whatever the transport: registration against the pilot's credential (rate-limited per
credential), authentication of every later call by the session secret issued at registration (only its sha256 is
kept), the pilot's exit, and the refusals (each kind has its answer: services/job_executor/refusals.py)."""
from __future__ import annotations

import hashlib
import secrets
import time
from typing import Any

from common.db.models import Record
from common.db.session import Database, Transaction
from common.pilot_protocol import PilotRegistration, PilotSession
from common.settings import Settings
from common.states import PilotState
from services.job_executor import queries
from services.job_executor.credentials import PilotGrant, registration_refusal


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


def _hash(session: str) -> str:
    return hashlib.sha256(session.encode()).hexdigest()


class PilotSessions:
    """Registration (checked against the credential, rate-limited), authentication of every later call by the
    pilot's session secret, and the pilot's exit."""

    def __init__(self, engine: Database, settings: Settings) -> None:
        self.engine, self.settings = engine, settings
        self.registrations = RegistrationLimiter(settings.pilot_registrations_per_s, settings.pilot_registration_burst)

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
        return PilotSession(pilot_id=pilot_id, session=session, heartbeat_interval_s=self.settings.heartbeat_interval_s,
                            prefetch=self.settings.pilot_prefetch.get(registration.resource_type, 0))

    async def authenticate(self, conn: Transaction, pilot_id: int, session: str | None) -> Record:
        pilot: Record = self.check(pilot_id, session, await queries.select_pilot(conn, pilot_id))
        return pilot

    @staticmethod
    def check(pilot_id: int, session: str | None, pilot: Any) -> Any:
        """``pilot``: its row (None: no such pilot); returned if ``session`` is its own and it is live."""
        if pilot is None:
            raise UnknownPilot(f"pilot {pilot_id} not registered")
        if session is None or not secrets.compare_digest(pilot.session_hash, _hash(session)):
            raise WrongSession(f"wrong session for pilot {pilot_id}")
        if pilot.status not in (PilotState.IDLE, PilotState.BUSY):
            raise PilotEnded(f"pilot {pilot_id} is {pilot.status}: stop and exit")
        return pilot

    async def pilot_exit(self, pilot_id: int, session: str | None) -> None:
        async with self.engine.begin() as conn:
            await self.authenticate(conn, pilot_id, session)
            await queries.end_pilot(conn, pilot_id)

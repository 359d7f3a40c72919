"""What each refusal of a pilot's call answers, on REST (the HTTP status) and on RabbitMQ (the reply's status):
one table both transports import."""
from __future__ import annotations

from services.job_executor.pilot_sessions import (
    CredentialMismatch,
    PilotEnded,
    PilotRefused,
    UnknownPilot,
    WrongSession,
)

REFUSAL_STATUS: dict[type[PilotRefused], int] = {UnknownPilot: 404, WrongSession: 403, PilotEnded: 409,
                                                 CredentialMismatch: 403}
REPORT_REFUSED_STATUS = 409  # the attempt is no longer this pilot's
REPORT_INVALID_STATUS = 422  # the report names files the attempt may not register
TOO_MANY_REGISTRATIONS_STATUS = 429


def refusal_status(exc: PilotRefused) -> int:
    return REFUSAL_STATUS[type(exc)]

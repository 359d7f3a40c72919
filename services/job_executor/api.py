"""Pilot REST API: register, claim, heartbeat, report, exit. A pilot token (role 'pilot') and the pilot's own
session secret (header X-Pilot-Session) are needed for every call after registration."""
from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Depends, Header, Path, Request, Response, status
from fastapi.security import HTTPAuthorizationCredentials

from common.auth import bearer, require_role
from common.pilot_protocol import (
    ClaimRequest,
    Heartbeat,
    HeartbeatReply,
    JobReport,
    JobSpec,
    PilotRegistration,
    PilotSession,
)
from common.policies import MAX_ID
from services.job_executor.dispatch import (
    Dispatcher,
    PilotBusy,
    PilotEnded,
    PilotRefused,
    UnknownPilot,
    WrongSession,
)

PILOTS_ONLY = require_role("act as a pilot", {"pilot"})
# The answer to each kind of refusal, on REST and (as the reply's status) on RabbitMQ.
REFUSAL_STATUS: dict[type[PilotRefused], int] = {UnknownPilot: 404, WrongSession: 403, PilotEnded: 409,
                                                 PilotBusy: 409}
REPORT_REFUSED_STATUS = 409
REPORT_INVALID_STATUS = 422


def refusal_status(exc: PilotRefused) -> int:
    return REFUSAL_STATUS[type(exc)]

router = APIRouter(prefix="/pilot/v1", dependencies=[Depends(PILOTS_ONLY)])


def _dispatcher(request: Request) -> Dispatcher:
    return request.app.state.dispatcher


DispatcherDep = Annotated[Dispatcher, Depends(_dispatcher)]
PilotId = Annotated[int, Path(ge=1, le=MAX_ID)]
Session = Annotated[str | None, Header(alias="X-Pilot-Session")]


@router.post("/pilots", response_model=PilotSession, status_code=201,
             responses={429: {"description": "too many registrations with this credential (Retry-After)"}})
async def register_pilot(registration: PilotRegistration, dispatcher: DispatcherDep,
                         credentials: Annotated[HTTPAuthorizationCredentials, Depends(bearer)]) -> PilotSession:
    return await dispatcher.register(registration, channel="rest", credential=credentials.credentials)


@router.post("/pilots/{pilot_id}/claim", response_model=JobSpec, responses={204: {"description": "no work"}})
async def claim_job(pilot_id: PilotId, dispatcher: DispatcherDep, session: Session = None,
                    claim: ClaimRequest | None = None) -> JobSpec | Response:
    job = await dispatcher.claim(pilot_id, session, claim.request_id if claim is not None else None)
    return job if job is not None else Response(status_code=status.HTTP_204_NO_CONTENT)


@router.post("/pilots/{pilot_id}/heartbeat", response_model=HeartbeatReply)
async def heartbeat(pilot_id: PilotId, beat: Heartbeat, dispatcher: DispatcherDep,
                    session: Session = None) -> HeartbeatReply:
    return await dispatcher.heartbeat(pilot_id, session, beat)


@router.post("/pilots/{pilot_id}/jobs/{job_id}/report")
async def report_job(pilot_id: PilotId, job_id: Annotated[int, Path(ge=1, le=MAX_ID)], report: JobReport,
                     dispatcher: DispatcherDep, session: Session = None) -> dict[str, bool]:
    await dispatcher.report(pilot_id, session, job_id, report)
    return {"accepted": True}


@router.post("/pilots/{pilot_id}/exit", status_code=204)
async def pilot_exit(pilot_id: PilotId, dispatcher: DispatcherDep, session: Session = None) -> Response:
    await dispatcher.pilot_exit(pilot_id, session)
    return Response(status_code=204)

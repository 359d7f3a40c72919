"""Pilot REST API: register, claim, heartbeat, report, exit. A pilot credential (an operator-issued one, or a
site-wide token of role 'pilot') and the pilot's own session secret (header X-Pilot-Session) are needed for every
call after registration."""
from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Depends, Header, HTTPException, Path, Request, Response, Security, status
from fastapi.responses import JSONResponse
from fastapi.security import HTTPAuthorizationCredentials

from common.api_docs import hand_decoded_body
from common.auth import bearer
from common.pilot_protocol import (
    ClaimRequest,
    ExchangeReply,
    ExchangeRequest,
    Heartbeat,
    HeartbeatReply,
    JobReport,
    JobSpec,
    PilotLost,
    PilotRegistration,
    PilotSession,
)
from common.policies import MAX_ID
from services.job_executor.credentials import NotAPilotToken, PilotCredentials, PilotGrant
from services.job_executor.exchange import Exchanges
from services.job_executor.exchange_codec import InvalidRequest, decode_request, encode_reply
from services.job_executor.pilot_sessions import PilotSessions
from services.job_executor.single_calls import SingleCalls


async def pilot_grant(request: Request, credentials: Annotated[HTTPAuthorizationCredentials | None,
                                                              Security(bearer, scopes=["pilot"])]) -> PilotGrant:
    """401 without a known, unrevoked pilot credential; 403 for another role's token."""
    unauthorized = HTTPException(status.HTTP_401_UNAUTHORIZED, "missing, unknown or revoked pilot credential",
                                 headers={"WWW-Authenticate": "Bearer"})
    if credentials is None or credentials.scheme.lower() != "bearer":
        raise unauthorized
    store: PilotCredentials = request.app.state.pilot_credentials
    try:
        grant = await store.grant_for(credentials.credentials)
    except NotAPilotToken as exc:
        raise HTTPException(status.HTTP_403_FORBIDDEN, str(exc)) from exc
    if grant is None:
        raise unauthorized
    return grant


Grant = Annotated[PilotGrant, Depends(pilot_grant)]
router = APIRouter(prefix="/pilot/v1", dependencies=[Depends(pilot_grant)], tags=["pilots"])


async def _sessions(request: Request) -> PilotSessions:  # async: no thread-pool hop
    sessions: PilotSessions = request.app.state.sessions
    return sessions


SessionsDep = Annotated[PilotSessions, Depends(_sessions)]
PilotId = Annotated[int, Path(ge=1, le=MAX_ID)]
Session = Annotated[str | None, Header(alias="X-Pilot-Session")]


@router.post("/pilots", response_model=PilotSession, status_code=201,
             responses={403: {"description": "the credential does not allow this resource type, these cores or "
                                             "GPUs, or this host"},
                        429: {"description": "too many registrations with this credential (Retry-After)"}})
async def register_pilot(registration: PilotRegistration, sessions: SessionsDep, grant: Grant,
                         http: Request) -> PilotSession:
    return await sessions.register(registration, channel="rest", grant=grant,
                                     peer=http.client.host if http.client else None)


@router.post("/pilots/{pilot_id}/exchange", response_model=None,
             responses={200: {"model": ExchangeReply, "description": "each report's outcome, abort orders, new jobs"}},
             openapi_extra=hand_decoded_body(ExchangeRequest))
async def exchange(pilot_id: PilotId, http: Request, session: Session = None) -> Response:
    """Protocol 2: the pilot's reports, the heartbeat of its jobs in flight and a claim of up to ``want`` jobs,
    in one call (docs/dispatch.md); each report's outcome comes back on its own (200, 409, 422). The body is the
    ExchangeRequest below, decoded (as strictly) and the reply encoded with msgspec: the hot path
    (services/job_executor/exchange_codec.py)."""
    try:
        request = decode_request(await http.body())
    except InvalidRequest as exc:
        return JSONResponse(status_code=422, content={"detail": [
            {"type": "value_error", "loc": exc.loc, "msg": str(exc)}]})
    exchanges: Exchanges = http.app.state.exchanges
    reply = await exchanges.exchange(pilot_id, session, request, caller_gone=http.is_disconnected)
    return Response(encode_reply(reply), media_type="application/json")


def _single_calls(request: Request) -> SingleCalls:
    single_calls: SingleCalls = request.app.state.single_calls
    return single_calls


SingleCallsDep = Annotated[SingleCalls, Depends(_single_calls)]


@router.post("/pilots/{pilot_id}/claim", response_model=JobSpec, responses={204: {"description": "no work"}})
async def claim_job(pilot_id: PilotId, calls: SingleCallsDep, session: Session = None,
                    claim: ClaimRequest | None = None) -> JobSpec | Response:
    """Protocol 1, an adapter over the exchange (want=1)."""
    job = await calls.claim(pilot_id, session, claim.request_id if claim is not None else None)
    return job if job is not None else Response(status_code=status.HTTP_204_NO_CONTENT)


@router.post("/pilots/{pilot_id}/heartbeat", response_model=HeartbeatReply)
async def heartbeat(pilot_id: PilotId, beat: Heartbeat, calls: SingleCallsDep,
                    session: Session = None) -> HeartbeatReply:
    """Protocol 1, an adapter over the exchange (one job's beat)."""
    return await calls.heartbeat(pilot_id, session, beat)


@router.post("/pilots/{pilot_id}/jobs/{job_id}/report")
async def report_job(pilot_id: PilotId, job_id: Annotated[int, Path(ge=1, le=MAX_ID)], report: JobReport,
                     calls: SingleCallsDep, session: Session = None) -> dict[str, bool]:
    """Protocol 1, an adapter over the exchange (one report)."""
    await calls.report(pilot_id, session, job_id, report)
    return {"accepted": True}


@router.post("/pilots/{pilot_id}/exit", status_code=204)
async def pilot_exit(pilot_id: PilotId, sessions: SessionsDep, session: Session = None) -> Response:
    await sessions.pilot_exit(pilot_id, session)
    return Response(status_code=204)


@router.post("/pilots/{pilot_id}/lost", status_code=204)
async def pilot_lost(pilot_id: PilotId, lost: PilotLost, http: Request, session: Session = None) -> Response:
    """A pilot daemon says its pilot application died (with the session the application left it): the pilot is
    dead and its jobs are retried at once instead of after its heartbeat timeout. Saying it twice is harmless."""
    exchanges: Exchanges = http.app.state.exchanges
    await exchanges.pilot_lost(pilot_id, session, lost.reason)
    return Response(status_code=204)

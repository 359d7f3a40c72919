"""Operators' routes for pilot credentials: issue (the token is shown once), list, revoke."""
from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Depends, Path, Query, Request

from common.db.session import Database
from common.policies import MAX_ID
from services.task_manager import pilot_credentials
from services.task_manager.access_policy import MANAGE_PILOT_CREDENTIALS
from services.task_manager.pilot_credentials import CredentialRequest, CredentialView, IssuedCredential

router = APIRouter(prefix="/api/v1/pilot-credentials", dependencies=[Depends(MANAGE_PILOT_CREDENTIALS)],
                   tags=["credentials"])


async def _engine(request: Request) -> Database:  # async: no thread-pool hop
    engine: Database = request.app.state.engine
    return engine


Engine = Annotated[Database, Depends(_engine)]


@router.post("", response_model=IssuedCredential, status_code=201)
async def issue_credential(request: CredentialRequest, engine: Engine) -> IssuedCredential:
    """A new pilot credential bound to a resource type, core/GPU limits and a host pattern."""
    return await pilot_credentials.issue(engine, request)


@router.get("", response_model=list[CredentialView])
async def list_credentials(engine: Engine, include_revoked: Annotated[bool, Query(alias="all")] = False
                           ) -> list[CredentialView]:
    return list(await pilot_credentials.listing(engine, include_revoked))


@router.post("/{credential_id}/revoke", response_model=CredentialView,
             responses={404: {"description": "no such credential"}})
async def revoke_credential(credential_id: Annotated[int, Path(ge=1, le=MAX_ID)], engine: Engine) -> CredentialView:
    """Revoke: the token is refused from now on (pilots holding it stop being heard and are declared dead)."""
    return await pilot_credentials.revoke(engine, credential_id)

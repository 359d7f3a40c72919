"""Pilot credentials, issued and revoked by operators: each token is shown once, only its sha256 is kept, and it
binds the pilots that register with it to a resource type, core and GPU limits and a host pattern (the
job-executor enforces the binding at registration; a revoked token is refused within WMS_CREDENTIAL_CACHE_S)."""
from __future__ import annotations

import ipaddress
import secrets
from collections.abc import Sequence
from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field, StringConstraints, field_validator, model_validator

from common.auth import token_digest
from common.db.models import Record
from common.db.session import Database
from common.states import RowNotFound
from services.task_manager import queries

TOKEN_PREFIX = "wmsp_"


class CredentialRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    name: Annotated[str, StringConstraints(pattern=r"^[A-Za-z0-9_.-]{1,128}$")] = Field(
        description="who holds it: a node, a rack, a batch queue")
    resource_type: Literal["cpu", "gpu"]
    max_cores: int = Field(ge=1, le=4096, strict=True)
    max_gpus: int = Field(0, ge=0, le=64, strict=True)
    host_pattern: Annotated[str, StringConstraints(pattern=r"^[A-Za-z0-9.*?\[\]-]{1,253}$")] = Field(
        "*", description="a shell glob the pilot's host name must match, e.g. 'wn-gpu-*.spd.jinr.ru' (a label: "
        "the pilot reports its host name itself)")
    network: Annotated[str, StringConstraints(max_length=64)] | None = Field(
        None, description="a network (CIDR, e.g. '10.20.0.0/16') its pilots must connect from, as the job-executor "
        "sees them; such a credential registers over REST only (the broker hides the pilot's address)")

    @field_validator("network")
    @classmethod
    def _a_network(cls, network: str | None) -> str | None:
        if network is None:
            return None
        try:
            return str(ipaddress.ip_network(network, strict=False))
        except ValueError as exc:
            raise ValueError(f"not a network: {exc}") from exc

    @model_validator(mode="after")
    def _gpus_only_for_gpu(self) -> CredentialRequest:
        if self.resource_type == "cpu" and self.max_gpus:
            raise ValueError("a cpu credential cannot allow GPUs (max_gpus must be 0)")
        return self


class CredentialView(BaseModel):
    id: int
    name: str
    resource_type: str
    max_cores: int
    max_gpus: int
    host_pattern: str
    network: str | None = None
    created_at: str
    revoked_at: str | None


class IssuedCredential(CredentialView):
    token: str = Field(description="the pilot's bearer token (WMS_PILOT_TOKEN); shown only now")


def view(row: Record) -> CredentialView:
    return CredentialView(id=row.id, name=row.name, resource_type=row.resource_type, max_cores=row.max_cores,
                          max_gpus=row.max_gpus, host_pattern=row.host_pattern, network=row.network,
                          created_at=row.created_at.isoformat(),
                          revoked_at=row.revoked_at.isoformat() if row.revoked_at else None)


async def issue(engine: Database, request: CredentialRequest) -> IssuedCredential:
    token = TOKEN_PREFIX + secrets.token_urlsafe(32)
    async with engine.begin() as conn:
        row = await queries.insert_pilot_credential(conn, {**request.model_dump(), "token_sha256": token_digest(token)})
    return IssuedCredential(**view(row).model_dump(), token=token)


async def listing(engine: Database, include_revoked: bool) -> Sequence[CredentialView]:
    async with engine.connect() as conn:
        return [view(row) for row in await queries.select_pilot_credentials(conn, include_revoked)]


async def revoke(engine: Database, credential_id: int) -> CredentialView:
    async with engine.begin() as conn:
        row = await queries.revoke_pilot_credential(conn, credential_id)
    if row is None:
        raise RowNotFound("pilot credential", credential_id)
    return view(row)

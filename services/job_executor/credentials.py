"""Who a pilot is: the credential it presents, and what that credential lets it register as.

A pilot presents either an operator-issued credential (PILOT_CREDENTIAL rows: only the token's sha256 is kept,
bound to a resource type, core/GPU limits and a host pattern) or a site-wide pilot token of the settings (role
'pilot', unbound: for a single machine and the development mode). Lookups are cached for
WMS_CREDENTIAL_CACHE_S, so a revocation takes effect within that time.
"""
from __future__ import annotations

import fnmatch
import ipaddress
import time
from dataclasses import dataclass

from common.auth import token_digest, token_role
from common.db.session import Database
from common.pilot_protocol import PilotRegistration
from common.settings import Settings
from services.job_executor import queries

CACHE_LIMIT = 10_000  # entries; beyond, the cache starts over (unknown tokens are cached too)


@dataclass(frozen=True)
class PilotGrant:
    """What a credential lets its pilots register as; None limits: a site-wide token, unbound."""

    key: str  # the token's sha256: rate limits are kept per credential
    credential_id: int | None
    name: str
    resource_type: str | None = None
    max_cores: int | None = None
    max_gpus: int | None = None
    host_pattern: str = "*"
    network: str | None = None  # CIDR the pilot's connections must come from


class NotAPilotToken(Exception):
    """A valid token of another role (wfms, operator, service): 403, not 401."""


def registration_refusal(grant: PilotGrant, registration: PilotRegistration, peer: str | None = None) -> str | None:
    """Why ``grant`` does not allow this registration from ``peer`` (the address the server sees; None over the
    broker, which hides it), or None (pure)."""
    name = f"credential {grant.name!r}"
    if grant.network is not None:
        if peer is None:
            return f"{name} is bound to network {grant.network}: register over REST (the broker hides the address)"
        try:
            inside = ipaddress.ip_address(peer) in ipaddress.ip_network(grant.network)
        except ValueError:
            inside = False
        if not inside:
            return f"{name} is for connections from {grant.network}, not {peer}"
    if grant.resource_type is not None and registration.resource_type != grant.resource_type:
        return f"{name} registers {grant.resource_type} pilots only, not {registration.resource_type}"
    if grant.max_cores is not None and registration.cores > grant.max_cores:
        return f"{name} allows at most {grant.max_cores} cores, not {registration.cores}"
    if grant.max_gpus is not None and registration.gpus > grant.max_gpus:
        return f"{name} allows at most {grant.max_gpus} GPUs, not {registration.gpus}"
    if not fnmatch.fnmatchcase(registration.host.lower(), grant.host_pattern.lower()):
        return f"{name} is for hosts matching {grant.host_pattern!r}, not {registration.host!r}"
    return None


class PilotCredentials:
    def __init__(self, engine: Database, settings: Settings) -> None:
        self.engine, self.settings = engine, settings
        self.ttl_s = settings.credential_cache_s
        self._cache: dict[str, tuple[PilotGrant | None, float]] = {}

    async def grant_for(self, token: str) -> PilotGrant | None:
        """The grant of ``token``; None if it is unknown or revoked; NotAPilotToken for another role's token."""
        digest = token_digest(token)
        role = token_role(self.settings, token)
        if role == "pilot":
            return PilotGrant(key=digest, credential_id=None, name="site-wide pilot token")
        if role is not None:
            raise NotAPilotToken(f"role {role!r} may not act as a pilot")
        now = time.monotonic()
        cached = self._cache.get(digest)
        if cached is not None and cached[1] > now:
            return cached[0]
        async with self.engine.connect() as conn:
            row = await queries.live_credential(conn, digest)
        grant = None if row is None else PilotGrant(
            key=digest, credential_id=row.id, name=row.name, resource_type=row.resource_type,
            max_cores=row.max_cores, max_gpus=row.max_gpus, host_pattern=row.host_pattern, network=row.network)
        if len(self._cache) >= CACHE_LIMIT:
            self._cache.clear()
        self._cache[digest] = (grant, now + self.ttl_s)
        return grant

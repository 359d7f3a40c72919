"""Bearer-token authentication with roles; which role may do what is each service's named access policy."""
from __future__ import annotations

import hashlib
import hmac
from collections.abc import Callable, Collection
from typing import NamedTuple, cast

from fastapi import HTTPException, Request, Security, status
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer

from common.settings import Role, Settings

bearer = HTTPBearer(auto_error=False, description="Bearer token; the settings map each token to a role")


def token_digest(token: str) -> str:
    """What is kept of an operator-issued credential: its sha256 (looked up by value, never compared by prefix)."""
    return hashlib.sha256(token.encode()).hexdigest()


class Identity(NamedTuple):
    """Who a token speaks for: its role and its name (the owner of the tasks it submits, the actor in audits)."""

    role: Role
    name: str


def token_identity(settings: Settings, token: str) -> Identity | None:
    """The identity of ``token``, compared in constant time against every configured token (so the time taken
    does not tell how much of a guess was right). Several tokens may hold one role: rotate by adding the new one,
    moving clients, then removing the old one (give both the same name to keep ownership)."""
    presented = token.encode()
    found: str | None = None
    for known, grant in settings.api_tokens.items():
        if hmac.compare_digest(presented, known.encode()):
            found = grant
    if found is None:
        return None
    role, _, name = found.partition(":")
    return Identity(cast(Role, role), name or f"{role}#{token_digest(token)[:8]}")


def token_role(settings: Settings, token: str) -> Role | None:
    identity = token_identity(settings, token)
    return None if identity is None else identity.role


def identity_of(settings: Settings, credentials: HTTPAuthorizationCredentials | None) -> Identity:
    if credentials is None or credentials.scheme.lower() != "bearer":
        raise HTTPException(
            status.HTTP_401_UNAUTHORIZED, "missing bearer token", headers={"WWW-Authenticate": "Bearer"}
        )
    identity = token_identity(settings, credentials.credentials)
    if identity is None:
        raise HTTPException(
            status.HTTP_401_UNAUTHORIZED, "unknown bearer token", headers={"WWW-Authenticate": "Bearer"}
        )
    return identity


def role_of(settings: Settings, credentials: HTTPAuthorizationCredentials | None) -> Role:
    return identity_of(settings, credentials).role


def require_identity(action: str, allowed: Collection[Role]) -> Callable[..., Identity]:
    """A FastAPI dependency: 401 without a valid token, 403 when the token's role may not do ``action``; the
    caller's identity."""

    # the roles are the security requirement's scopes in the OpenAPI document (OpenAPI 3.1: role names)
    def dependency(
        request: Request,
        credentials: HTTPAuthorizationCredentials | None = Security(bearer, scopes=sorted(allowed)),  # noqa: B008
    ) -> Identity:
        identity = identity_of(request.app.state.settings, credentials)
        if identity.role not in allowed:
            raise HTTPException(status.HTTP_403_FORBIDDEN, f"role {identity.role!r} may not {action}")
        return identity

    return dependency


def require_role(action: str, allowed: Collection[Role]) -> Callable[..., Identity]:
    """require_identity, for routes that only care about the role."""
    return require_identity(action, allowed)

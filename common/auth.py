"""Bearer-token authentication with roles; which role may do what is each service's named access policy."""
from __future__ import annotations

import hashlib
import hmac
from collections.abc import Callable, Collection

from fastapi import HTTPException, Request, Security, status
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer

from common.settings import Role, Settings

bearer = HTTPBearer(auto_error=False, description="Bearer token; the settings map each token to a role")


def token_digest(token: str) -> str:
    """What is kept of an operator-issued credential: its sha256 (looked up by value, never compared by prefix)."""
    return hashlib.sha256(token.encode()).hexdigest()


def token_role(settings: Settings, token: str) -> Role | None:
    """The role of ``token``, compared in constant time against every configured token (so the time taken does
    not tell how much of a guess was right). Several tokens may hold one role: rotate by adding the new one,
    moving clients, then removing the old one."""
    presented = token.encode()
    found: Role | None = None
    for known, role in settings.api_tokens.items():
        if hmac.compare_digest(presented, known.encode()):
            found = role
    return found


def role_of(settings: Settings, credentials: HTTPAuthorizationCredentials | None) -> Role:
    if credentials is None or credentials.scheme.lower() != "bearer":
        raise HTTPException(
            status.HTTP_401_UNAUTHORIZED, "missing bearer token", headers={"WWW-Authenticate": "Bearer"}
        )
    role = token_role(settings, credentials.credentials)
    if role is None:
        raise HTTPException(
            status.HTTP_401_UNAUTHORIZED, "unknown bearer token", headers={"WWW-Authenticate": "Bearer"}
        )
    return role


def require_role(action: str, allowed: Collection[Role]) -> Callable[..., Role]:
    """A FastAPI dependency: 401 without a valid token, 403 when the token's role may not do ``action``."""

    # the roles are the security requirement's scopes in the OpenAPI document (OpenAPI 3.1: role names)
    def dependency(
        request: Request,
        credentials: HTTPAuthorizationCredentials | None = Security(bearer, scopes=sorted(allowed)),  # noqa: B008
    ) -> Role:
        role = role_of(request.app.state.settings, credentials)
        if role not in allowed:
            raise HTTPException(status.HTTP_403_FORBIDDEN, f"role {role!r} may not {action}")
        return role

    return dependency

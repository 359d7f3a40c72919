"""Which failures are an outage (the database, the broker or the DSM is briefly unavailable: try again later)
and which are a verdict (bad input, a refused change: retrying cannot help).

Consumers retry an outage with growing delay and never spend a message's delivery limit on it; HTTP answers it
with 503; loops back off and resume by themselves.
"""
from __future__ import annotations

import asyncio
import errno

import asyncpg
from sqlalchemy.exc import DBAPIError, InterfaceError, OperationalError
from sqlalchemy.exc import TimeoutError as PoolTimeout

from common.dsm import DsmUnavailable

# SQLSTATE classes and codes that mean "the server is not (yet) there", not "your statement is wrong":
# connection exceptions (08), admin shutdown / crash shutdown / cannot connect now (57P01-3), too many
# connections (53300), query cancelled by statement_timeout (57014).
TRANSIENT_SQLSTATE_PREFIXES = ("08",)
TRANSIENT_SQLSTATES = {"57P01", "57P02", "57P03", "53300", "57014", "40P01", "40001"}


NETWORK_ERRNOS = frozenset({errno.ECONNREFUSED, errno.ECONNRESET, errno.ECONNABORTED, errno.ETIMEDOUT,
                            errno.EHOSTUNREACH, errno.ENETUNREACH, errno.ENETDOWN, errno.EPIPE})


class BrokerUnavailable(ConnectionError):
    """The broker connection is down (being re-established)."""


def _sqlstate(exc: BaseException) -> str | None:
    for candidate in (exc, getattr(exc, "orig", None), getattr(getattr(exc, "orig", None), "__cause__", None),
                      exc.__cause__):
        code = getattr(candidate, "sqlstate", None)
        if isinstance(code, str) and code:
            return code
    return None


def is_transient(exc: BaseException) -> bool:
    """True when ``exc`` means a dependency is unavailable for now (retry later), False for a verdict."""
    if isinstance(exc, (DsmUnavailable, BrokerUnavailable, PoolTimeout, asyncio.TimeoutError, TimeoutError,
                        ConnectionError, asyncpg.exceptions.PostgresConnectionError,
                        asyncpg.exceptions.InterfaceError)):
        return True
    if isinstance(exc, (OperationalError, InterfaceError)) or (isinstance(exc, DBAPIError)
                                                                and exc.connection_invalidated):
        return True
    code = _sqlstate(exc)
    if code is not None:
        return code in TRANSIENT_SQLSTATES or code.startswith(TRANSIENT_SQLSTATE_PREFIXES)
    if isinstance(exc, DBAPIError):
        # a driver error without SQLSTATE is a lost connection (asyncpg raises those as plain errors)
        return isinstance(exc.orig, (OSError, asyncio.TimeoutError)) or "connection" in str(exc).lower()
    # A socket error is an outage (asyncpg reports a refused connect to several addresses as a bare OSError
    # without errno); a file that is missing or unreadable is a verdict, not something to retry forever.
    return isinstance(exc, OSError) and (exc.errno is None or exc.errno in NETWORK_ERRNOS)


def backoff_s(retries: int, base_s: float, max_s: float) -> float:
    """Delay before retry number ``retries`` (1-based): base x 2^(retries-1), capped at ``max_s``."""
    return min(base_s * 2.0 ** max(retries - 1, 0), max_s)


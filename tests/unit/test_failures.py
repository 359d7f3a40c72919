"""Which failures are an outage (retry later, never a dead letter) and which are a verdict."""
from __future__ import annotations

import asyncpg
from hypothesis import given
from hypothesis import strategies as st
from sqlalchemy.exc import IntegrityError, OperationalError

from common.dsm import DsmError, DsmUnavailable
from common.failures import BrokerUnavailable, backoff_s, is_transient
from common.messages import BadMessage


class _Pg(Exception):
    def __init__(self, sqlstate: str) -> None:
        super().__init__(sqlstate)
        self.sqlstate = sqlstate


def test_outages_are_transient() -> None:
    assert is_transient(DsmUnavailable(503, "down"))
    assert is_transient(DsmUnavailable(0, "connection refused"))
    assert is_transient(BrokerUnavailable("reconnecting"))
    assert is_transient(TimeoutError())
    assert is_transient(ConnectionRefusedError())
    assert is_transient(OperationalError("SELECT 1", {}, ConnectionResetError()))
    assert is_transient(asyncpg.exceptions.CannotConnectNowError("starting up"))
    for code in ("08006", "57P01", "57P03", "53300", "40P01"):
        assert is_transient(_Pg(code)), code


def test_verdicts_are_not_transient() -> None:
    assert not is_transient(DsmError(409, "closed"))
    assert not is_transient(DsmError(404, "no such dataset"))
    assert not is_transient(BadMessage("not an envelope"))
    assert not is_transient(ValueError("bad"))
    assert not is_transient(IntegrityError("INSERT", {}, _Pg("23505")))
    assert not is_transient(_Pg("22P02"))  # invalid text representation: the statement is wrong
    assert not is_transient(FileNotFoundError(2, "no such file"))  # a bug or bad input: never retried forever
    assert not is_transient(PermissionError(13, "denied"))
    assert is_transient(OSError("Multiple exceptions: [Errno 111] Connect call failed"))  # asyncpg's connect


@given(st.integers(1, 60), st.floats(0.01, 10), st.floats(0.01, 600))
def test_backoff_doubles_and_is_capped(retries: int, base: float, cap: float) -> None:
    delay = backoff_s(retries, base, cap)
    assert 0 < delay <= cap
    assert delay == min(base * 2 ** (retries - 1), cap)
    assert backoff_s(retries + 1, base, cap) >= delay

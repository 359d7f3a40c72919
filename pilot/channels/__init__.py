"""The pilot's two ways to talk to the job-executor: REST (aiohttp) and RabbitMQ (aio-pika); same operations.

Two kinds of failure, and the pilot treats them differently: a refusal (4xx: this pilot or attempt is
superseded, unknown, or its request is wrong) is final; an outage (5xx, a timeout, a lost connection, the
broker down) only means "try again later".
"""
from __future__ import annotations

from typing import Any


class ChannelRefused(Exception):
    """The job-executor refused the request (4xx; 409: this pilot or attempt is superseded)."""

    def __init__(self, status: int, detail: Any) -> None:
        super().__init__(f"{status}: {detail}")
        self.status, self.detail = status, detail


class ChannelUnavailable(Exception):
    """The job-executor (or the broker, or its database) could not answer now: retry later (not before
    ``retry_after_s`` when the server said so: Retry-After, or a 429's retry_after_s)."""

    def __init__(self, message: str, retry_after_s: float | None = None) -> None:
        super().__init__(message)
        self.retry_after_s = retry_after_s


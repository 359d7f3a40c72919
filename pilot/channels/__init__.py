"""The pilot's two ways to talk to the job-executor: REST (aiohttp) and RabbitMQ (aio-pika); same operations."""
from __future__ import annotations

from typing import Any


class ChannelRefused(Exception):
    """The job-executor answered with an error status (409: this pilot or attempt is superseded)."""

    def __init__(self, status: int, detail: Any) -> None:
        super().__init__(f"{status}: {detail}")
        self.status, self.detail = status, detail

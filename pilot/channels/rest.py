"""REST channel of the pilot (aiohttp, one session for the pilot's life)."""
from __future__ import annotations

from typing import Any

import aiohttp

from common.pilot_protocol import ExchangeReply, ExchangeRequest, PilotLost, PilotRegistration, PilotSession
from common.retry_after import seconds_of
from pilot.channels import ChannelRefused, ChannelUnavailable

DETAIL_MAX = 1000


class RestChannel:
    """``server_url``: one job-executor URL, or several separated by commas (replicas): a call that finds its
    server unavailable moves the channel on to the next one, where the caller's retry goes (a pilot's session is
    valid at every replica)."""

    def __init__(self, server_url: str, token: str, timeout_s: float) -> None:
        self.bases = [url.strip().rstrip("/") + "/pilot/v1" for url in server_url.split(",") if url.strip()]
        if not self.bases:
            raise ValueError("no job-executor URL")
        self._current = 0
        self.timeout_s = timeout_s
        self._http = aiohttp.ClientSession(headers={"Authorization": f"Bearer {token}"},
                                           timeout=aiohttp.ClientTimeout(total=timeout_s))
        self.pilot_id: int | None = None

    async def _post(self, path: str, body: Any = None, wait_s: float = 0.0) -> tuple[int, bytes]:
        """``wait_s``: how long the job-executor may hold the answer (a long poll), on top of the timeout."""
        timeout = aiohttp.ClientTimeout(total=self.timeout_s + wait_s)
        try:
            async with self._http.post(self.base + path, json=body, headers=self._session_header,
                                       timeout=timeout) as response:
                data = await response.read()
                status, retry_after = response.status, seconds_of(response.headers.get("Retry-After"))
        except (aiohttp.ClientError, TimeoutError, OSError) as exc:
            self._move_on()
            raise ChannelUnavailable(f"{type(exc).__name__}: {exc}") from exc
        detail = data[:DETAIL_MAX].decode(errors="replace")
        if status >= 500:  # unavailable: the next replica, later
            self._move_on()
            raise ChannelUnavailable(f"{status}: {detail}", retry_after)
        if status == 429:  # too busy for us now: later, here
            raise ChannelUnavailable(f"{status}: {detail}", retry_after)
        if status >= 300:
            raise ChannelRefused(status, detail)
        return status, data

    @property
    def base(self) -> str:
        return self.bases[self._current]

    def _move_on(self) -> None:
        self._current = (self._current + 1) % len(self.bases)

    @property
    def _session_header(self) -> dict[str, str]:
        return {"X-Pilot-Session": self._session} if self.pilot_id is not None else {}

    async def register(self, registration: PilotRegistration) -> PilotSession:
        _, data = await self._post("/pilots", registration.model_dump())
        session = PilotSession.model_validate_json(data)
        self.pilot_id, self._session = session.pilot_id, session.session
        return session

    async def exchange(self, request: ExchangeRequest) -> ExchangeReply:
        _, data = await self._post(f"/pilots/{self.pilot_id}/exchange", request.model_dump(mode="json"),
                                   wait_s=request.wait_s)
        return ExchangeReply.model_validate_json(data)

    async def exit(self) -> None:
        await self._post(f"/pilots/{self.pilot_id}/exit")

    def resume(self, pilot_id: int, session: str) -> None:
        """Speak for a pilot registered earlier (its daemon, with the session the application left it)."""
        self.pilot_id, self._session = pilot_id, session

    async def lost(self, reason: str) -> None:
        """The pilot application died holding jobs: they are retried at once."""
        await self._post(f"/pilots/{self.pilot_id}/lost", PilotLost(reason=reason).model_dump())

    async def close(self) -> None:
        await self._http.close()

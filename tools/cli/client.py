"""The task-manager API as the CLI uses it: synchronous, every failure turned into one clear CliError."""
from __future__ import annotations

import random
import sys
import time
from typing import Any

import httpx
from pydantic_settings import BaseSettings, SettingsConfigDict

from common.retry_after import retry_wait_s

EXIT_API_ERROR = 1  # the API refused (4xx) or failed (5xx)
EXIT_UNREACHABLE = 3  # the task-manager cannot be reached
DETAIL_MAX = 500  # characters of a non-JSON error answer shown


class CliSettings(BaseSettings):
    """WMS_CLI_URL, WMS_CLI_TOKEN, WMS_CLI_DSM_URL, WMS_CLI_DSM_TOKEN (the project's WMS_ prefix)."""

    model_config = SettingsConfigDict(env_prefix="WMS_CLI_", extra="ignore")

    url: str = "http://127.0.0.1:8081"
    token: str = "dev-operator-token"
    dsm_url: str = "http://127.0.0.1:8084"
    # Writing to the DSM (the demo registers its raw data, as a DAQ would) takes the service role.
    dsm_token: str = "dev-service-token"
    timeout_s: float = 30.0
    # A 503 or 429 (the database or broker restarting, a busy service) is waited out this long, then reported.
    retry_s: float = 120.0


class CliError(Exception):
    def __init__(self, message: str, exit_code: int = EXIT_API_ERROR) -> None:
        super().__init__(message)
        self.exit_code = exit_code


def _reason(response: httpx.Response) -> str:
    try:
        body = response.json()
    except ValueError:
        return response.text[:DETAIL_MAX] or response.reason_phrase
    detail = body.get("detail", body) if isinstance(body, dict) else body
    if isinstance(detail, list):  # FastAPI validation errors: one line per field
        return "; ".join(f"{'.'.join(str(p) for p in e.get('loc', [])[1:]) or 'body'}: {e.get('msg')}" for e in detail)
    extra = {k: v for k, v in body.items() if k != "detail"} if isinstance(body, dict) else {}
    return f"{detail}" + (f" ({', '.join(f'{k}: {v}' for k, v in extra.items())})" if extra else "")


RETRIED_STATUSES = (429, 503)  # "later": nothing was done, asking again is safe


class Api:
    def __init__(self, base_url: str, token: str, timeout_s: float = 30.0, retry_s: float = 120.0) -> None:
        self.base_url = base_url.rstrip("/")
        self.token = token
        self.retry_s = retry_s
        self._http = httpx.Client(base_url=self.base_url, timeout=timeout_s,
                                  headers={"Authorization": f"Bearer {token}"})

    def request(self, method: str, path: str, **kwargs: Any) -> Any:
        deadline = time.monotonic() + self.retry_s
        attempt = 0
        while True:
            try:
                response = self._http.request(method, path, **kwargs)
            except httpx.TransportError as exc:
                raise CliError(f"cannot reach {self.base_url}: {exc or type(exc).__name__} "
                               "(is the WMS running? set WMS_CLI_URL)", EXIT_UNREACHABLE) from exc
            attempt += 1
            wait = retry_wait_s(response.headers.get("Retry-After"), attempt, random.random())
            if response.status_code not in RETRIED_STATUSES or time.monotonic() + wait > deadline:
                break
            say_waiting(f"{self.base_url} answered {response.status_code} ({_reason(response)}); retrying in "
                        f"{wait:.0f} s")
            time.sleep(wait)
        if response.status_code >= 400:
            raise CliError(f"{method} {path}: HTTP {response.status_code}: {_reason(response)}")
        return response.json() if response.content else None

    def get(self, path: str, **params: Any) -> Any:
        return self.request("GET", path, params={k: v for k, v in params.items() if v is not None})

    def post(self, path: str, body: Any = None) -> Any:
        return self.request("POST", path, json=body)

    def patch(self, path: str, body: Any) -> Any:
        return self.request("PATCH", path, json=body)

    def close(self) -> None:
        self._http.close()


def say_waiting(message: str) -> None:
    """What the CLI is waiting for (a 503 being waited out), on stderr."""
    print(f"wms: {message}", file=sys.stderr, flush=True)

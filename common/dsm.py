"""Client of the data management system (DSM), configured by URL: the reference DSM or a site's own.

What the WMS needs of a DSM: a dataset's structure (its files after a stable cursor, and whether it is closed),
registration of files (outputs, logs) in a dataset, and closing a dataset.
"""
from __future__ import annotations

import asyncio
import json
import random
import time
from collections.abc import Callable
from typing import Annotated, Any, Literal

import aiohttp
from pydantic import AfterValidator, BaseModel, ConfigDict, Field

from common.retry_after import retry_wait_s

LFN_PATTERN = r"^[A-Za-z0-9_.:/+=-]{1,1024}$"
# Dataset names: dot-separated words (no empty, '.' or '..' part: a name is also a path on storage).
DATASET_NAME_PATTERN = r"^[A-Za-z0-9_:+-]+(\.[A-Za-z0-9_:+-]+)*$"


def check_lfn(lfn: str) -> str:
    """An lfn is a relative path of words: no empty, '.' or '..' part (it names a file on storage too)."""
    parts = lfn.split("/")
    if lfn.startswith("/") or any(p in ("", ".", "..") for p in parts):
        raise ValueError(f"lfn {lfn!r} must be a relative path without empty, '.' or '..' parts")
    return lfn


Lfn = Annotated[str, Field(pattern=LFN_PATTERN), AfterValidator(check_lfn)]
# A file's URL: scheme://path, printable, no spaces (file:// on shared storage; root://, davs://, https:// at
# sites with such storage).
URL_PATTERN = r"^[a-z][a-z0-9+.-]*://[!-~]+$"
FileUrl = Annotated[str, Field(min_length=1, max_length=4096, pattern=URL_PATTERN)]
# Counts are integers, never booleans or strings that look like numbers.
Count = Annotated[int, Field(strict=True, ge=0, le=2**62)]
DatasetName = Annotated[str, Field(min_length=1, max_length=512, pattern=DATASET_NAME_PATTERN)]
DETAIL_MAX = 500  # bytes of a non-JSON error body kept in a DsmError


class DsmFile(BaseModel):
    model_config = ConfigDict(extra="forbid")

    lfn: Lfn
    url: FileUrl
    size: Count
    adler32: str = Field(pattern=r"^[0-9a-f]{8}$")
    events: Count | None = None


class DsmFileEntry(DsmFile):
    seq: int = Field(description="position in the dataset: the cursor to continue after")


class Dataset(BaseModel):
    name: str
    status: Literal["open", "closed"]
    n_files: int


# Every list of the WMS's APIs is a page: {"items": [...], "next_after": cursor or null}. Pass next_after as
# ?after= for the next page; null when this page was the last (for an open dataset: the last for now; a reader
# following it asks again later after the last item it saw).


class DatasetPage(BaseModel):
    items: list[Dataset]
    next_after: str | None = Field(description="pass as ?after= for the next page; null on the last page")


class FilePage(BaseModel):
    items: list[DsmFileEntry]
    next_after: int | None = Field(description="pass as ?after= for the next page; null on the last page (for an "
                                   "open dataset, the last for now: ask again later after the last seq seen)")
    status: Literal["open", "closed"]
    n_files: int


class Registration(BaseModel):
    """The answer to a registration of files."""

    registered: int = Field(description="files new in the dataset")
    already_registered: int = Field(description="files it held already, identical (a repeated request)")


class DsmError(Exception):
    def __init__(self, status: int, detail: Any) -> None:
        super().__init__(f"DSM answered {status}: {detail}")
        self.status, self.detail = status, detail


class DsmUnavailable(DsmError):
    """The DSM could not answer now (5xx, 429, timeout, connection refused): try again later. ``status`` is 0
    when no HTTP answer came at all."""

    def __init__(self, status: int, detail: Any) -> None:
        super().__init__(status, detail)
        if status == 0:
            self.args = (f"DSM unreachable: {detail}",)


def _is_outage(status: int) -> bool:
    return status >= 500 or status == 429


class DsmClient:
    """One aiohttp session per process; every call raises DsmError on a non-2xx answer."""

    def __init__(self, base_url: str, token: str, timeout_s: float = 30.0, retry_s: float = 0.0,
                 on_wait: Callable[[str], object] | None = None) -> None:
        """``retry_s``: how long a 503 or 429 is waited out (honouring Retry-After) before DsmUnavailable is
        raised; 0 (the services: their messages and loops retry) raises at once. ``on_wait`` hears what is
        waited for."""
        self.base_url = base_url.rstrip("/") + "/dsm/v1"
        self.retry_s, self.on_wait = retry_s, on_wait
        self._session = aiohttp.ClientSession(
            headers={"Authorization": f"Bearer {token}"}, timeout=aiohttp.ClientTimeout(total=timeout_s)
        )

    async def close(self) -> None:
        await self._session.close()

    async def _call(self, method: str, path: str, **kw: Any) -> bytes:
        deadline = time.monotonic() + self.retry_s
        attempt = 0
        while True:
            try:
                async with self._session.request(method, self.base_url + path, **kw) as response:
                    body = await response.read()
                    status, retry_after = response.status, response.headers.get("Retry-After")
            except (aiohttp.ClientError, TimeoutError, OSError) as exc:
                raise DsmUnavailable(0, f"{type(exc).__name__}: {exc}") from exc
            attempt += 1
            wait = retry_wait_s(retry_after, attempt, random.random())
            if status not in (429, 503) or time.monotonic() + wait > deadline:
                break
            if self.on_wait is not None:
                self.on_wait(f"the DSM answered {status} to {method} {path}; retrying in {wait:.0f} s")
            await asyncio.sleep(wait)
        if status >= 300:
            try:
                detail = json.loads(body).get("detail")
            except (ValueError, AttributeError):
                detail = body[:DETAIL_MAX].decode(errors="replace")
            raise (DsmUnavailable if _is_outage(status) else DsmError)(status, detail)
        return body

    async def dataset(self, name: str) -> Dataset | None:
        try:
            return Dataset.model_validate_json(await self._call("GET", f"/datasets/{name}"))
        except DsmError as exc:
            if exc.status == 404:
                return None
            raise

    async def list_datasets(self, prefix: str = "", after: str | None = None, limit: int = 100) -> DatasetPage:
        params: dict[str, str | int] = {"prefix": prefix, "limit": limit}
        if after is not None:
            params["after"] = after
        return DatasetPage.model_validate_json(await self._call("GET", "/datasets", params=params))

    async def create_dataset(self, name: str) -> Dataset:
        return Dataset.model_validate_json(await self._call("POST", "/datasets", json={"name": name}))

    async def list_files(self, name: str, after: int, limit: int) -> FilePage:
        return FilePage.model_validate_json(
            await self._call("GET", f"/datasets/{name}/files", params={"after": after, "limit": limit})
        )

    async def register_files(self, name: str, files: list[DsmFile]) -> Registration:
        body = {"files": [f.model_dump() for f in files]}
        return Registration.model_validate_json(await self._call("POST", f"/datasets/{name}/files", json=body))

    async def close_dataset(self, name: str) -> Dataset:
        return Dataset.model_validate_json(await self._call("POST", f"/datasets/{name}/close"))

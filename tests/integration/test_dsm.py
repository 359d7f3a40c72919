"""The reference DSM over HTTP through the WMS's DSM client: datasets, registration, cursor paging, closure."""
from __future__ import annotations

import asyncio

import aiohttp
import pytest

from common.dsm import DsmClient, DsmError, DsmFile
from tests.conftest import PILOT_TOKEN


def files(start: int, n: int, events: int | None = 100) -> list[DsmFile]:
    return [
        DsmFile(lfn=f"raw/f{i:05d}.tsl", url=f"file:///data/raw/f{i:05d}.tsl", size=1000 + i, adler32=f"{i:08x}",
                events=events)
        for i in range(start, start + n)
    ]


async def test_dataset_life(dsm: DsmClient) -> None:
    assert await dsm.dataset("spd.raw.run1") is None
    created = await dsm.create_dataset("spd.raw.run1")
    assert (created.status, created.n_files) == ("open", 0)
    assert (await dsm.create_dataset("spd.raw.run1")).name == "spd.raw.run1"  # idempotent

    assert (await dsm.register_files("spd.raw.run1", files(0, 5))).model_dump() == {"registered": 5,
                                                                                 "already_registered": 0}
    # a retried request registers nothing twice
    assert (await dsm.register_files("spd.raw.run1", files(3, 4))).model_dump() == {"registered": 2,
                                                                                 "already_registered": 2}
    with pytest.raises(DsmError) as conflict:
        changed = files(0, 1)[0].model_copy(update={"size": 1})
        await dsm.register_files("spd.raw.run1", [changed])
    assert conflict.value.status == 409

    # one pagination convention (issue 22, finding 11): items, and next_after null on the last page (the DSM
    # repeated the request's after there)
    page = await dsm.list_files("spd.raw.run1", after=0, limit=4)
    assert [f.seq for f in page.items] == [1, 2, 3, 4] and page.next_after == 4 and page.status == "open"
    rest = await dsm.list_files("spd.raw.run1", after=page.next_after, limit=4)
    assert [f.lfn for f in rest.items] == ["raw/f00004.tsl", "raw/f00005.tsl", "raw/f00006.tsl"]
    assert rest.next_after is None
    end = await dsm.list_files("spd.raw.run1", after=7, limit=4)
    assert end.items == [] and end.next_after is None
    await dsm.create_dataset("spd.raw.run2")
    first = await dsm.list_datasets("spd.raw.", limit=1)
    assert [d.name for d in first.items] == ["spd.raw.run1"] and first.next_after == "spd.raw.run1"
    last = await dsm.list_datasets("spd.raw.", after=first.next_after, limit=1)
    assert [d.name for d in last.items] == ["spd.raw.run2"] and last.next_after == "spd.raw.run2"
    assert (await dsm.list_datasets("spd.raw.", after=last.next_after, limit=1)).model_dump() == {
        "items": [], "next_after": None}

    closed = await dsm.close_dataset("spd.raw.run1")
    assert (closed.status, closed.n_files) == ("closed", 7)
    with pytest.raises(DsmError) as refused:
        await dsm.register_files("spd.raw.run1", files(100, 1))
    assert refused.value.status == 409
    # re-registering what is there already is still fine after closure
    assert (await dsm.register_files("spd.raw.run1", files(0, 1))).already_registered == 1
    assert (await dsm.list_files("spd.raw.run1", 0, 100)).status == "closed"


async def test_concurrent_writers_leave_no_gap_for_a_cursor_reader(dsm: DsmClient) -> None:
    await dsm.create_dataset("spd.raw.growing")
    seen: list[str] = []

    async def follow() -> None:
        after = 0
        while True:
            page = await dsm.list_files("spd.raw.growing", after, 50)
            seen.extend(f.lfn for f in page.items)
            after = page.items[-1].seq if page.items else after  # a follower keeps its own cursor
            if page.status == "closed" and not page.items:
                return
            if not page.items:
                await asyncio.sleep(0.01)

    async def write(start: int) -> None:
        for k in range(5):
            await dsm.register_files("spd.raw.growing", files(start + 20 * k, 20))

    reader = asyncio.create_task(follow())
    await asyncio.gather(*(write(1000 * w) for w in range(4)))
    await dsm.close_dataset("spd.raw.growing")
    await asyncio.wait_for(reader, 20)
    assert len(seen) == 400 and len(set(seen)) == 400


async def test_errors(dsm: DsmClient, dsm_url: str) -> None:
    with pytest.raises(DsmError) as unknown:
        await dsm.register_files("nope", files(0, 1))
    assert unknown.value.status == 404
    await dsm.create_dataset("ds")
    async with aiohttp.ClientSession(dsm_url) as http:
        async with http.post("/dsm/v1/datasets/ds/files", json={"files": []},
                             headers={"Authorization": "Bearer test-service"}) as r:
            assert r.status == 422
        dup = [files(0, 1)[0].model_dump()] * 2
        async with http.post("/dsm/v1/datasets/ds/files", json={"files": dup},
                             headers={"Authorization": "Bearer test-service"}) as r:
            assert r.status == 422 and "twice" in await r.text()
        async with http.post("/dsm/v1/datasets", json={"name": "bad name"},
                             headers={"Authorization": "Bearer test-service"}) as r:
            assert r.status == 422
        async with http.get("/dsm/v1/datasets/ds") as r:
            assert r.status == 401
        async with http.post("/dsm/v1/datasets/ds/close", headers={"Authorization": f"Bearer {PILOT_TOKEN}"}) as r:
            assert r.status == 403
        async with http.get("/readyz") as r:
            assert r.status == 200

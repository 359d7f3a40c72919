"""The reference DSM's SQL."""
from __future__ import annotations

import sqlalchemy as sa
from sqlalchemy.dialects.postgresql import insert
from sqlalchemy.ext.asyncio import AsyncConnection

from common.db.models import Record
from common.dsm import DsmFile
from services.dsm.models import datasets, dsm_files

_INSERT_FILES = sa.text(
    """
    INSERT INTO dsm_file (dataset_id, seq, lfn, url, size, adler32, events)
    SELECT :dataset_id, :base + f.ord, f.lfn, f.url, f.size, f.adler32, f.events
    FROM unnest(CAST(:lfns AS text[]), CAST(:urls AS text[]), CAST(:sizes AS bigint[]),
                CAST(:adlers AS text[]), CAST(:events AS bigint[]))
         WITH ORDINALITY AS f(lfn, url, size, adler32, events, ord)
    """
)


async def create_dataset(conn: AsyncConnection, name: str) -> tuple[Record, bool]:
    stmt = insert(datasets).values(name=name).on_conflict_do_nothing(index_elements=[datasets.c.name])
    row = (await conn.execute(stmt.returning(*datasets.c))).first()
    if row is not None:
        return row, True
    return (await conn.execute(sa.select(datasets).where(datasets.c.name == name))).one(), False


async def list_datasets(conn: AsyncConnection, prefix: str, after: str | None, limit: int) -> list[Record]:
    """Datasets whose name starts with ``prefix``, in name order, after the name ``after``."""
    stmt = sa.select(datasets).where(datasets.c.name.startswith(prefix, autoescape=True))
    if after is not None:
        stmt = stmt.where(datasets.c.name > after)
    return list((await conn.execute(stmt.order_by(datasets.c.name).limit(limit))).all())


async def select_dataset(conn: AsyncConnection, name: str, for_update: bool = False) -> Record | None:
    stmt = sa.select(datasets).where(datasets.c.name == name)
    if for_update:
        stmt = stmt.with_for_update()
    return (await conn.execute(stmt)).first()


_EXISTING_FILES = sa.text(
    """
    SELECT f.lfn, f.url, f.size, f.adler32, f.events
    FROM unnest(CAST(:lfns AS text[])) AS wanted(lfn)
    JOIN dsm_file f ON f.dataset_id = :dataset_id AND f.lfn = wanted.lfn
    """
)


async def existing_files(conn: AsyncConnection, dataset_id: int, lfns: list[str]) -> dict[str, Record]:
    # A join on an unnested array probes the (dataset_id, lfn) index per name; a 10,000-element IN list was
    # planned as a scan of the whole dataset (seconds per request at a million files).
    rows = await conn.execute(_EXISTING_FILES, {"dataset_id": dataset_id, "lfns": lfns})
    return {r.lfn: r for r in rows.all()}


async def append_files(conn: AsyncConnection, dataset: Record, files: list[DsmFile]) -> None:
    """Append files after the dataset's last seq; the caller holds the dataset's row lock."""
    await conn.execute(
        _INSERT_FILES,
        {
            "dataset_id": dataset.id,
            "base": dataset.n_files,
            "lfns": [f.lfn for f in files],
            "urls": [f.url for f in files],
            "sizes": [f.size for f in files],
            "adlers": [f.adler32 for f in files],
            "events": [f.events for f in files],
        },
    )
    await conn.execute(
        sa.update(datasets).where(datasets.c.id == dataset.id).values(n_files=datasets.c.n_files + len(files))
    )


async def files_after(conn: AsyncConnection, dataset_id: int, after: int, limit: int) -> list[Record]:
    stmt = (
        sa.select(dsm_files)
        .where(dsm_files.c.dataset_id == dataset_id, dsm_files.c.seq > after)
        .order_by(dsm_files.c.seq)
        .limit(limit)
    )
    return list((await conn.execute(stmt)).all())


async def close_dataset(conn: AsyncConnection, dataset_id: int) -> Record:
    stmt = (
        sa.update(datasets)
        .where(datasets.c.id == dataset_id)
        .values(status="closed", closed_at=sa.func.coalesce(datasets.c.closed_at, sa.func.now()))
        .returning(*datasets.c)
    )
    return (await conn.execute(stmt)).one()

"""The schema is made only by alembic: upgrade head on an empty database gives exactly the models."""
from __future__ import annotations

import asyncio

import sqlalchemy as sa
from alembic import command
from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from sqlalchemy.ext.asyncio import create_async_engine

import services.dsm.models  # noqa: F401  (the reference DSM tables are part of the schema)
from common.db.migrate import alembic_config
from common.db.models import metadata


async def _tables(url: str) -> set[str]:
    engine = create_async_engine(url)
    try:
        async with engine.connect() as conn:
            return set(await conn.run_sync(lambda c: sa.inspect(c).get_table_names()))
    finally:
        await engine.dispose()


async def _diff(url: str) -> list:
    engine = create_async_engine(url)
    try:
        async with engine.connect() as conn:
            return await conn.run_sync(
                lambda c: compare_metadata(MigrationContext.configure(c, opts={"compare_type": True}), metadata)
            )
    finally:
        await engine.dispose()


async def test_upgrade_head_matches_models_and_downgrade_removes_all(empty_database: str) -> None:
    cfg = alembic_config(empty_database)
    assert await _tables(empty_database) == set()

    await asyncio.to_thread(command.upgrade, cfg, "head")
    assert await _tables(empty_database) == {t.name for t in metadata.sorted_tables} | {"alembic_version"}
    assert await _diff(empty_database) == []

    await asyncio.to_thread(command.downgrade, cfg, "base")
    assert await _tables(empty_database) == {"alembic_version"}

    # and back up again: the downgrade really undid everything the upgrade does
    await asyncio.to_thread(command.upgrade, cfg, "head")
    assert await _diff(empty_database) == []

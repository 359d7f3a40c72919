"""The async engine every service uses (asyncpg under SQLAlchemy Core)."""
from __future__ import annotations

from sqlalchemy.ext.asyncio import AsyncEngine, create_async_engine

from common.settings import Settings


def create_engine(settings: Settings) -> AsyncEngine:
    return create_async_engine(
        settings.database_url,
        pool_size=settings.db_pool_size,
        max_overflow=settings.db_pool_size,
        pool_pre_ping=True,
        # Statements of the hot paths are few and fixed; asyncpg's prepared-statement cache serves them.
        connect_args={"server_settings": {"application_name": "spd-wms"}},
    )

"""``wms-migrate``: create the WMS database if it does not exist, then bring its schema to alembic head."""
from __future__ import annotations

import argparse
import asyncio
import logging
import sys
from pathlib import Path

import asyncpg
from alembic import command
from alembic.config import Config
from sqlalchemy.engine import make_url

import migrations
from common.settings import Settings, refuse_well_known_secrets

log = logging.getLogger("wms.migrate")


def alembic_config(database_url: str) -> Config:
    """An alembic Config that finds the migrations wherever the package is installed."""
    cfg = Config()
    cfg.set_main_option("script_location", str(Path(migrations.__file__).parent))
    cfg.attributes["database_url"] = database_url
    cfg.attributes["configure_logger"] = False
    return cfg


async def ensure_database(database_url: str) -> bool:
    """Create the database named in the URL if missing (connecting to the 'postgres' database); True if created."""
    url = make_url(database_url)
    admin = url.set(drivername="postgresql", database="postgres").render_as_string(hide_password=False)
    conn = await asyncpg.connect(admin)
    try:
        assert url.database is not None, "the database URL names no database"
        exists = await conn.fetchval("SELECT 1 FROM pg_database WHERE datname = $1", url.database)
        if exists:
            return False
        quoted = '"' + url.database.replace('"', '""') + '"'
        await conn.execute(f"CREATE DATABASE {quoted}")
        return True
    finally:
        await conn.close()


def upgrade(database_url: str, revision: str = "head") -> None:
    command.upgrade(alembic_config(database_url), revision)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="wms-migrate", description=__doc__)
    parser.add_argument("revision", nargs="?", default="head", help="alembic revision to upgrade to")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s %(message)s")
    settings = Settings()
    refuse_well_known_secrets(settings)
    url = settings.database_url
    try:
        if asyncio.run(ensure_database(url)):
            log.info("created database %s", make_url(url).database)
        upgrade(url, args.revision)
    except (OSError, asyncpg.PostgresError) as exc:
        print(f"wms-migrate: cannot reach or migrate {make_url(url).render_as_string()}: {exc}", file=sys.stderr)
        return 1
    log.info("schema at %s", args.revision)
    return 0


if __name__ == "__main__":
    sys.exit(main())

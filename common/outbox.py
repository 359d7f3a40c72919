"""Transactional outbox: an event is written in the same transaction as the change it announces, and a relay
publishes it with confirms afterwards. No event without its row change, no row change without its event.

Delivery is at least once (a crash between the confirm and the commit republishes): consumers dedupe by
message id (``consumed_message``). While the broker is down the relay waits; a row whose publication fails
while the broker is up waits its own backoff (2^n s, capped) and never blocks the rows behind it.
"""
from __future__ import annotations

import asyncio
import logging
import time

import sqlalchemy as sa
from sqlalchemy.dialects.postgresql import JSONB
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from common.background import Loop
from common.broker import Broker
from common.db.models import outbox
from common.messages import Envelope

log = logging.getLogger("wms.outbox")

PURGE_EVERY_S = 60.0
RETENTION = "1 day"
ERROR_TEXT_MAX = 2000


async def add_event(conn: AsyncConnection, exchange: str, routing_key: str, envelope: Envelope) -> None:
    """Queue ``envelope`` for publication; commits or rolls back with the caller's transaction."""
    await conn.execute(
        sa.insert(outbox).values(
            message_id=envelope.message_id,
            exchange=exchange,
            routing_key=routing_key,
            # serialized once, here; PostgreSQL parses the text (no dict round trip for large chunks)
            body=sa.cast(sa.literal(envelope.model_dump_json(), sa.Text), JSONB),
        )
    )


class OutboxRelay:
    """Publishes unpublished outbox rows. Several relays may run: SKIP LOCKED gives each its own rows."""

    def __init__(self, engine: AsyncEngine, broker: Broker, batch_size: int, poll_interval_s: float,
                 retry_max_s: float = 60.0) -> None:
        self.engine = engine
        self.broker = broker
        self.batch_size = batch_size
        self.poll_interval_s = poll_interval_s
        self.retry_max_s = retry_max_s
        self._last_purge = 0.0
        self.loop = Loop("outbox-relay", self.run_round, poll_interval_s)

    def wake(self) -> None:
        """Called after a commit that added events, so they go out without waiting for the next poll."""
        self.loop.wake()

    async def publish_pending(self) -> int:
        """Publish one batch; returns how many rows were published."""
        if not self.broker.is_connected:
            return 0  # nothing can go out; the rows wait (without spending their retries) until it is back
        async with self.engine.begin() as conn:
            rows = (
                await conn.execute(
                    sa.select(
                        outbox.c.id,
                        outbox.c.message_id,
                        outbox.c.exchange,
                        outbox.c.routing_key,
                        outbox.c.created_at,
                        outbox.c.body["type"].astext.label("type"),
                        sa.cast(outbox.c.body, sa.Text).label("body_json"),
                    )
                    .where(outbox.c.published_at.is_(None),
                           sa.or_(outbox.c.next_attempt_at.is_(None), outbox.c.next_attempt_at <= sa.func.now()))
                    .order_by(outbox.c.id)
                    .limit(self.batch_size)
                    .with_for_update(skip_locked=True)
                )
            ).all()
            if not rows:
                return 0
            # Confirms are pipelined: all publishes of the batch are in flight at once.
            results = await asyncio.gather(
                *(
                    self.broker.publish_raw(
                        r.exchange, r.routing_key, r.body_json.encode(), r.message_id, r.type, r.created_at
                    )
                    for r in rows
                ),
                return_exceptions=True,
            )
            outcomes = list(zip(rows, results, strict=True))
            published = [r.id for r, res in outcomes if not isinstance(res, BaseException)]
            failed = [(r.id, f"{type(res).__name__}: {res}") for r, res in outcomes if isinstance(res, BaseException)]
            if published:
                await conn.execute(
                    sa.update(outbox)
                    .where(outbox.c.id.in_(published))
                    .values(published_at=sa.func.now(), publish_attempts=outbox.c.publish_attempts + 1)
                )
            if failed:
                # each failed row waits 2^attempts s (capped) before it is tried again
                backoff = sa.func.least(sa.func.power(2, outbox.c.publish_attempts), self.retry_max_s)
                await conn.execute(
                    sa.update(outbox)
                    .where(outbox.c.id == sa.bindparam("row_id"))
                    .values(publish_attempts=outbox.c.publish_attempts + 1, last_error=sa.bindparam("error"),
                            next_attempt_at=sa.func.now() + sa.func.make_interval(0, 0, 0, 0, 0, 0, backoff)),
                    [{"row_id": row_id, "error": error[:ERROR_TEXT_MAX]} for row_id, error in failed],
                )
            if failed:
                log.warning("outbox publish failed", extra={"failed": len(failed), "first_error": failed[0][1]})
            return len(published)

    async def purge_published(self) -> None:
        async with self.engine.begin() as conn:
            await conn.execute(
                sa.delete(outbox).where(outbox.c.published_at < sa.func.now() - sa.text(f"interval '{RETENTION}'"))
            )

    async def run_round(self) -> bool:
        """One round; True when a full batch went out (more may be waiting)."""
        published = await self.publish_pending()
        if time.monotonic() - self._last_purge > PURGE_EVERY_S:
            await self.purge_published()
            self._last_purge = time.monotonic()
        return published >= self.batch_size


async def unpublished_count(conn: AsyncConnection) -> int:
    return (
        await conn.execute(sa.select(sa.func.count()).select_from(outbox).where(outbox.c.published_at.is_(None)))
    ).scalar_one()

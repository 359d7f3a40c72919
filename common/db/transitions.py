"""The one guarded UPDATE that enforces the state machines of :mod:`common.states` where the write happens.

A transition is written as ``UPDATE ... SET status = :to WHERE id = ... AND status IN (<states allowed to reach
:to>)``; two concurrent writers can therefore never produce a transition that is not in the table.
"""
from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncConnection

from common.db.models import Record
from common.states import IllegalTransition, RowNotFound, StateMachine


def guarded_update(
    table: sa.Table,
    machine: StateMachine,
    rows: Iterable[int] | sa.ColumnElement[bool],
    target: str,
    values: Mapping[str, Any] | None = None,
    only_from: Iterable[str] | None = None,
) -> sa.Update | None:
    """The UPDATE moving ``rows`` (ids, or a condition such as ``jobs.c.task_id == 7`` for a whole set in one
    statement) to ``target`` where their current state allows it; None when nothing can move (no ids, or no
    allowed source state). ``only_from`` narrows the allowed source states further (e.g. 'resume' reaches
    running from paused only, although the task-executor may start a registered task)."""
    if isinstance(rows, sa.ColumnElement):
        selected = rows
    else:
        id_list = list(rows)
        if not id_list:
            return None
        selected = table.c.id.in_(id_list)
    sources = machine.sources_of(target)
    if only_from is not None:
        sources &= frozenset(only_from)
    if not sources:
        return None
    return sa.update(table).where(selected, table.c.status.in_(sorted(sources))).values(status=target, **(values or {}))


async def guarded_transition(
    conn: AsyncConnection,
    table: sa.Table,
    machine: StateMachine,
    rows: Iterable[int] | sa.ColumnElement[bool],
    target: str,
    values: Mapping[str, Any] | None = None,
    returning: Iterable[sa.ColumnElement[Any]] = (),
    only_from: Iterable[str] | None = None,
) -> list[Record]:
    """Apply :func:`guarded_update` and return the rows that moved (their ``returning`` columns, by default the
    id).

    Rows whose state forbids the move are left untouched and simply not returned: callers decide whether that
    is an error (see :func:`transition_one`) or a normal race (a batch sweep).
    """
    stmt = guarded_update(table, machine, rows, target, values, only_from)
    if stmt is None:
        return []
    return list((await conn.execute(stmt.returning(*(tuple(returning) or (table.c.id,))))).all())


async def transition_one(
    conn: AsyncConnection,
    table: sa.Table,
    machine: StateMachine,
    row_id: int,
    target: str,
    values: Mapping[str, Any] | None = None,
    returning: Iterable[sa.ColumnElement[Any]] = (),
    only_from: Iterable[str] | None = None,
) -> Record:
    """Guarded transition of one row; raises RowNotFound or IllegalTransition (naming the current state)."""
    rows = await guarded_transition(conn, table, machine, [row_id], target, values, returning, only_from)
    if rows:
        return rows[0]
    current = (await conn.execute(sa.select(table.c.status).where(table.c.id == row_id))).scalar_one_or_none()
    if current is None:
        raise RowNotFound(machine.name, row_id)
    raise IllegalTransition(machine, row_id, current, target)

"""The one style of guarded transition that enforces the state machines of :mod:`common.states` where the write
happens.

A transition is written as ``UPDATE ... SET status = :to WHERE id = ... AND status IN (<states allowed to reach
:to>)``; two concurrent writers can therefore never produce a transition that is not in the table. The allowed
states always come from the machine through :func:`allowed_sources`: :func:`guarded_transition` for whole
statements, :func:`may_move` for the guard of a SQLAlchemy statement with more conditions, :func:`may_move_sql`
for text SQL. (tests/unit/test_transition_style.py keeps it so, and docs/state-machines.md's "who moves what"
table in step with the code.)
"""
from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncConnection

from common.db.models import Record
from common.states import IllegalTransition, RowNotFound, StateMachine


def allowed_sources(machine: StateMachine, target: str, only_from: Iterable[str] | None = None) -> list[str]:
    """The states ``target`` may be reached from (narrowed to ``only_from``), from the machine's table: the one
    source of every guard, for SQLAlchemy statements and text SQL alike."""
    sources = machine.sources_of(target)
    if only_from is not None:
        sources &= frozenset(only_from)
    return sorted(sources)


def may_move(status: sa.ColumnElement[Any], machine: StateMachine, target: str,
             only_from: Iterable[str] | None = None) -> sa.ColumnElement[bool]:
    """``status IN (<states allowed to reach target>)``: the guard of a SQLAlchemy UPDATE."""
    return status.in_(allowed_sources(machine, target, only_from))


def may_move_sql(machine: StateMachine, target: str, only_from: Iterable[str] | None = None,
                 or_to: Iterable[str] = ()) -> str:
    """The same guard's state list for text SQL (``status IN ({may_move_sql(...)})``): the machine's own state
    names, quoted (never input). ``or_to``: more targets, for a statement that picks its target per row (their
    sources together)."""
    names = sorted({n for t in (target, *or_to) for n in allowed_sources(machine, t, only_from)})
    if not names or not all(n.replace("-", "_").isidentifier() for n in names):
        raise ValueError(f"no guard to {target}: {names}")
    return ", ".join(f"'{n}'" for n in names)


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
    if not allowed_sources(machine, target, only_from):
        return None
    return (sa.update(table).where(selected, may_move(table.c.status, machine, target, only_from))
            .values(status=target, **(values or {})))


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

"""Rows and descriptions for tests."""
from __future__ import annotations

import uuid
from typing import Any

import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncConnection

from common.db.models import jobs, tasks
from common.policies import fair_keys


def task_description(**overrides: Any) -> dict[str, Any]:
    body: dict[str, Any] = {
        "name": "unscramble run 42",
        "type": "unscramble",
        "input_dataset": "spd.raw.run42",
        # one active task per output dataset: each description gets its own
        "output_dataset": f"spd.events.run42.{uuid.uuid4().hex[:8]}",
        "payload": {"command": "spd-unscramble", "args": ["--in", "{inputs}"], "env": {"SPD_MODE": "online"}},
        "resource_type": "cpu",
        "cores": 1,
        "memory_mb": 2000,
        "split": {"by": "files", "size": 10},
        "max_attempts": 3,
        "priority": 5,
        "wfms_request_id": f"req-{uuid.uuid4()}",
        "metadata": {"campaign": "test"},
    }
    body.update(overrides)
    return body


async def insert_task(conn: AsyncConnection, **overrides: Any) -> int:
    values: dict[str, Any] = {
        "name": "t",
        "task_type": "filter",
        "input_dataset": "in",
        "output_dataset": "out",
        "payload": {"command": "true"},
        "resource_type": "cpu",
        "cores": 1,
        "memory_mb": 100,
        "split_by": "files",
        "split_size": 1,
        "max_attempts": 3,
        "priority": 1,
        "request_hash": "x",
    }
    values.update(overrides)
    return (await conn.execute(sa.insert(tasks).values(**values).returning(tasks.c.id))).scalar_one()


async def insert_jobs(conn: AsyncConnection, task_id: int, n: int, **overrides: Any) -> list[int]:
    # in the dispatch order registration would give a new task's first jobs (common.policies.fair_keys)
    priority = overrides.get("priority", 1)
    rows = [{"task_id": task_id, "resource_type": "cpu", "priority": 1, "n_files": 1,
             "dispatch_key": fair_keys(0.0, priority, 1)[0], **overrides} for _ in range(n)]
    return list((await conn.execute(sa.insert(jobs).returning(jobs.c.id), rows)).scalars())

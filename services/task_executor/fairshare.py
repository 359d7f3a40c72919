"""Stride scheduling of tasks (pure): each task is served in proportion to its priority.

Every task has a *pass*; the scheduler serves the eligible task with the smallest pass and advances it by
``work / priority`` (work = jobs generated). Over time each task's work is proportional to its priority. A task
joining, or eligible again after sitting out, starts at the virtual time (the pass of the last task served), so
it neither starves the others with hoarded credit nor is starved itself. A priority change applies from the next
charge on.
"""
from __future__ import annotations

from collections.abc import Iterable


class StrideScheduler:
    def __init__(self) -> None:
        self._pass: dict[int, float] = {}
        self._priority: dict[int, int] = {}
        self._virtual_time = 0.0  # the pass of the last task served

    def sync(self, priorities: dict[int, int]) -> None:
        """Make the task set equal to ``priorities`` (task id -> priority > 0)."""
        for gone in set(self._pass) - set(priorities):
            del self._pass[gone], self._priority[gone]
        floor = self._floor()
        for task_id, priority in priorities.items():
            if priority < 1:
                raise ValueError(f"task {task_id}: priority must be positive")
            self._pass.setdefault(task_id, floor)
            self._priority[task_id] = priority

    def _floor(self) -> float:
        return max(self._virtual_time, min(self._pass.values(), default=0.0))

    def pick(self, eligible: Iterable[int]) -> int | None:
        candidates = [t for t in eligible if t in self._pass]
        if not candidates:
            return None
        # A task that sat out (no new files, backlog full) comes back at the virtual time, not with a hoard of
        # credit from the rounds it missed.
        for t in candidates:
            self._pass[t] = max(self._pass[t], self._virtual_time)
        chosen = min(candidates, key=lambda t: (self._pass[t], t))
        self._virtual_time = self._pass[chosen]
        return chosen

    def charge(self, task_id: int, work: int) -> None:
        if task_id in self._pass:
            self._pass[task_id] += max(work, 1) / self._priority[task_id]

    def passes(self) -> dict[int, float]:
        return dict(self._pass)

"""Splitting rules: a run of dataset files -> groups of files, one group per job (pure).

Files are taken in dataset order; a group is emitted only when it is complete, except that the last partial
group is emitted once the dataset is closed (``final``). What is not emitted is read again with the next files.
"""
from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

SplitBy = Literal["files", "bytes", "events"]


@dataclass(frozen=True)
class InputFile:
    lfn: str
    size: int
    events: int | None = None


class SplitError(ValueError):
    """The dataset cannot be split by this rule (e.g. events per job with a file of unknown event count)."""


def _measure(f: InputFile, by: SplitBy) -> int:
    if by == "files":
        return 1
    if by == "bytes":
        return f.size
    if f.events is None:
        raise SplitError(f"splitting by events needs event counts: file {f.lfn} has none")
    return f.events


def split(files: Sequence[InputFile], by: SplitBy, size: int, final: bool) -> tuple[list[list[InputFile]], int]:
    """Group ``files``; returns (groups, files consumed). The consumed files are a prefix of ``files``.

    - files: exactly ``size`` files per group;
    - bytes: as many files as fit in ``size`` bytes; a file larger than ``size`` is a group of its own;
    - events: files are added until the group holds at least ``size`` events.
    """
    if size < 1:
        raise SplitError("split size must be positive")
    groups: list[list[InputFile]] = []
    current: list[InputFile] = []
    amount = 0
    for f in files:
        m = _measure(f, by)
        if by == "bytes" and current and amount + m > size:
            groups.append(current)
            current, amount = [], 0
        current.append(f)
        amount += m
        if amount >= size and by in ("files", "events"):
            groups.append(current)
            current, amount = [], 0
    if by == "bytes" and current and amount >= size:
        groups.append(current)  # exactly full: complete without waiting for the next file
        current = []
    if final and current:
        groups.append(current)
        current = []
    return groups, sum(len(g) for g in groups)

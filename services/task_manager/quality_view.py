"""The monitor's data-quality view: a run's quality outputs (one JSON file of histograms per quality job,
examples/spd/quality.py) summed into the run's histograms, bin by bin.

The sums grow with the run: each look reads only the outputs registered since the previous one (at most
QUALITY_BATCH of them, so a look is bounded; a long run catches up over a few looks) and adds them to what this
process has summed so far. A file that is missing, too large or not such a document, or whose histogram has other
bins than the run's, is counted as skipped, never guessed at.
"""
from __future__ import annotations

import asyncio
import datetime as dt
from dataclasses import dataclass, field

from pydantic import BaseModel, Field

from common.db.session import Transaction
from services.task_manager import monitor_queries, operations

QUALITY_TASK_TYPE = "quality"  # tasks of this type produce data-quality histograms (the SPD chain's fourth stage)
QUALITY_MAX_BYTES = 1 << 20
QUALITY_BATCH = 500  # quality outputs read per look
RUNS_CACHED = 200


class Histogram(BaseModel):
    name: str = Field(max_length=64)
    title: str = Field(max_length=200)
    x_label: str = Field(max_length=64)
    edges: list[float] = Field(max_length=1001)
    counts: list[int] = Field(max_length=1000)
    entries: int


class QualityFile(BaseModel):
    """What a quality-monitoring payload writes: histograms and their totals."""

    files: int
    events_in: int
    events_kept: int
    histograms: list[Histogram] = Field(max_length=50)


class QualityRunSummary(BaseModel):
    run: str
    task_ids: list[int]
    outputs: int = Field(description="quality outputs registered for the run")
    newest_at: dt.datetime


class QualityRun(QualityFile):
    """A run's histograms: the sum of its quality outputs read so far."""

    run: str
    task_ids: list[int]
    outputs_summed: int = Field(description="quality outputs summed into these histograms")
    outputs_skipped: int = Field(description="outputs that could not be read or did not match the run's bins")
    newest_lfn: str | None
    newest_at: dt.datetime | None


@dataclass
class _Sums:
    last_file_id: int = 0
    summed: int = 0
    skipped: int = 0
    files: int = 0
    events_in: int = 0
    events_kept: int = 0
    histograms: dict[str, Histogram] = field(default_factory=dict)  # by name, in first-seen order
    task_ids: set[int] = field(default_factory=set)
    newest_lfn: str | None = None
    newest_at: dt.datetime | None = None


def add(sums: _Sums, document: QualityFile) -> bool:
    """Add one quality output to the run's sums; False (nothing added) if a histogram's bins differ."""
    for h in document.histograms:
        known = sums.histograms.get(h.name)
        if known is not None and (known.edges != h.edges or len(known.counts) != len(h.counts)):
            return False
    for h in document.histograms:
        known = sums.histograms.get(h.name)
        if known is None:
            sums.histograms[h.name] = h.model_copy(deep=True)
        else:  # the newest output's titles and labels are shown
            known.counts = [a + b for a, b in zip(known.counts, h.counts, strict=True)]
            known.entries += h.entries
            known.title, known.x_label = h.title, h.x_label
    sums.files += document.files
    sums.events_in += document.events_in
    sums.events_kept += document.events_kept
    return True


class QualityView:
    """Per run, the sums of its quality outputs read so far (kept in this process between looks)."""

    def __init__(self, storage_root: str) -> None:
        self.storage_root = storage_root
        self._runs: dict[str, _Sums] = {}
        # one look at a time: two monitors refreshing at once would both read the same new outputs and add them twice
        self._looking = asyncio.Lock()

    async def runs(self, conn: Transaction, runs: int) -> list[QualityRunSummary]:
        return [QualityRunSummary(run=r.run, task_ids=sorted(r.task_ids), outputs=r.outputs, newest_at=r.newest_at)
                for r in await monitor_queries.quality_runs(conn, QUALITY_TASK_TYPE, runs)]

    async def run(self, conn: Transaction, run: str) -> QualityRun | None:
        async with self._looking:
            return await self._look(conn, run)

    async def _look(self, conn: Transaction, run: str) -> QualityRun | None:
        sums = self._runs.pop(run, None) or _Sums()
        self._runs[run] = sums  # the most recently looked at last
        while len(self._runs) > RUNS_CACHED:
            self._runs.pop(next(iter(self._runs)))
        rows = await monitor_queries.quality_outputs_after(conn, QUALITY_TASK_TYPE, run, sums.last_file_id,
                                                           QUALITY_BATCH)
        if not rows and sums.last_file_id == 0:
            return None
        documents = await asyncio.to_thread(self._read, [r.url for r in rows])
        for row, document in zip(rows, documents, strict=True):
            sums.last_file_id = row.id
            sums.task_ids.add(row.task_id)
            if document is None or not add(sums, document):
                sums.skipped += 1
                continue
            sums.summed += 1
            sums.newest_lfn, sums.newest_at = row.lfn, row.created_at
        return QualityRun(run=run, task_ids=sorted(sums.task_ids), outputs_summed=sums.summed,
                          outputs_skipped=sums.skipped, newest_lfn=sums.newest_lfn, newest_at=sums.newest_at,
                          files=sums.files, events_in=sums.events_in, events_kept=sums.events_kept,
                          histograms=list(sums.histograms.values()))

    def _read(self, urls: list[str]) -> list[QualityFile | None]:
        found: list[QualityFile | None] = []
        for url in urls:
            data = operations.read_storage_file(url, self.storage_root, QUALITY_MAX_BYTES + 1)
            try:
                found.append(None if data is None or len(data) > QUALITY_MAX_BYTES
                             else QualityFile.model_validate_json(data))
            except ValueError:
                found.append(None)
        return found

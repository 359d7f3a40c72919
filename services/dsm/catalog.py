"""The reference DSM's rules: datasets grow while open, files are registered once, closed datasets are final."""
from __future__ import annotations

from common.db.models import Record
from common.db.session import Database, Transaction
from common.dsm import Dataset, DatasetPage, DsmFile, DsmFileEntry, FilePage, Registration
from services.dsm import queries


class UnknownDataset(Exception):
    def __init__(self, name: str) -> None:
        super().__init__(f"dataset {name!r} not found")


class CatalogConflict(Exception):
    """A closed dataset written to, or an lfn registered again with other attributes."""


def dataset_view(row: Record) -> Dataset:
    return Dataset(name=row.name, status=row.status, n_files=row.n_files)


class Catalog:
    def __init__(self, engine: Database) -> None:
        self.engine = engine

    async def create(self, name: str) -> tuple[Dataset, bool]:
        async with self.engine.begin() as conn:
            row, created = await queries.create_dataset(conn, name)
        return dataset_view(row), created

    async def _locked(self, conn: Transaction, name: str) -> Record:
        row = await queries.select_dataset(conn, name, for_update=True)
        if row is None:
            raise UnknownDataset(name)
        return row

    async def list_datasets(self, prefix: str, after: str | None, limit: int) -> DatasetPage:
        async with self.engine.connect() as conn:
            found = [dataset_view(r) for r in await queries.list_datasets(conn, prefix, after, limit)]
        return DatasetPage(items=found, next_after=found[-1].name if len(found) == limit else None)

    async def get(self, name: str) -> Dataset:
        async with self.engine.connect() as conn:
            row = await queries.select_dataset(conn, name)
        if row is None:
            raise UnknownDataset(name)
        return dataset_view(row)

    async def register(self, name: str, files: list[DsmFile]) -> Registration:
        """Register files; an identical re-registration is a no-op (so a retried request is safe)."""
        async with self.engine.begin() as conn:
            dataset = await self._locked(conn, name)
            known = await queries.existing_files(conn, dataset.id, [f.lfn for f in files])
            for f in files:
                old = known.get(f.lfn)
                if old is not None and DsmFile.model_validate(old, from_attributes=True) != f:
                    raise CatalogConflict(f"lfn {f.lfn!r} is already registered in {name} with other attributes")
            new = [f for f in files if f.lfn not in known]
            if new and dataset.status == "closed":
                raise CatalogConflict(f"dataset {name} is closed")
            if new:
                await queries.append_files(conn, dataset, new)
        return Registration(registered=len(new), already_registered=len(files) - len(new))

    async def files(self, name: str, after: int, limit: int) -> FilePage:
        # The dataset is read before its files: if it was closed then, every file was committed before, so a
        # 'closed' answer with a short page really is the end.
        async with self.engine.connect() as conn:
            dataset = await queries.select_dataset(conn, name)
            if dataset is None:
                raise UnknownDataset(name)
            rows = await queries.files_after(conn, dataset.id, after, limit)
        entries = [DsmFileEntry.model_validate(r, from_attributes=True) for r in rows]
        return FilePage(
            items=entries,
            next_after=entries[-1].seq if len(entries) == limit else None,
            status=dataset.status,
            n_files=dataset.n_files,
        )

    async def close(self, name: str) -> Dataset:
        async with self.engine.begin() as conn:
            dataset = await self._locked(conn, name)
            return dataset_view(await queries.close_dataset(conn, dataset.id))

"""Routes of the reference DSM."""
from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Depends, Path, Query, Request, Response, status

from common.auth import require_role
from common.dsm import Dataset, DatasetPage, FilePage, Registration
from services.dsm.catalog import Catalog
from services.dsm.schemas import DatasetCreate, DatasetName, FileRegistration

READ = require_role("read datasets", {"wfms", "operator", "service", "pilot"})
# Only the WMS's services (and a site's data acquisition, given a service token) write: a WFMS or operator
# token can neither add files to nor close any dataset.
WRITE = require_role("change datasets", {"service"})

router = APIRouter(prefix="/dsm/v1", tags=["datasets"])


def _catalog(request: Request) -> Catalog:
    catalog: Catalog = request.app.state.catalog
    return catalog


CatalogDep = Annotated[Catalog, Depends(_catalog)]
Name = Annotated[DatasetName, Path(description="dataset name")]


@router.post("/datasets", response_model=Dataset, status_code=201, dependencies=[Depends(WRITE)],
             responses={200: {"model": Dataset, "description": "exists already (creation is idempotent)"}})
async def create_dataset(body: DatasetCreate, catalog: CatalogDep, response: Response) -> Dataset:
    dataset, created = await catalog.create(body.name)
    if not created:
        response.status_code = status.HTTP_200_OK
    return dataset


@router.get("/datasets", response_model=DatasetPage, dependencies=[Depends(READ)])
async def list_datasets(
    catalog: CatalogDep,
    prefix: Annotated[str, Query(max_length=512, description="names starting with this")] = "",
    after: Annotated[str | None, Query(max_length=512, description="cursor: the last name of the previous page")]
    = None,
    limit: Annotated[int, Query(ge=1, le=1000)] = 100,
) -> DatasetPage:
    """Datasets in name order."""
    return await catalog.list_datasets(prefix, after, limit)


@router.get("/datasets/{name}", response_model=Dataset, dependencies=[Depends(READ)])
async def get_dataset(name: Name, catalog: CatalogDep) -> Dataset:
    return await catalog.get(name)


@router.post("/datasets/{name}/files", response_model=Registration, dependencies=[Depends(WRITE)],
             responses={409: {"description": "the dataset is closed, or an lfn is registered with other attributes"}})
async def register_files(name: Name, body: FileRegistration, catalog: CatalogDep) -> Registration:
    return await catalog.register(name, body.files)


@router.get("/datasets/{name}/files", response_model=FilePage, dependencies=[Depends(READ)])
async def list_files(
    name: Name,
    catalog: CatalogDep,
    after: Annotated[int, Query(ge=0, le=2**62, description="seq of the last file already seen")] = 0,
    limit: Annotated[int, Query(ge=1, le=10_000)] = 1000,
) -> FilePage:
    return await catalog.files(name, after, limit)


@router.post("/datasets/{name}/close", response_model=Dataset, dependencies=[Depends(WRITE)])
async def close_dataset(name: Name, catalog: CatalogDep) -> Dataset:
    return await catalog.close(name)

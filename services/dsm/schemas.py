"""Request models of the reference DSM (responses are the shared models of common.dsm)."""
from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field, field_validator

from common.dsm import DatasetName, DsmFile

__all__ = ["DatasetName", "DatasetCreate", "FileRegistration", "MAX_FILES_PER_REQUEST"]
MAX_FILES_PER_REQUEST = 10_000


class DatasetCreate(BaseModel):
    model_config = ConfigDict(extra="forbid")

    name: DatasetName


class FileRegistration(BaseModel):
    model_config = ConfigDict(extra="forbid")

    files: list[DsmFile] = Field(min_length=1, max_length=MAX_FILES_PER_REQUEST)

    @field_validator("files")
    @classmethod
    def _unique_lfns(cls, files: list[DsmFile]) -> list[DsmFile]:
        seen: set[str] = set()
        for f in files:
            if f.lfn in seen:
                raise ValueError(f"lfn {f.lfn!r} appears twice in the request")
            seen.add(f.lfn)
        return files

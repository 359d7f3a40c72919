"""The reference DSM's own tables (same database, ``dsm_`` prefix, same alembic history)."""
from __future__ import annotations

import datetime as dt
from typing import cast

import sqlalchemy as sa
from sqlalchemy.orm import Mapped, mapped_column

from common.db.models import Base, Timestamp, _now


class DsmDataset(Base):
    __tablename__ = "dsm_dataset"

    id: Mapped[int] = mapped_column(sa.BigInteger, sa.Identity(), primary_key=True)
    name: Mapped[str] = mapped_column(sa.Text, unique=True)
    status: Mapped[str] = mapped_column(sa.Text, server_default="open")
    # Files registered so far; also the last file's ``seq`` (files are numbered 1, 2, ... per dataset).
    n_files: Mapped[int] = mapped_column(sa.BigInteger, server_default="0")
    created_at: Mapped[dt.datetime] = mapped_column(Timestamp, server_default=_now())
    closed_at: Mapped[dt.datetime | None] = mapped_column(Timestamp)

    __table_args__ = (sa.CheckConstraint("status IN ('closed', 'open')", name="status"),)


class DsmFile(Base):
    __tablename__ = "dsm_file"

    id: Mapped[int] = mapped_column(sa.BigInteger, sa.Identity(), primary_key=True)
    dataset_id: Mapped[int] = mapped_column(sa.ForeignKey("dsm_dataset.id", ondelete="CASCADE"))
    # Position in the dataset, assigned under the dataset's row lock: a reader following ``seq`` as a cursor
    # never misses a file committed later with a smaller number (ids from a sequence could).
    seq: Mapped[int] = mapped_column(sa.BigInteger)
    lfn: Mapped[str] = mapped_column(sa.Text)
    url: Mapped[str] = mapped_column(sa.Text)
    size: Mapped[int] = mapped_column(sa.BigInteger)
    adler32: Mapped[str] = mapped_column(sa.String(8))
    events: Mapped[int | None] = mapped_column(sa.BigInteger)
    created_at: Mapped[dt.datetime] = mapped_column(Timestamp, server_default=_now())

    __table_args__ = (
        sa.UniqueConstraint("dataset_id", "seq", name="uq_dsm_file_dataset_seq"),
        sa.UniqueConstraint("dataset_id", "lfn", name="uq_dsm_file_dataset_lfn"),
        sa.CheckConstraint("adler32 ~ '^[0-9a-f]{8}$'", name="adler32_hex"),
        sa.CheckConstraint("size >= 0 AND (events IS NULL OR events >= 0)", name="non_negative"),
    )


datasets = cast(sa.Table, DsmDataset.__table__)
dsm_files = cast(sa.Table, DsmFile.__table__)

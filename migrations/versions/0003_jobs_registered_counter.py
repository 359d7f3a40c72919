"""jobs registered counter (chunks in flight = jobs_total - jobs_registered), file lookup by lfn

Revision ID: 0003
Revises: 0002
Create Date: 2026-11-25 14:31:35.137000
"""
from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op


revision: str = '0003'
down_revision: str | None = '0002'
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.add_column('task_dat', sa.Column('jobs_registered', sa.BigInteger(), server_default='0', nullable=False))
    op.create_index('ix_file_dat_lfn', 'file_dat', ['lfn'], unique=False)


def downgrade() -> None:
    op.drop_index('ix_file_dat_lfn', table_name='file_dat')
    op.drop_column('task_dat', 'jobs_registered')

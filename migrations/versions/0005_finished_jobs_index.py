"""monitoring: index of finished jobs by finish time (throughput over the last minutes)

Revision ID: 0005
Revises: 0004
Create Date: 2026-11-25 18:25:00
"""
from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op


revision: str = '0005'
down_revision: str | None = '0004'
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_index('ix_job_dat_finished_at', 'job_dat', ['finished_at'], unique=False,
                    postgresql_where=sa.text("status = 'finished'"))


def downgrade() -> None:
    op.drop_index('ix_job_dat_finished_at', table_name='job_dat', postgresql_where=sa.text("status = 'finished'"))

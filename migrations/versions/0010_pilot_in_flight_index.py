"""jobs: an index of each pilot's jobs in flight (exchanges read a pilot's load and beats without its history)

Revision ID: 0010
Revises: 0009
Create Date: 2026-11-26 01:35:00
"""
from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = '0010'
down_revision: str | None = '0009'
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_index('ix_job_dat_pilot_in_flight', 'job_dat', ['pilot_id'], unique=False,
                    postgresql_where=sa.text("status IN ('dispatched', 'running')"))


def downgrade() -> None:
    op.drop_index('ix_job_dat_pilot_in_flight', table_name='job_dat',
                  postgresql_where=sa.text("status IN ('dispatched', 'running')"))

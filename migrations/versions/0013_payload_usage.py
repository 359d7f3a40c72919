"""payload usage: what each attempt's payload used (job monitoring data), and each pilot's payload runtime

Revision ID: 0013
Revises: 0012
Create Date: 2026-12-02 03:00:00
"""
from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = '0013'
down_revision: str | None = '0012'
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

USAGE_COLUMNS = ('wall_s', 'cpu_s', 'max_rss_mb', 'max_pss_mb', 'read_mb', 'written_mb')


def upgrade() -> None:
    for name in USAGE_COLUMNS:
        op.add_column('job_attempt', sa.Column(name, sa.Float(), nullable=True))
    op.add_column('job_attempt', sa.Column('max_processes', sa.Integer(), nullable=True))
    op.add_column('pilot_dat', sa.Column('runtime', sa.Text(), server_default='plain', nullable=False))


def downgrade() -> None:
    op.drop_column('pilot_dat', 'runtime')
    op.drop_column('job_attempt', 'max_processes')
    for name in reversed(USAGE_COLUMNS):
        op.drop_column('job_attempt', name)

"""load samples: the ready backlog and pilot slots by resource type over time, for the monitor's plots

Revision ID: 0012
Revises: 0011
Create Date: 2026-11-26 06:10:00
"""
from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = '0012'
down_revision: str | None = '0011'
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table('load_sample',
    sa.Column('sampled_at', sa.DateTime(timezone=True), nullable=False),
    sa.Column('resource_type', sa.Text(), nullable=False),
    sa.Column('ready', sa.Integer(), nullable=False),
    sa.Column('slots', sa.Integer(), nullable=False),
    sa.Column('busy', sa.Integer(), nullable=False),
    sa.PrimaryKeyConstraint('sampled_at', 'resource_type', name=op.f('pk_load_sample'))
    )


def downgrade() -> None:
    op.drop_table('load_sample')

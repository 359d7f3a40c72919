"""multi-slot pilots: a pilot runs up to `slots` jobs at once (protocol 2, the exchange)

Revision ID: 0009
Revises: 0008
Create Date: 2026-11-26 01:20:00
"""
from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = '0009'
down_revision: str | None = '0008'
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.add_column('pilot_dat', sa.Column('slots', sa.Integer(), server_default='1', nullable=False))


def downgrade() -> None:
    op.drop_column('pilot_dat', 'slots')

"""pilot credentials: per-pilot (or per-node) tokens issued by operators, each bound to what it may register as

Revision ID: 0008
Revises: 0007
Create Date: 2026-11-26 00:30:00
"""
from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = '0008'
down_revision: str | None = '0007'
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        'pilot_credential',
        sa.Column('id', sa.BigInteger(), sa.Identity(always=False), nullable=False),
        sa.Column('name', sa.Text(), nullable=False),
        sa.Column('token_sha256', sa.Text(), nullable=False),
        sa.Column('resource_type', sa.Text(), nullable=False),
        sa.Column('max_cores', sa.Integer(), nullable=False),
        sa.Column('max_gpus', sa.Integer(), nullable=False),
        sa.Column('host_pattern', sa.Text(), nullable=False),
        sa.Column('created_at', sa.DateTime(timezone=True), server_default=sa.text('now()'), nullable=False),
        sa.Column('revoked_at', sa.DateTime(timezone=True), nullable=True),
        sa.CheckConstraint("resource_type IN ('cpu', 'gpu')", name=op.f('ck_pilot_credential_resource_type')),
        sa.CheckConstraint("max_cores > 0 AND max_gpus >= 0 AND (resource_type = 'gpu' OR max_gpus = 0)",
                           name=op.f('ck_pilot_credential_limits')),
        sa.PrimaryKeyConstraint('id', name=op.f('pk_pilot_credential')),
        sa.UniqueConstraint('token_sha256', name=op.f('uq_pilot_credential_token_sha256')),
    )
    op.add_column('pilot_dat', sa.Column('credential_id', sa.BigInteger(), nullable=True))


def downgrade() -> None:
    op.drop_column('pilot_dat', 'credential_id')
    op.drop_table('pilot_credential')

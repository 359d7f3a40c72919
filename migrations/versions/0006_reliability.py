"""reliability: idempotent claims, an infrastructure-loss budget, DSM registration backoff and rejection,
outbox backoff, retention of consumed message ids

Revision ID: 0006
Revises: 0005
Create Date: 2026-11-25 21:40:00
"""
from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql


revision: str = '0006'
down_revision: str | None = '0005'
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.add_column('job_dat', sa.Column('claim_request_id', postgresql.UUID(as_uuid=True), nullable=True))
    op.add_column('job_dat', sa.Column('lost_attempts', sa.Integer(), server_default='0', nullable=False))
    op.add_column('file_dat', sa.Column('register_after', sa.DateTime(timezone=True), nullable=True))
    op.add_column('file_dat', sa.Column('register_attempts', sa.Integer(), server_default='0', nullable=False))
    op.add_column('file_dat', sa.Column('error', sa.Text(), nullable=True))
    op.add_column('outbox', sa.Column('next_attempt_at', sa.DateTime(timezone=True), nullable=True))
    op.create_index('ix_consumed_message_consumed_at', 'consumed_message', ['consumed_at'], unique=False)
    # a file the DSM refused for good is 'rejected' (autogenerate does not see check constraints)
    op.drop_constraint(op.f('ck_file_dat_status'), 'file_dat', type_='check')
    op.create_check_constraint(
        op.f('ck_file_dat_status'), 'file_dat',
        "status IN ('cancelled', 'done', 'failed', 'pending', 'registered', 'rejected', 'staged')"
    )


def downgrade() -> None:
    op.drop_constraint(op.f('ck_file_dat_status'), 'file_dat', type_='check')
    op.create_check_constraint(
        op.f('ck_file_dat_status'), 'file_dat', "status IN ('cancelled', 'done', 'failed', 'pending', 'registered', 'staged')"
    )
    op.drop_index('ix_consumed_message_consumed_at', table_name='consumed_message')
    op.drop_column('outbox', 'next_attempt_at')
    op.drop_column('file_dat', 'error')
    op.drop_column('file_dat', 'register_attempts')
    op.drop_column('file_dat', 'register_after')
    op.drop_column('job_dat', 'lost_attempts')
    op.drop_column('job_dat', 'claim_request_id')

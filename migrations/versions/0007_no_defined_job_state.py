"""jobs: no 'defined' state (the job-manager creates jobs ready, held or cancelled); the no-op jobs.ready
announcement is gone with it

Revision ID: 0007
Revises: 0006
Create Date: 2026-11-25 22:05:00
"""
from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op


revision: str = '0007'
down_revision: str | None = '0006'
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

WITH_DEFINED = "status IN ('cancelled', 'defined', 'dispatched', 'failed', 'finished', 'held', 'ready', 'running')"
WITHOUT_DEFINED = "status IN ('cancelled', 'dispatched', 'failed', 'finished', 'held', 'ready', 'running')"


def upgrade() -> None:
    op.execute("UPDATE job_dat SET status = 'ready', queued_at = coalesce(queued_at, now()) WHERE status = 'defined'")
    op.alter_column('job_dat', 'status', server_default='ready')
    op.drop_constraint(op.f('ck_job_dat_status'), 'job_dat', type_='check')
    op.create_check_constraint(op.f('ck_job_dat_status'), 'job_dat', WITHOUT_DEFINED)
    op.drop_index('ix_job_dat_backlog', table_name='job_dat')
    op.create_index('ix_job_dat_backlog', 'job_dat', ['resource_type'], unique=False,
                    postgresql_where=sa.text("status IN ('held', 'ready')"))


def downgrade() -> None:
    op.drop_index('ix_job_dat_backlog', table_name='job_dat')
    op.create_index('ix_job_dat_backlog', 'job_dat', ['resource_type'], unique=False,
                    postgresql_where=sa.text("status IN ('defined', 'held', 'ready')"))
    op.drop_constraint(op.f('ck_job_dat_status'), 'job_dat', type_='check')
    op.create_check_constraint(op.f('ck_job_dat_status'), 'job_dat', WITH_DEFINED)
    op.alter_column('job_dat', 'status', server_default='defined')

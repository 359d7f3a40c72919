"""fair share at dispatch: each job's dispatch key (a virtual finish time), each task's virtual time, and the
ready-jobs index in that order instead of strict priority

Revision ID: 0015
Revises: 0014
Create Date: 2026-12-02 04:30:00
"""
from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = '0015'
down_revision: str | None = '0014'
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.add_column('job_dat', sa.Column('dispatch_key', sa.Float(), server_default='0', nullable=False))
    op.add_column('task_dat', sa.Column('dispatch_vt', sa.Float(), server_default='0', nullable=False))
    # jobs queued before: in the order they had (priority, then age)
    op.execute("UPDATE job_dat SET dispatch_key = 1.0 / priority WHERE status IN ('ready', 'held')")
    op.drop_index('ix_job_dat_ready', table_name='job_dat')
    op.create_index('ix_job_dat_ready', 'job_dat', ['resource_type', 'dispatch_key', 'id'], unique=False,
                    postgresql_where=sa.text("status = 'ready'"))


def downgrade() -> None:
    op.drop_index('ix_job_dat_ready', table_name='job_dat')
    op.create_index('ix_job_dat_ready', 'job_dat', ['resource_type', sa.text('priority DESC'), 'id'], unique=False,
                    postgresql_where=sa.text("status = 'ready'"))
    op.drop_column('task_dat', 'dispatch_vt')
    op.drop_column('job_dat', 'dispatch_key')

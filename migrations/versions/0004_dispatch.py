"""dispatch: job attempts, pilot sessions, retry backoff, staged outputs

Revision ID: 0004
Revises: 0003
Create Date: 2026-11-25 15:20:48.322909
"""
from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op


revision: str = '0004'
down_revision: str | None = '0003'
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table('job_attempt',
    sa.Column('job_id', sa.BigInteger(), nullable=False),
    sa.Column('attempt', sa.Integer(), nullable=False),
    sa.Column('pilot_id', sa.BigInteger(), nullable=True),
    sa.Column('outcome', sa.Text(), server_default='running', nullable=False),
    sa.Column('started_at', sa.DateTime(timezone=True), server_default=sa.text('now()'), nullable=False),
    sa.Column('finished_at', sa.DateTime(timezone=True), nullable=True),
    sa.Column('exit_code', sa.Integer(), nullable=True),
    sa.Column('error_category', sa.Text(), nullable=True),
    sa.Column('error_message', sa.Text(), nullable=True),
    sa.CheckConstraint("outcome IN ('cancelled', 'failed', 'finished', 'lost', 'running')", name=op.f('ck_job_attempt_outcome')),
    sa.ForeignKeyConstraint(['job_id'], ['job_dat.id'], name=op.f('fk_job_attempt_job_id_job_dat'), ondelete='CASCADE'),
    sa.ForeignKeyConstraint(['pilot_id'], ['pilot_dat.id'], name=op.f('fk_job_attempt_pilot_id_pilot_dat'), ondelete='SET NULL'),
    sa.PrimaryKeyConstraint('job_id', 'attempt', name=op.f('pk_job_attempt'))
    )
    op.create_index('ix_file_dat_staged', 'file_dat', ['id'], unique=False, postgresql_where=sa.text("status = 'staged'"))
    op.add_column('job_dat', sa.Column('not_before', sa.DateTime(timezone=True), nullable=True))
    op.add_column('pilot_dat', sa.Column('session_hash', sa.Text(), server_default='', nullable=False))
    op.add_column('pilot_dat', sa.Column('channel', sa.Text(), server_default='rest', nullable=False))
    op.add_column('task_dat', sa.Column('output_closed_at', sa.DateTime(timezone=True), nullable=True))
    # outputs are 'staged' until the DSM has them (autogenerate does not see check constraints)
    op.drop_constraint(op.f('ck_file_dat_status'), 'file_dat', type_='check')
    op.create_check_constraint(
        op.f('ck_file_dat_status'), 'file_dat', "status IN ('cancelled', 'done', 'failed', 'pending', 'registered', 'staged')"
    )


def downgrade() -> None:
    op.drop_constraint(op.f('ck_file_dat_status'), 'file_dat', type_='check')
    op.create_check_constraint(
        op.f('ck_file_dat_status'), 'file_dat', "status IN ('cancelled', 'done', 'failed', 'pending', 'registered')"
    )
    op.drop_column('task_dat', 'output_closed_at')
    op.drop_column('pilot_dat', 'channel')
    op.drop_column('pilot_dat', 'session_hash')
    op.drop_column('job_dat', 'not_before')
    op.drop_index('ix_file_dat_staged', table_name='file_dat', postgresql_where=sa.text("status = 'staged'"))
    op.drop_table('job_attempt')

"""reference DSM tables, dataset cursor, backlog index

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-25 14:28:03.078176
"""
from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op


revision: str = '0002'
down_revision: str | None = '0001'
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table('dsm_dataset',
    sa.Column('id', sa.BigInteger(), sa.Identity(always=False), nullable=False),
    sa.Column('name', sa.Text(), nullable=False),
    sa.Column('status', sa.Text(), server_default='open', nullable=False),
    sa.Column('n_files', sa.BigInteger(), server_default='0', nullable=False),
    sa.Column('created_at', sa.DateTime(timezone=True), server_default=sa.text('now()'), nullable=False),
    sa.Column('closed_at', sa.DateTime(timezone=True), nullable=True),
    sa.CheckConstraint("status IN ('closed', 'open')", name=op.f('ck_dsm_dataset_status')),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_dsm_dataset')),
    sa.UniqueConstraint('name', name=op.f('uq_dsm_dataset_name'))
    )
    op.create_table('dsm_file',
    sa.Column('id', sa.BigInteger(), sa.Identity(always=False), nullable=False),
    sa.Column('dataset_id', sa.BigInteger(), nullable=False),
    sa.Column('seq', sa.BigInteger(), nullable=False),
    sa.Column('lfn', sa.Text(), nullable=False),
    sa.Column('url', sa.Text(), nullable=False),
    sa.Column('size', sa.BigInteger(), nullable=False),
    sa.Column('adler32', sa.String(length=8), nullable=False),
    sa.Column('events', sa.BigInteger(), nullable=True),
    sa.Column('created_at', sa.DateTime(timezone=True), server_default=sa.text('now()'), nullable=False),
    sa.CheckConstraint("adler32 ~ '^[0-9a-f]{8}$'", name=op.f('ck_dsm_file_adler32_hex')),
    sa.CheckConstraint('size >= 0 AND (events IS NULL OR events >= 0)', name=op.f('ck_dsm_file_non_negative')),
    sa.ForeignKeyConstraint(['dataset_id'], ['dsm_dataset.id'], name=op.f('fk_dsm_file_dataset_id_dsm_dataset'), ondelete='CASCADE'),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_dsm_file')),
    sa.UniqueConstraint('dataset_id', 'lfn', name='uq_dsm_file_dataset_lfn'),
    sa.UniqueConstraint('dataset_id', 'seq', name='uq_dsm_file_dataset_seq')
    )
    op.create_index('ix_job_dat_backlog', 'job_dat', ['resource_type'], unique=False, postgresql_where=sa.text("status IN ('defined', 'held', 'ready')"))
    op.add_column('task_dat', sa.Column('dsm_cursor', sa.BigInteger(), server_default='0', nullable=False))


def downgrade() -> None:
    op.drop_column('task_dat', 'dsm_cursor')
    op.drop_index('ix_job_dat_backlog', table_name='job_dat', postgresql_where=sa.text("status IN ('defined', 'held', 'ready')"))
    op.drop_table('dsm_file')
    op.drop_table('dsm_dataset')

"""initial schema: TASK_DAT, JOB_DAT, PILOT_DAT, FILE_DAT, the outbox and the consumers' dedupe table

Revision ID: 0001
Revises: 
Create Date: 2026-11-25 14:19:16.854877
"""
from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision: str = '0001'
down_revision: str | None = None
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table('consumed_message',
    sa.Column('consumer', sa.Text(), nullable=False),
    sa.Column('message_id', sa.UUID(), nullable=False),
    sa.Column('consumed_at', sa.DateTime(timezone=True), server_default=sa.text('now()'), nullable=False),
    sa.PrimaryKeyConstraint('consumer', 'message_id', name=op.f('pk_consumed_message'))
    )
    op.create_table('outbox',
    sa.Column('id', sa.BigInteger(), sa.Identity(always=False), nullable=False),
    sa.Column('message_id', sa.UUID(), nullable=False),
    sa.Column('exchange', sa.Text(), nullable=False),
    sa.Column('routing_key', sa.Text(), nullable=False),
    sa.Column('body', postgresql.JSONB(astext_type=sa.Text()), nullable=False),
    sa.Column('created_at', sa.DateTime(timezone=True), server_default=sa.text('now()'), nullable=False),
    sa.Column('published_at', sa.DateTime(timezone=True), nullable=True),
    sa.Column('publish_attempts', sa.Integer(), server_default='0', nullable=False),
    sa.Column('last_error', sa.Text(), nullable=True),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_outbox')),
    sa.UniqueConstraint('message_id', name=op.f('uq_outbox_message_id'))
    )
    op.create_index('ix_outbox_unpublished', 'outbox', ['id'], unique=False, postgresql_where=sa.text('published_at IS NULL'))
    op.create_table('pilot_dat',
    sa.Column('id', sa.BigInteger(), sa.Identity(always=False), nullable=False),
    sa.Column('host', sa.Text(), nullable=False),
    sa.Column('resource_type', sa.Text(), nullable=False),
    sa.Column('cores', sa.Integer(), nullable=False),
    sa.Column('memory_mb', sa.Integer(), nullable=False),
    sa.Column('gpus', sa.Integer(), server_default='0', nullable=False),
    sa.Column('status', sa.Text(), server_default='idle', nullable=False),
    sa.Column('version', sa.Text(), nullable=False),
    sa.Column('current_job_id', sa.BigInteger(), nullable=True),
    sa.Column('registered_at', sa.DateTime(timezone=True), server_default=sa.text('now()'), nullable=False),
    sa.Column('heartbeat_at', sa.DateTime(timezone=True), server_default=sa.text('now()'), nullable=False),
    sa.Column('ended_at', sa.DateTime(timezone=True), nullable=True),
    sa.CheckConstraint("resource_type IN ('cpu', 'gpu')", name=op.f('ck_pilot_dat_resource_type')),
    sa.CheckConstraint("status IN ('busy', 'dead', 'exited', 'idle')", name=op.f('ck_pilot_dat_status')),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_pilot_dat'))
    )
    op.create_index('ix_pilot_dat_live_heartbeat', 'pilot_dat', ['heartbeat_at'], unique=False, postgresql_where=sa.text("status IN ('busy', 'idle')"))
    op.create_table('task_dat',
    sa.Column('id', sa.BigInteger(), sa.Identity(always=False), nullable=False),
    sa.Column('name', sa.Text(), nullable=False),
    sa.Column('task_type', sa.Text(), nullable=False),
    sa.Column('input_dataset', sa.Text(), nullable=False),
    sa.Column('output_dataset', sa.Text(), nullable=False),
    sa.Column('payload', postgresql.JSONB(astext_type=sa.Text()), nullable=False),
    sa.Column('resource_type', sa.Text(), nullable=False),
    sa.Column('cores', sa.Integer(), nullable=False),
    sa.Column('memory_mb', sa.Integer(), nullable=False),
    sa.Column('split_by', sa.Text(), nullable=False),
    sa.Column('split_size', sa.BigInteger(), nullable=False),
    sa.Column('max_attempts', sa.Integer(), nullable=False),
    sa.Column('priority', sa.Integer(), nullable=False),
    sa.Column('status', sa.Text(), server_default='registered', nullable=False),
    sa.Column('error', sa.Text(), nullable=True),
    sa.Column('wfms_request_id', sa.Text(), nullable=True),
    sa.Column('request_hash', sa.Text(), nullable=False),
    sa.Column('metadata', postgresql.JSONB(astext_type=sa.Text()), server_default=sa.text("'{}'::jsonb"), nullable=False),
    sa.Column('files_total', sa.BigInteger(), nullable=True),
    sa.Column('files_assigned', sa.BigInteger(), server_default='0', nullable=False),
    sa.Column('jobs_total', sa.BigInteger(), server_default='0', nullable=False),
    sa.Column('created_at', sa.DateTime(timezone=True), server_default=sa.text('now()'), nullable=False),
    sa.Column('updated_at', sa.DateTime(timezone=True), server_default=sa.text('now()'), nullable=False),
    sa.Column('started_at', sa.DateTime(timezone=True), nullable=True),
    sa.Column('finished_at', sa.DateTime(timezone=True), nullable=True),
    sa.CheckConstraint("resource_type IN ('cpu', 'gpu')", name=op.f('ck_task_dat_resource_type')),
    sa.CheckConstraint("split_by IN ('bytes', 'events', 'files')", name=op.f('ck_task_dat_split_by')),
    sa.CheckConstraint("status IN ('cancelled', 'done', 'failed', 'finished', 'paused', 'registered', 'running')", name=op.f('ck_task_dat_status')),
    sa.CheckConstraint('priority BETWEEN 1 AND 1000', name=op.f('ck_task_dat_priority')),
    sa.CheckConstraint('split_size > 0 AND cores > 0 AND memory_mb > 0 AND max_attempts > 0', name=op.f('ck_task_dat_positive')),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_task_dat')),
    sa.UniqueConstraint('wfms_request_id', name=op.f('uq_task_dat_wfms_request_id'))
    )
    op.create_index('ix_task_dat_active', 'task_dat', ['id'], unique=False, postgresql_where=sa.text("status IN ('paused', 'registered', 'running')"))
    op.create_index('ix_task_dat_status_id', 'task_dat', ['status', 'id'], unique=False)
    op.create_table('job_dat',
    sa.Column('id', sa.BigInteger(), sa.Identity(always=False), nullable=False),
    sa.Column('task_id', sa.BigInteger(), nullable=False),
    sa.Column('status', sa.Text(), server_default='defined', nullable=False),
    sa.Column('attempt', sa.Integer(), server_default='0', nullable=False),
    sa.Column('resource_type', sa.Text(), nullable=False),
    sa.Column('priority', sa.Integer(), nullable=False),
    sa.Column('pilot_id', sa.BigInteger(), nullable=True),
    sa.Column('n_files', sa.Integer(), nullable=False),
    sa.Column('n_bytes', sa.BigInteger(), server_default='0', nullable=False),
    sa.Column('n_events', sa.BigInteger(), nullable=True),
    sa.Column('created_at', sa.DateTime(timezone=True), server_default=sa.text('now()'), nullable=False),
    sa.Column('queued_at', sa.DateTime(timezone=True), nullable=True),
    sa.Column('started_at', sa.DateTime(timezone=True), nullable=True),
    sa.Column('heartbeat_at', sa.DateTime(timezone=True), nullable=True),
    sa.Column('finished_at', sa.DateTime(timezone=True), nullable=True),
    sa.Column('exit_code', sa.Integer(), nullable=True),
    sa.Column('error_category', sa.Text(), nullable=True),
    sa.Column('error_message', sa.Text(), nullable=True),
    sa.CheckConstraint("resource_type IN ('cpu', 'gpu')", name=op.f('ck_job_dat_resource_type')),
    sa.CheckConstraint("status IN ('cancelled', 'defined', 'dispatched', 'failed', 'finished', 'held', 'ready', 'running')", name=op.f('ck_job_dat_status')),
    sa.ForeignKeyConstraint(['pilot_id'], ['pilot_dat.id'], name=op.f('fk_job_dat_pilot_id_pilot_dat'), ondelete='SET NULL'),
    sa.ForeignKeyConstraint(['task_id'], ['task_dat.id'], name=op.f('fk_job_dat_task_id_task_dat'), ondelete='CASCADE'),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_job_dat'))
    )
    op.create_index('ix_job_dat_in_flight_heartbeat', 'job_dat', ['heartbeat_at'], unique=False, postgresql_where=sa.text("status IN ('dispatched', 'running')"))
    op.create_index('ix_job_dat_pilot', 'job_dat', ['pilot_id'], unique=False, postgresql_where=sa.text('pilot_id IS NOT NULL'))
    op.create_index('ix_job_dat_ready', 'job_dat', ['resource_type', sa.literal_column('priority DESC'), 'id'], unique=False, postgresql_where=sa.text("status = 'ready'"))
    op.create_index('ix_job_dat_task_status', 'job_dat', ['task_id', 'status'], unique=False)
    op.create_table('file_dat',
    sa.Column('id', sa.BigInteger(), sa.Identity(always=False), nullable=False),
    sa.Column('lfn', sa.Text(), nullable=False),
    sa.Column('dataset', sa.Text(), nullable=False),
    sa.Column('task_id', sa.BigInteger(), nullable=False),
    sa.Column('job_id', sa.BigInteger(), nullable=True),
    sa.Column('role', sa.Text(), nullable=False),
    sa.Column('url', sa.Text(), nullable=True),
    sa.Column('size', sa.BigInteger(), nullable=True),
    sa.Column('adler32', sa.String(length=8), nullable=True),
    sa.Column('events', sa.BigInteger(), nullable=True),
    sa.Column('status', sa.Text(), nullable=False),
    sa.Column('created_at', sa.DateTime(timezone=True), server_default=sa.text('now()'), nullable=False),
    sa.Column('updated_at', sa.DateTime(timezone=True), server_default=sa.text('now()'), nullable=False),
    sa.CheckConstraint("adler32 ~ '^[0-9a-f]{8}$'", name=op.f('ck_file_dat_adler32_hex')),
    sa.CheckConstraint("role IN ('input', 'log', 'output')", name=op.f('ck_file_dat_role')),
    sa.CheckConstraint("status IN ('cancelled', 'done', 'failed', 'pending', 'registered')", name=op.f('ck_file_dat_status')),
    sa.ForeignKeyConstraint(['job_id'], ['job_dat.id'], name=op.f('fk_file_dat_job_id_job_dat'), ondelete='CASCADE'),
    sa.ForeignKeyConstraint(['task_id'], ['task_dat.id'], name=op.f('fk_file_dat_task_id_task_dat'), ondelete='CASCADE'),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_file_dat'))
    )
    op.create_index('ix_file_dat_job', 'file_dat', ['job_id'], unique=False)
    op.create_index('ix_file_dat_task_role_id', 'file_dat', ['task_id', 'role', 'id'], unique=False)
    op.create_index('uq_file_dat_dataset_output_lfn', 'file_dat', ['dataset', 'lfn'], unique=True, postgresql_where=sa.text("role <> 'input'"))
    op.create_index('uq_file_dat_task_input_lfn', 'file_dat', ['task_id', 'lfn'], unique=True, postgresql_where=sa.text("role = 'input'"))


def downgrade() -> None:
    # Dropping a table drops its indexes and constraints; children first.
    for table in ("file_dat", "job_dat", "task_dat", "pilot_dat", "outbox", "consumed_message"):
        op.drop_table(table)

"""task owners and the audit trail: who submitted each task, and every command given on it; the network a pilot
credential's connections must come from

Revision ID: 0014
Revises: 0013
Create Date: 2026-12-02 04:10:00
"""
from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = '0014'
down_revision: str | None = '0013'
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.add_column('task_dat', sa.Column('owner', sa.Text(), nullable=True))
    op.add_column('pilot_credential', sa.Column('network', sa.Text(), nullable=True))
    op.create_table('task_command',
    sa.Column('id', sa.BigInteger(), sa.Identity(always=False), nullable=False),
    sa.Column('task_id', sa.BigInteger(), nullable=False),
    sa.Column('at', sa.DateTime(timezone=True), server_default=sa.text('now()'), nullable=False),
    sa.Column('actor', sa.Text(), nullable=False),
    sa.Column('role', sa.Text(), nullable=False),
    sa.Column('command', sa.Text(), nullable=False),
    sa.Column('detail', sa.Text(), nullable=True),
    sa.ForeignKeyConstraint(['task_id'], ['task_dat.id'], name=op.f('fk_task_command_task_id_task_dat'),
                            ondelete='CASCADE'),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_task_command'))
    )
    op.create_index(op.f('ix_task_command_task_id'), 'task_command', ['task_id'], unique=False)


def downgrade() -> None:
    op.drop_index(op.f('ix_task_command_task_id'), table_name='task_command')
    op.drop_table('task_command')
    op.drop_column('pilot_credential', 'network')
    op.drop_column('task_dat', 'owner')

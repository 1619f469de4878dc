"""drafts

``drafts``: the replies the model in use drafts for agents in customer threads (``@ftbot draft``, the *Draft a reply*
shortcut, ``/ft draft``, auto mode), each with its prompt, the model and back end that wrote it, timings, token counts
and cost, and what the agent did with it (sent as is, edited, discarded, or expired undecided). An edited draft links
to the example and the preference pair it became; a discarded one to the pair its agent's own reply made. A request
key makes Slack's retries of one request store one draft. New preference pair sources (``draft_edit``,
``draft_reply``) and the example source ``draft`` are plain strings in existing columns: no change there.

Revision ID: 0006
Revises: 0005
Create Date: 2026-11-30 02:06:42.944060
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
import sqlmodel  # noqa: F401  (autogenerate renders sqlmodel.sql.sqltypes.AutoString)
from alembic import op

revision: str = '0006'
down_revision: str | None = '0005'
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table('drafts',
    sa.Column('id', sa.Integer(), nullable=False),
    sa.Column('request_key', sqlmodel.sql.sqltypes.AutoString(length=200), nullable=False),
    sa.Column('channel', sqlmodel.sql.sqltypes.AutoString(length=64), nullable=False),
    sa.Column('thread_ts', sqlmodel.sql.sqltypes.AutoString(length=32), nullable=False),
    sa.Column('source_ts', sqlmodel.sql.sqltypes.AutoString(length=32), nullable=False),
    sa.Column('requested_by', sqlmodel.sql.sqltypes.AutoString(length=64), nullable=False),
    sa.Column('model', sqlmodel.sql.sqltypes.AutoString(length=200), nullable=False),
    sa.Column('backend', sqlmodel.sql.sqltypes.AutoString(length=16), nullable=False),
    sa.Column('prompt', sa.JSON(), nullable=False),
    sa.Column('prompt_hash', sqlmodel.sql.sqltypes.AutoString(length=64), nullable=False),
    sa.Column('draft', sa.Text(), nullable=False),
    sa.Column('final_text', sa.Text(), nullable=True),
    sa.Column('outcome', sqlmodel.sql.sqltypes.AutoString(length=16), nullable=True),
    sa.Column('discard_reason', sa.Text(), nullable=True),
    sa.Column('decided_by', sqlmodel.sql.sqltypes.AutoString(length=64), nullable=True),
    sa.Column('decided_at', sa.DateTime(timezone=True), nullable=True),
    sa.Column('latency_ms', sa.Integer(), nullable=True),
    sa.Column('generation_ms', sa.Integer(), nullable=True),
    sa.Column('prompt_tokens', sa.Integer(), nullable=True),
    sa.Column('completion_tokens', sa.Integer(), nullable=True),
    sa.Column('cost_usd', sa.Float(), nullable=True),
    sa.Column('posted_ts', sqlmodel.sql.sqltypes.AutoString(length=32), nullable=True),
    sa.Column('example_id', sa.Integer(), nullable=True),
    sa.Column('pair_id', sa.Integer(), nullable=True),
    sa.Column('created_at', sa.DateTime(timezone=True), nullable=False),
    sa.ForeignKeyConstraint(['example_id'], ['examples.id'], ),
    sa.ForeignKeyConstraint(['pair_id'], ['preference_pairs.id'], ),
    sa.PrimaryKeyConstraint('id'),
    sa.UniqueConstraint('request_key')
    )
    with op.batch_alter_table('drafts', schema=None) as batch_op:
        batch_op.create_index('ix_drafts_channel_thread_ts', ['channel', 'thread_ts'], unique=False)
        batch_op.create_index(batch_op.f('ix_drafts_outcome'), ['outcome'], unique=False)


def downgrade() -> None:
    with op.batch_alter_table('drafts', schema=None) as batch_op:
        batch_op.drop_index(batch_op.f('ix_drafts_outcome'))
        batch_op.drop_index('ix_drafts_channel_thread_ts')
    op.drop_table('drafts')

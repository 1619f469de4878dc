"""slack event inbox and vote tombstones

Slack events get a durable inbox, ``slack_events``: the bot stores each event's body before acknowledging it and
processes it from there, so an event acknowledged just before a crash is processed after the restart. Until now
only the event id was kept, as a claim in ``processed_events`` (which keeps the other idempotency keys, those with a
``:`` in them). Upgrading moves the event claims over as done events, so Slack's retries of events handled before
the upgrade are still answered without acting twice; downgrading moves the events back as claims.

Removed vote reactions get a tombstone, ``vote_tombstones`` (voter, comparison, reaction, time of the removal), so
a ``reaction_added`` that Slack delivers after a newer ``reaction_removed`` no longer brings the vote back.

Revision ID: 0003
Revises: 0002
Create Date: 2026-11-29 23:53:53.016564
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
import sqlmodel  # noqa: F401  (autogenerate renders sqlmodel.sql.sqltypes.AutoString)
from alembic import op

revision: str = '0003'
down_revision: str | None = '0002'
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

processed_events = sa.table(
    "processed_events",
    sa.column("event_id", sa.String()),
    sa.column("created_at", sa.DateTime(timezone=True)),
)
slack_events = sa.table(
    "slack_events",
    sa.column("event_id", sa.String()),
    sa.column("body", sa.Text()),
    sa.column("status", sa.String()),
    sa.column("attempts", sa.Integer()),
    sa.column("received_at", sa.DateTime(timezone=True)),
    sa.column("finished_at", sa.DateTime(timezone=True)),
)
# Slack's event ids (Ev…) have no ":"; the other claims (judge quotes, modal submissions) are "kind:…" keys.
is_event_claim = ~processed_events.c.event_id.contains(":")


def upgrade() -> None:
    op.create_table('slack_events',
    sa.Column('event_id', sqlmodel.sql.sqltypes.AutoString(length=128), nullable=False),
    sa.Column('body', sa.Text(), nullable=False),
    sa.Column('status', sqlmodel.sql.sqltypes.AutoString(length=16), nullable=False),
    sa.Column('attempts', sa.Integer(), nullable=False),
    sa.Column('owner', sqlmodel.sql.sqltypes.AutoString(length=200), nullable=True),
    sa.Column('leased_until', sa.DateTime(timezone=True), nullable=True),
    sa.Column('received_at', sa.DateTime(timezone=True), nullable=False),
    sa.Column('finished_at', sa.DateTime(timezone=True), nullable=True),
    sa.PrimaryKeyConstraint('event_id')
    )
    with op.batch_alter_table('slack_events', schema=None) as batch_op:
        batch_op.create_index(batch_op.f('ix_slack_events_status'), ['status'], unique=False)
    op.create_table('vote_tombstones',
    sa.Column('id', sa.Integer(), nullable=False),
    sa.Column('comparison_id', sa.Integer(), nullable=False),
    sa.Column('voter', sqlmodel.sql.sqltypes.AutoString(length=64), nullable=False),
    sa.Column('reaction', sqlmodel.sql.sqltypes.AutoString(length=64), nullable=False),
    sa.Column('removed_at', sa.DateTime(timezone=True), nullable=False),
    sa.ForeignKeyConstraint(['comparison_id'], ['comparisons.id'], ),
    sa.PrimaryKeyConstraint('id'),
    sa.UniqueConstraint('comparison_id', 'voter', 'reaction')
    )
    with op.batch_alter_table('vote_tombstones', schema=None) as batch_op:
        batch_op.create_index(batch_op.f('ix_vote_tombstones_comparison_id'), ['comparison_id'], unique=False)
    # The old claims kept no body: an empty one is never processed again (the rows are done).
    op.execute(slack_events.insert().from_select(
        ["event_id", "body", "status", "attempts", "received_at", "finished_at"],
        sa.select(processed_events.c.event_id, sa.literal(""), sa.literal("done"), sa.literal(1),
                  processed_events.c.created_at, processed_events.c.created_at).where(is_event_claim),
    ))
    op.execute(processed_events.delete().where(is_event_claim))


def downgrade() -> None:
    with op.batch_alter_table('vote_tombstones', schema=None) as batch_op:
        batch_op.drop_index(batch_op.f('ix_vote_tombstones_comparison_id'))
    op.drop_table('vote_tombstones')
    op.execute(processed_events.insert().from_select(
        ["event_id", "created_at"],
        sa.select(slack_events.c.event_id, slack_events.c.received_at).where(
            ~sa.exists().where(processed_events.c.event_id == slack_events.c.event_id)),
    ))
    with op.batch_alter_table('slack_events', schema=None) as batch_op:
        batch_op.drop_index(batch_op.f('ix_slack_events_status'))

    op.drop_table('slack_events')

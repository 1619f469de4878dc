"""capture drafts

Capture forms in progress get a table of their own; until now they were rows of the key/value ``settings``
table under the key prefix ``capture_draft:``. Upgrading moves those rows over with their keys unchanged (the
keys are in the ``private_metadata`` of modals open in Slack); downgrading moves them back.

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-29 22:51:08.860563
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
import sqlmodel  # noqa: F401  (autogenerate renders sqlmodel.sql.sqltypes.AutoString)
from alembic import op


revision: str = '0002'
down_revision: str | None = '0001'
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

# The prefix bot/capture.py gave draft keys in the settings table; spelled out so this revision never changes.
DRAFT_KEY_PREFIX = "capture_draft:"

settings = sa.table(
    "settings",
    sa.column("key", sa.String()),
    sa.column("value", sa.JSON()),
    sa.column("updated_at", sa.DateTime(timezone=True)),
)
capture_drafts = sa.table(
    "capture_drafts",
    sa.column("key", sa.String()),
    sa.column("draft", sa.JSON()),
    sa.column("created_at", sa.DateTime(timezone=True)),
    sa.column("updated_at", sa.DateTime(timezone=True)),
)
# substr rather than LIKE: "_" is a LIKE wildcard, and SQLite's LIKE ignores case.
is_draft_setting = sa.func.substr(settings.c.key, 1, len(DRAFT_KEY_PREFIX)) == DRAFT_KEY_PREFIX


def upgrade() -> None:
    op.create_table('capture_drafts',
    sa.Column('key', sqlmodel.sql.sqltypes.AutoString(length=200), nullable=False),
    sa.Column('draft', sa.JSON(), nullable=False),
    sa.Column('created_at', sa.DateTime(timezone=True), nullable=False),
    sa.Column('updated_at', sa.DateTime(timezone=True), nullable=False),
    sa.PrimaryKeyConstraint('key')
    )
    # The settings table kept no creation time: the last update is the best one known.
    op.execute(capture_drafts.insert().from_select(
        ["key", "draft", "created_at", "updated_at"],
        sa.select(settings.c.key, settings.c.value, settings.c.updated_at, settings.c.updated_at)
        .where(is_draft_setting, settings.c.value.is_not(None)),
    ))
    op.execute(settings.delete().where(is_draft_setting))


def downgrade() -> None:
    op.execute(settings.insert().from_select(
        ["key", "value", "updated_at"],
        sa.select(capture_drafts.c.key, capture_drafts.c.draft, capture_drafts.c.updated_at),
    ))
    op.drop_table('capture_drafts')

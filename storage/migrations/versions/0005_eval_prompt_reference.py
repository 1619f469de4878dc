"""eval prompt reference

``eval_prompts.reference``: the team's reply to a question added by hand, when it came with one (a link to a team
reply, an SFT line in ``ftbot eval add --file``). The held-out loss measures models against it; questions added
before this revision have none and are only used in voting rounds.

Revision ID: 0005
Revises: 0004
Create Date: 2026-11-30 02:05:00.000000
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = '0005'
down_revision: str | None = '0004'
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    with op.batch_alter_table('eval_prompts', schema=None) as batch_op:
        batch_op.add_column(sa.Column('reference', sa.Text(), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table('eval_prompts', schema=None) as batch_op:
        batch_op.drop_column('reference')

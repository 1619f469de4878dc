"""job announced_at

``jobs.announced_at``: when the bot posted a job's final state to Slack. A started job without it still needs a
bot to relay it, so a bot that starts up picks up every such job from the database, including one a killed process
started but never scheduled, and one that finished while no bot ran. Upgrading marks the jobs already finished as
announced (the bot of the version before posted them, or they predate it), so an upgrade never re-posts old jobs.

Revision ID: 0004
Revises: 0003
Create Date: 2026-12-02 10:12:41.208315
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = '0004'
down_revision: str | None = '0003'
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

jobs = sa.table(
    "jobs",
    sa.column("status", sa.String()),
    sa.column("finished_at", sa.DateTime(timezone=True)),
    sa.column("updated_at", sa.DateTime(timezone=True)),
    sa.column("announced_at", sa.DateTime(timezone=True)),
)
# JobStatus.FINISHED at revision 0004 (literal: a migration must not change when the models do).
FINISHED = ("succeeded", "failed", "cancelled")


def upgrade() -> None:
    with op.batch_alter_table('jobs', schema=None) as batch_op:
        batch_op.add_column(sa.Column('announced_at', sa.DateTime(timezone=True), nullable=True))
    op.execute(jobs.update().where(jobs.c.status.in_(FINISHED))
               .values(announced_at=sa.func.coalesce(jobs.c.finished_at, jobs.c.updated_at)))


def downgrade() -> None:
    with op.batch_alter_table('jobs', schema=None) as batch_op:
        batch_op.drop_column('announced_at')

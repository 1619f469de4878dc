"""scheduled runs

``scheduled_runs``: one row per scheduled job (APScheduler's job id) with the latest run time a bot process claimed.
APScheduler 3 does not coordinate several schedulers on one job store: during a rolling deploy two bots both find
a job due. Each claims the run time with a conditional upsert (only a later run time wins) and runs the job only
when its claim did, so every scheduled run happens once (bot/scheduler.py, storage/scheduled_runs.py).

Revision ID: 0007
Revises: 0006
Create Date: 2026-12-10 10:00:00.000000
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
import sqlmodel  # noqa: F401  (autogenerate renders sqlmodel.sql.sqltypes.AutoString)
from alembic import op

revision: str = '0007'
down_revision: str | None = '0006'
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table('scheduled_runs',
    sa.Column('job_id', sqlmodel.sql.sqltypes.AutoString(length=191), nullable=False),
    sa.Column('run_time', sa.DateTime(timezone=True), nullable=False),
    sa.Column('owner', sqlmodel.sql.sqltypes.AutoString(length=200), nullable=False),
    sa.Column('claimed_at', sa.DateTime(timezone=True), nullable=False),
    sa.PrimaryKeyConstraint('job_id')
    )


def downgrade() -> None:
    op.drop_table('scheduled_runs')

"""deployments

``deployments``: each Together AI dedicated endpoint ftbot quoted, started or stopped for a model (``/ft deploy``,
``ftbot deploy``): the hardware and its price per hour, the idle auto-stop, Together's endpoint and deployment ids,
who started and stopped it and when. A Deploy click claims its quote (quoted → creating) so a double click creates
one endpoint (storage/deployments.py).

Revision ID: 0008
Revises: 0007
Create Date: 2026-12-20 10:00:00.000000
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
import sqlmodel  # noqa: F401  (autogenerate renders sqlmodel.sql.sqltypes.AutoString)
from alembic import op

revision: str = '0008'
down_revision: str | None = '0007'
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table('deployments',
    sa.Column('id', sa.Integer(), nullable=False),
    sa.Column('model_name', sqlmodel.sql.sqltypes.AutoString(length=200), nullable=False),
    sa.Column('status', sqlmodel.sql.sqltypes.AutoString(length=16), nullable=False),
    sa.Column('together_model', sa.Text(), nullable=False),
    sa.Column('config', sa.Text(), nullable=False),
    sa.Column('hardware', sqlmodel.sql.sqltypes.AutoString(length=128), nullable=False),
    sa.Column('price_cents_per_hour', sa.Integer(), nullable=False),
    sa.Column('idle_minutes', sa.Integer(), nullable=False),
    sa.Column('endpoint_id', sqlmodel.sql.sqltypes.AutoString(length=128), nullable=True),
    sa.Column('endpoint_name', sqlmodel.sql.sqltypes.AutoString(length=256), nullable=True),
    sa.Column('deployment_id', sqlmodel.sql.sqltypes.AutoString(length=128), nullable=True),
    sa.Column('error', sa.Text(), nullable=True),
    sa.Column('requested_by', sqlmodel.sql.sqltypes.AutoString(length=64), nullable=True),
    sa.Column('started_by', sqlmodel.sql.sqltypes.AutoString(length=64), nullable=True),
    sa.Column('stopped_by', sqlmodel.sql.sqltypes.AutoString(length=64), nullable=True),
    sa.Column('created_at', sa.DateTime(timezone=True), nullable=False),
    sa.Column('started_at', sa.DateTime(timezone=True), nullable=True),
    sa.Column('stopped_at', sa.DateTime(timezone=True), nullable=True),
    sa.PrimaryKeyConstraint('id')
    )
    op.create_index(op.f('ix_deployments_model_name'), 'deployments', ['model_name'], unique=False)
    op.create_index(op.f('ix_deployments_status'), 'deployments', ['status'], unique=False)


def downgrade() -> None:
    op.drop_index(op.f('ix_deployments_status'), table_name='deployments')
    op.drop_index(op.f('ix_deployments_model_name'), table_name='deployments')
    op.drop_table('deployments')

"""Together AI dedicated endpoints ftbot started for models: the quote, the one claim a Deploy click makes, the stop.

A dedicated endpoint bills per minute while it runs, even idle, so none is ever created without a quote an admin
accepted. A double-clicked Deploy button sends two requests: :func:`claim_deployment` moves the quote from
``quoted`` to ``creating`` for exactly one of them, and only while the model has no other endpoint (an
``ACTIVE`` row), so one model never gets two endpoints from two quotes either. ``/ft undeploy`` claims the running
row the same way (``running`` → ``stopping``).
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import exists, select, update
from sqlalchemy.orm import aliased
from sqlmodel import col

from storage.db import Database
from storage.errors import FtbotError
from storage.models import Deployment, stored_id, utcnow
from storage.vocabulary import DeploymentStatus


class DeploymentNotFound(FtbotError):
    """No deployment has the requested id (an old button, or a hand-made request)."""


def create_quote(db: Database, *, model_name: str, together_model: str, config: str, hardware: str,
                 price_cents_per_hour: int, idle_minutes: int, requested_by: str | None) -> Deployment:
    """Store a deployment quote: what the Deploy button will create (nothing exists on Together yet)."""
    row = Deployment(model_name=model_name, together_model=together_model, config=config, hardware=hardware,
                     price_cents_per_hour=price_cents_per_hour, idle_minutes=idle_minutes, requested_by=requested_by)
    with db.session() as session:
        session.add(row)
        session.flush()
        session.refresh(row)
    return row


def get_deployment(db: Database, deployment_id: int) -> Deployment:
    with db.session() as session:
        row = session.get(Deployment, deployment_id)
    if row is None:
        raise DeploymentNotFound(f"deployment #{deployment_id} does not exist: `ftbot deploy NAME` quotes a new one")
    return row


def active_deployment(db: Database, model_name: str) -> Deployment | None:
    """The model's endpoint on Together (creating, running or stopping), if it has one."""
    with db.session() as session:
        return session.scalar(
            select(Deployment)
            .where(col(Deployment.model_name) == model_name, col(Deployment.status).in_(DeploymentStatus.ACTIVE))
            .order_by(col(Deployment.id).desc())
        )


def list_deployments(db: Database, *, active_only: bool = False) -> list[Deployment]:
    query = select(Deployment).order_by(col(Deployment.id).desc())
    if active_only:
        query = query.where(col(Deployment.status).in_(DeploymentStatus.ACTIVE))
    with db.session() as session:
        return list(session.scalars(query))


def claim_deployment(db: Database, deployment_id: int, *, user: str | None) -> bool:
    """Move a quote to ``creating``; True only for the one caller that did it while its model had no other endpoint."""
    other = aliased(Deployment)
    busy = exists().where(col(other.model_name) == col(Deployment.model_name),
                          col(other.status).in_(DeploymentStatus.ACTIVE), col(other.id) != col(Deployment.id))
    with db.session() as session:
        result = session.exec(
            update(Deployment)
            .where(col(Deployment.id) == deployment_id, col(Deployment.status) == DeploymentStatus.QUOTED, ~busy)
            .values(status=DeploymentStatus.CREATING, started_by=user)
        )
        return bool(result.rowcount == 1)


def _move(db: Database, row_id: int, from_status: str, /, **values: Any) -> bool:
    with db.session() as session:
        result = session.exec(
            update(Deployment)
            .where(col(Deployment.id) == row_id, col(Deployment.status) == from_status)
            .values(**values)
        )
        return bool(result.rowcount == 1)


def record_created(db: Database, deployment_id: int, *, endpoint_id: str, endpoint_name: str,
                   together_deployment_id: str) -> Deployment:
    """Together created the endpoint: it bills from now on."""
    _move(db, deployment_id, DeploymentStatus.CREATING, status=DeploymentStatus.RUNNING, endpoint_id=endpoint_id,
          endpoint_name=endpoint_name, deployment_id=together_deployment_id, started_at=utcnow())
    return get_deployment(db, deployment_id)


def record_failed(db: Database, deployment_id: int, error: str) -> Deployment:
    """Together refused the endpoint (and anything half-created was deleted): nothing bills."""
    _move(db, deployment_id, DeploymentStatus.CREATING, status=DeploymentStatus.FAILED, error=error,
          stopped_at=utcnow())
    return get_deployment(db, deployment_id)


def discard_deployment_quote(db: Database, deployment_id: int, *, user: str | None) -> bool:
    """Close a quote that will not be deployed; False when it was deployed (or closed) meanwhile."""
    return _move(db, deployment_id, DeploymentStatus.QUOTED, status=DeploymentStatus.DISCARDED, stopped_by=user,
                 stopped_at=utcnow())


def claim_stop(db: Database, deployment_id: int, *, user: str | None) -> bool:
    """Move a running endpoint to ``stopping``; True only for the one undeploy that did it."""
    return _move(db, deployment_id, DeploymentStatus.RUNNING, status=DeploymentStatus.STOPPING, stopped_by=user)


def record_stopped(db: Database, deployment_id: int, *, at: datetime | None = None) -> Deployment:
    _move(db, deployment_id, DeploymentStatus.STOPPING, status=DeploymentStatus.STOPPED, stopped_at=at or utcnow())
    return get_deployment(db, deployment_id)


def record_ended_at_together(db: Database, deployment_id: int, *, status: DeploymentStatus, reason: str) -> bool:
    """A running endpoint Together stopped by itself (the idle auto-stop) or lost (failed, deleted elsewhere): it no
    longer bills. False when the row was not running any more (an undeploy got there first)."""
    return _move(db, deployment_id, DeploymentStatus.RUNNING, status=status, stopped_at=utcnow(),
                 stopped_by="Together", error=reason or None)


def release_stop(db: Database, deployment_id: int, error: str) -> Deployment:
    """Together refused the delete: the endpoint still runs (and bills), so the row says running again."""
    _move(db, deployment_id, DeploymentStatus.STOPPING, status=DeploymentStatus.RUNNING, error=error)
    return get_deployment(db, deployment_id)


def _iso(value: datetime | None) -> str | None:
    return value.isoformat() if value else None


def deployment_record(row: Deployment) -> dict[str, Any]:
    """A deployment as JSON (``ftbot deploy --json``)."""
    return {
        "id": stored_id(row), "model": row.model_name, "status": row.status, "hardware": row.hardware,
        "price_usd_per_minute": round(row.price_cents_per_hour / 100 / 60, 6),
        "price_usd_per_hour": row.price_cents_per_hour / 100, "idle_minutes": row.idle_minutes,
        "together_model": row.together_model, "config": row.config, "endpoint_id": row.endpoint_id,
        "endpoint_name": row.endpoint_name, "deployment_id": row.deployment_id, "error": row.error,
        "requested_by": row.requested_by, "started_by": row.started_by, "stopped_by": row.stopped_by,
        "created_at": _iso(row.created_at), "started_at": _iso(row.started_at), "stopped_at": _iso(row.stopped_at),
    }

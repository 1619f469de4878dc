"""At-least-once Slack deliveries: the first delivery of an event_id claims it, retries see it taken."""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import delete
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert
from sqlalchemy.exc import IntegrityError

from storage.db import Database
from storage.models import ProcessedEvent, utcnow

_UPSERT_INSERTS = {"sqlite": sqlite_insert, "postgresql": pg_insert}


def claim_event(db: Database, event_id: str) -> bool:
    """True only for the first delivery of ``event_id`` (across threads and processes)."""
    dialect = db.engine.dialect.name
    with db.session() as session:
        if dialect in _UPSERT_INSERTS:
            # ON CONFLICT DO NOTHING: no error, no aborted transaction; a returned row says we won.
            statement = (
                _UPSERT_INSERTS[dialect](ProcessedEvent)
                .values(event_id=event_id, created_at=utcnow())
                .on_conflict_do_nothing(index_elements=["event_id"])
                .returning(ProcessedEvent.event_id)
            )
            return session.execute(statement).first() is not None
    try:
        with db.session() as session:
            session.add(ProcessedEvent(event_id=event_id))
        return True
    except IntegrityError:
        return False


def release_event(db: Database, event_id: str) -> bool:
    """Forget one claim (its handling failed), so Slack's next retry of the event is processed; True if it existed."""
    with db.session() as session:
        return session.execute(delete(ProcessedEvent).where(ProcessedEvent.event_id == event_id)).rowcount > 0


def forget_events_before(db: Database, cutoff: datetime) -> int:
    """Delete claims older than ``cutoff`` (Slack stops retrying after minutes); returns how many."""
    with db.session() as session:
        return session.execute(delete(ProcessedEvent).where(ProcessedEvent.created_at < cutoff)).rowcount

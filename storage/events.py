"""At-least-once Slack deliveries: the first delivery of an event_id claims it, retries see it taken."""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import delete
from sqlalchemy.exc import IntegrityError
from sqlmodel import col

from storage.db import Database
from storage.models import ProcessedEvent, utcnow


def claim_event(db: Database, event_id: str) -> bool:
    """True only for the first delivery of ``event_id`` (across threads and processes)."""
    insert = db.upsert_insert()
    if insert is not None:
        # ON CONFLICT DO NOTHING: no error, no aborted transaction; a returned row says we won.
        statement = (
            insert(ProcessedEvent)
            .values(event_id=event_id, created_at=utcnow())
            .on_conflict_do_nothing(index_elements=["event_id"])
            .returning(col(ProcessedEvent.event_id))
        )
        with db.session() as session:
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
        return session.exec(delete(ProcessedEvent).where(col(ProcessedEvent.event_id) == event_id)).rowcount > 0


def forget_events_before(db: Database, cutoff: datetime) -> int:
    """Delete claims older than ``cutoff`` (Slack stops retrying after minutes); returns how many."""
    with db.session() as session:
        return session.exec(delete(ProcessedEvent).where(col(ProcessedEvent.created_at) < cutoff)).rowcount

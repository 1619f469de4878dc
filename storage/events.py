"""At-least-once Slack deliveries, made exactly-once in effect.

Two mechanisms live here:

- the **inbox** of Slack events (``slack_events``): every event is stored before it is acknowledged, processed from
  the stored row under a lease (the process working on it and until when), and marked done when its listener has
  run. A process killed after the ack leaves the row pending; the next process, or Slack's retry, processes it. A
  retry of a done event is answered and dropped.
- **claims** (``processed_events``): the first caller with an idempotency key claims it, later ones see it taken
  (a double-submitted form, a double-clicked quote button).

On a SQLite file the inbox is a database of its own (:func:`inbox_database`), so an ack never waits for bulk work.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timedelta
from enum import StrEnum
from pathlib import Path

from sqlalchemy import delete, or_, select, update
from sqlalchemy.exc import IntegrityError, OperationalError
from sqlmodel import col

from storage.db import Database
from storage.models import ProcessedEvent, SlackEvent, utcnow
from storage.vocabulary import InboxStatus

log = logging.getLogger(__name__)

# An event whose listener failed this often is kept as failed instead of being retried again.
MAX_ATTEMPTS = 5


class Delivery(StrEnum):
    """What to do with one delivery of an event."""

    NEW = "new"  # stored now, leased to the caller: process it
    TAKEN_OVER = "taken over"  # stored earlier and abandoned (lease lapsed, owner gone): now leased to the caller
    IN_PROGRESS = "in progress"  # another live process holds it: answer, that process finishes it
    DONE = "done"  # handled already (or failed for good): answer and drop


def inbox_database(db: Database) -> Database:
    """The database that holds ``db``'s inbox of Slack events: on a SQLite file, a SQLite file of its own.

    Why (issue 9): SQLite has one write lock per file, and the inbox writes each event before Bolt acks it. In the
    main file, an ack waited for every long write transaction there: a 150,000-line ``ftbot import`` (one
    all-or-nothing transaction) held acks back for 9 to 19 s, far over Slack's 3 s. In a file of its own
    (``<name>.inbox<suffix>`` next to the main file, migrated like it; only its ``slack_events`` is used) the
    inbox's writes never wait for the main file's lock, whatever runs there (an import, an export, a snapshot),
    and the import stays one transaction. Nothing needs the inbox and the data in one transaction: a listener's
    work was never atomic with its event's row (the work is idempotent, see ``bot.inbox``).

    Events a bot left in the main file (before the inbox had its own file) move to the new file here. PostgreSQL
    locks rows, not the database, and an in-memory SQLite database is one connection's: both keep the inbox in ``db``.
    """
    url = db.engine.url
    if not db.is_sqlite or not url.database or url.database == ":memory:" or url.query.get("mode") == "memory":
        return db
    main = Path(url.database)
    inbox = Database.open(url.set(database=str(main.with_name(f"{main.stem}.inbox{main.suffix}")))
                          .render_as_string(hide_password=False))
    try:
        moved = move_events(db, inbox)
    except OperationalError as error:  # the main file is busy (an import): the next start moves them
        log.warning("could not move the Slack events stored in %s to %s yet: %s", db.url, inbox.url, error)
    else:
        if moved:
            log.info("moved %d Slack event(s) from %s to the inbox file %s", moved, db.url, inbox.url)
    return inbox


def move_events(source: Database, target: Database, *, batch: int = 500) -> int:
    """Move every inbox row from ``source`` to ``target`` (a row ``target`` has already is kept there); how many.

    Copied first, then deleted: a process killed in between copies them again next time, changing nothing.
    """
    moved = 0
    insert = target.upsert_insert()
    while True:
        with source.session() as session:
            rows = [row.model_dump() for row in session.scalars(select(SlackEvent).limit(batch))]
        if not rows:
            return moved
        with target.session() as session:
            if insert is not None:
                session.execute(insert(SlackEvent).on_conflict_do_nothing(index_elements=["event_id"]), rows)
            else:
                known = set(session.scalars(select(col(SlackEvent.event_id)).where(
                    col(SlackEvent.event_id).in_([row["event_id"] for row in rows]))))
                session.add_all(SlackEvent(**row) for row in rows if row["event_id"] not in known)
        with source.session() as session:
            session.exec(delete(SlackEvent).where(col(SlackEvent.event_id).in_([row["event_id"] for row in rows])))
        moved += len(rows)


@dataclass(frozen=True)
class PendingEvent:
    event_id: str
    owner: str | None
    leased_until: datetime | None
    attempts: int


def receive_event(db: Database, event_id: str, body: str, *, owner: str, lease: timedelta,
                  owner_is_gone: Callable[[str], bool] = lambda _owner: False) -> Delivery:
    """Store a delivered event (once per ``event_id``) and say whether the caller should process it now.

    The row is committed before this returns, so an acknowledgement sent afterwards is never for a lost event.
    A delivery of a pending event takes it over when its lease has lapsed or ``owner_is_gone(owner)``.
    """
    now = utcnow()
    insert = db.upsert_insert()
    row = SlackEvent(event_id=event_id, body=body, status=InboxStatus.PENDING, attempts=1, owner=owner,
                     leased_until=now + lease, received_at=now)
    if insert is not None:
        # ON CONFLICT DO NOTHING: no error, no aborted transaction; a returned row says this delivery stored it.
        values = row.model_dump()
        statement = insert(SlackEvent).values(**values).on_conflict_do_nothing(index_elements=["event_id"])
        with db.session() as session:
            if session.execute(statement.returning(col(SlackEvent.event_id))).first() is not None:
                return Delivery.NEW
    else:
        try:
            with db.session() as session:
                session.add(row)
            return Delivery.NEW
        except IntegrityError:
            pass
    with db.session() as session:
        stored = session.get(SlackEvent, event_id)
    if stored is None or stored.status != InboxStatus.PENDING:
        return Delivery.DONE  # (None: forgotten by housekeeping between the two statements, long done)
    gone = stored.owner if stored.owner and stored.owner != owner and owner_is_gone(stored.owner) else None
    if lease_event(db, event_id, owner=owner, lease=lease, from_gone_owner=gone):
        return Delivery.TAKEN_OVER
    return Delivery.IN_PROGRESS


def lease_event(db: Database, event_id: str, *, owner: str, lease: timedelta, from_gone_owner: str | None = None) -> bool:
    """Lease a pending event to ``owner`` if nobody holds it (no lease, a lapsed one, or ``from_gone_owner``'s).

    A compare-and-set: of several processes trying at once, one wins. Each lease counts an attempt.
    """
    now = utcnow()
    free = [col(SlackEvent.leased_until).is_(None), col(SlackEvent.leased_until) < now]
    if from_gone_owner is not None:
        free.append(col(SlackEvent.owner) == from_gone_owner)
    statement = (
        update(SlackEvent)
        .where(col(SlackEvent.event_id) == event_id, col(SlackEvent.status) == InboxStatus.PENDING, or_(*free))
        .values(owner=owner, leased_until=now + lease, attempts=col(SlackEvent.attempts) + 1)
    )
    with db.session() as session:
        return session.exec(statement).rowcount == 1


def stored_event_body(db: Database, event_id: str) -> str | None:
    with db.session() as session:
        return session.scalar(select(col(SlackEvent.body)).where(col(SlackEvent.event_id) == event_id))


def finish_event(db: Database, event_id: str) -> bool:
    """Mark an event done (its listener ran); True the first time. Idempotent: a second finish changes nothing."""
    statement = (
        update(SlackEvent)
        .where(col(SlackEvent.event_id) == event_id, col(SlackEvent.status) == InboxStatus.PENDING)
        .values(status=InboxStatus.DONE, owner=None, leased_until=None, finished_at=utcnow())
    )
    with db.session() as session:
        return session.exec(statement).rowcount == 1


def release_failed_event(db: Database, event_id: str, *, max_attempts: int = MAX_ATTEMPTS) -> InboxStatus | None:
    """Its listener failed: free the lease so it is retried, or after ``max_attempts`` keep it as failed.

    Returns the event's status now (None: no pending event with that id).
    """
    with db.session() as session:
        stored = session.get(SlackEvent, event_id)
        if stored is None or stored.status != InboxStatus.PENDING:
            return None
        if stored.attempts >= max_attempts:
            stored.status, stored.finished_at = InboxStatus.FAILED, utcnow()
        stored.owner, stored.leased_until = None, None
        session.add(stored)
        return InboxStatus(stored.status)


def pending_events(db: Database, *, limit: int = 500) -> list[PendingEvent]:
    """Pending events, oldest first (what a starting process, or the periodic sweep, looks at)."""
    query = (
        select(col(SlackEvent.event_id), col(SlackEvent.owner), col(SlackEvent.leased_until), col(SlackEvent.attempts))
        .where(col(SlackEvent.status) == InboxStatus.PENDING).order_by(col(SlackEvent.received_at)).limit(limit)
    )
    with db.session() as session:
        return [PendingEvent(*row) for row in session.execute(query)]


def event_status(db: Database, event_id: str) -> InboxStatus | None:
    with db.session() as session:
        status = session.scalar(select(col(SlackEvent.status)).where(col(SlackEvent.event_id) == event_id))
    return None if status is None else InboxStatus(status)


def claim_event(db: Database, event_id: str) -> bool:
    """True only for the first caller with ``event_id`` (across threads and processes)."""
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
    """Forget one claim (its handling failed), so the next attempt is processed; True if it existed."""
    with db.session() as session:
        return session.exec(delete(ProcessedEvent).where(col(ProcessedEvent.event_id) == event_id)).rowcount > 0


def forget_events_before(db: Database, cutoff: datetime) -> int:
    """Delete claims and finished inbox events older than ``cutoff`` (Slack stops retrying after minutes); how many."""
    with db.session() as session:
        claims = session.exec(delete(ProcessedEvent).where(col(ProcessedEvent.created_at) < cutoff)).rowcount
        events = session.exec(delete(SlackEvent).where(
            col(SlackEvent.received_at) < cutoff, col(SlackEvent.status) != InboxStatus.PENDING)).rowcount
    return claims + events

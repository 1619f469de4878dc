"""The inbox of Slack events (SQLite and PostgreSQL): stored once, leased to one process, taken over when abandoned,
finished once, retried a bounded number of times, forgotten when old."""

from __future__ import annotations

from datetime import timedelta

from sqlalchemy import update

from storage.events import (
    MAX_ATTEMPTS,
    Delivery,
    event_status,
    finish_event,
    forget_events_before,
    lease_event,
    pending_events,
    receive_event,
    release_failed_event,
    stored_event_body,
)
from storage.models import SlackEvent, utcnow
from storage.vocabulary import InboxStatus
from tests.fixtures.concurrency import at_once

LEASE = timedelta(seconds=60)
BODY = '{"type": "event_callback", "event_id": "Ev1"}'


def _lapse(db, event_id: str) -> None:
    with db.session() as session:
        session.execute(update(SlackEvent).where(SlackEvent.event_id == event_id).values(leased_until=utcnow() - LEASE))


def test_an_event_is_stored_once_and_later_deliveries_wait_for_it_or_are_dropped(db):
    assert receive_event(db, "Ev1", BODY, owner="host:1:a", lease=LEASE) == Delivery.NEW
    assert stored_event_body(db, "Ev1") == BODY and event_status(db, "Ev1") == InboxStatus.PENDING
    # A retry while the first process still works on it: answered, not processed twice.
    assert receive_event(db, "Ev1", BODY, owner="host:2:b", lease=LEASE) == Delivery.IN_PROGRESS
    assert finish_event(db, "Ev1") and not finish_event(db, "Ev1")
    assert receive_event(db, "Ev1", BODY, owner="host:2:b", lease=LEASE) == Delivery.DONE
    assert pending_events(db) == []


def test_concurrent_deliveries_of_one_event_store_it_once(db):
    outcomes = at_once(lambda index: receive_event(db, "Ev2", BODY, owner=f"host:{index}:t", lease=LEASE), 6)
    assert sorted(outcomes) == sorted([Delivery.NEW] + [Delivery.IN_PROGRESS] * 5)


def test_an_abandoned_event_is_taken_over_by_the_next_delivery(db):
    assert receive_event(db, "Ev3", BODY, owner="host:1:a", lease=LEASE) == Delivery.NEW
    # Its owner is known to be gone (killed): a retry takes it over at once, without waiting out the lease.
    assert receive_event(db, "Ev3", BODY, owner="host:2:b", lease=LEASE,
                         owner_is_gone=lambda owner: owner == "host:1:a") == Delivery.TAKEN_OVER
    [pending] = pending_events(db)
    assert (pending.event_id, pending.owner, pending.attempts) == ("Ev3", "host:2:b", 2)
    # Its new owner is alive but its lease lapsed: the next delivery takes it over too.
    _lapse(db, "Ev3")
    assert receive_event(db, "Ev3", BODY, owner="host:3:c", lease=LEASE) == Delivery.TAKEN_OVER


def test_of_two_processes_taking_over_from_a_gone_owner_one_wins(db):
    receive_event(db, "Ev4", BODY, owner="host:1:dead", lease=LEASE)
    wins = at_once(lambda index: lease_event(db, "Ev4", owner=f"host:{index + 2}:t", lease=LEASE,
                                             from_gone_owner="host:1:dead"), 4)
    assert sorted(wins) == [False, False, False, True]
    assert not lease_event(db, "Ev4", owner="host:9:t", lease=LEASE)  # leased again: not free


def test_a_failing_event_is_retried_then_kept_as_failed(db):
    receive_event(db, "Ev5", BODY, owner="host:1:a", lease=LEASE)
    for attempt in range(2, MAX_ATTEMPTS + 1):
        assert release_failed_event(db, "Ev5") == InboxStatus.PENDING
        assert lease_event(db, "Ev5", owner="host:1:a", lease=LEASE), f"attempt {attempt} could not lease it"
    assert release_failed_event(db, "Ev5") == InboxStatus.FAILED
    assert pending_events(db) == [] and not lease_event(db, "Ev5", owner="host:1:a", lease=LEASE)
    assert receive_event(db, "Ev5", BODY, owner="host:1:a", lease=LEASE) == Delivery.DONE
    assert release_failed_event(db, "Ev5") is None


def test_housekeeping_forgets_finished_events_but_never_pending_ones(db):
    for event_id in ("Ev_done", "Ev_pending"):
        receive_event(db, event_id, BODY, owner="host:1:a", lease=LEASE)
    finish_event(db, "Ev_done")
    assert forget_events_before(db, utcnow() - timedelta(days=1)) == 0
    assert forget_events_before(db, utcnow() + timedelta(seconds=1)) == 1
    assert event_status(db, "Ev_done") is None and event_status(db, "Ev_pending") == InboxStatus.PENDING

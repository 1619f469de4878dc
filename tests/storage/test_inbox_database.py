"""Where the Slack event inbox lives: ``storage.events.inbox_database`` (issue 9: acks never wait for bulk work)."""

from __future__ import annotations

from datetime import timedelta
from pathlib import Path

from storage.db import Database
from storage.events import Delivery, event_status, finish_event, inbox_database, pending_events, receive_event
from storage.vocabulary import InboxStatus

LEASE = timedelta(minutes=1)


def test_a_sqlite_file_gets_an_inbox_file_of_its_own_next_to_it(tmp_path: Path):
    main = Database.open(f"sqlite:///{tmp_path / 'ftbot.sqlite3'}")
    inbox = inbox_database(main)
    try:
        assert inbox is not main and Path(str(inbox.engine.url.database)) == tmp_path / "ftbot.inbox.sqlite3"
        assert receive_event(inbox, "Ev1", "{}", owner="host:1:a", lease=LEASE) == Delivery.NEW
        assert event_status(inbox, "Ev1") == InboxStatus.PENDING and event_status(main, "Ev1") is None
    finally:
        inbox.close()
        main.close()


def test_events_left_in_the_main_file_move_to_the_inbox_file_once(tmp_path: Path):
    main = Database.open(f"sqlite:///{tmp_path / 'ftbot.sqlite3'}")
    for index in range(3):
        receive_event(main, f"EvOld{index}", f'{{"n": {index}}}', owner="host:1:a", lease=LEASE)
    finish_event(main, "EvOld0")
    inbox = inbox_database(main)
    again = inbox_database(main)  # a second start: nothing left to move, nothing duplicated
    try:
        assert pending_events(main) == [] and event_status(main, "EvOld0") is None
        assert [event.event_id for event in pending_events(inbox)] == ["EvOld1", "EvOld2"]
        assert event_status(inbox, "EvOld0") == InboxStatus.DONE  # a retry of it is still dropped
        assert receive_event(inbox, "EvOld0", "{}", owner="host:2:b", lease=LEASE) == Delivery.DONE
    finally:
        again.close()
        inbox.close()
        main.close()


def test_in_memory_sqlite_keeps_the_inbox_in_the_same_database():
    main = Database.open("sqlite://")
    assert inbox_database(main) is main
    main.close()

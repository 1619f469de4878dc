"""Issue 9: a Slack event is acknowledged (and stored) while another process holds the main SQLite file's write lock.

Before, the inbox wrote each event into the main file before the ack, so a long write transaction there (a
150,000-line ``ftbot import``) held every ack back until it committed, or for SQLite's 15 s busy timeout. Now the
inbox has a SQLite file of its own (``storage.events.inbox_database``). ``bench/bench_ack_latency.py`` measures it.
"""

from __future__ import annotations

import sqlite3
from concurrent.futures import ThreadPoolExecutor

from sqlalchemy import text

from storage.db import Database
from storage.events import event_status
from storage.vocabulary import InboxStatus
from tests.fixtures.slack_api import SlackHarness

# How long the ack may take while the lock is held: a bound on the test, far below SQLite's 15 s busy timeout the
# old code waited out; the ack itself takes milliseconds.
ACK_BOUND_S = 5.0


def test_an_event_is_acked_and_stored_while_the_main_database_is_write_locked(sqlite_db: Database, fake_slack):
    h = SlackHarness.create(sqlite_db, fake_slack)
    writer = sqlite3.connect(str(sqlite_db.engine.url.database), timeout=1, isolation_level=None)
    try:
        # Another process's long write transaction on the main file (an import in progress).
        writer.execute("BEGIN IMMEDIATE")
        writer.execute("UPDATE alembic_version SET version_num = version_num")
        event = {"type": "reaction_added", "user": "U_AGENT", "reaction": "thumbsup", "event_ts": "1700000001.000200",
                 "item": {"type": "message", "channel": "C_SUPPORT", "ts": "1700000000.000100"}}
        with ThreadPoolExecutor(1) as pool:
            response = pool.submit(h.event, event, event_id="EvWhileLocked1").result(timeout=ACK_BOUND_S)
            assert response.status == 200
            # Stored before the ack (what makes the ack safe), while the main file is still locked.
            assert event_status(h.bot.inbox.db, "EvWhileLocked1") in (InboxStatus.PENDING, InboxStatus.DONE)
            assert h.bot.inbox.db.engine.url.database != sqlite_db.engine.url.database
    finally:
        writer.rollback()
        writer.close()
        h.wait()
        h.close()
    assert event_status(h.bot.inbox.db, "EvWhileLocked1") == InboxStatus.DONE
    with sqlite_db.session() as session:  # the main file is writable again
        session.execute(text("UPDATE alembic_version SET version_num = version_num"))

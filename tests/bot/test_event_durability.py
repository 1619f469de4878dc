"""Fault injection: the real bot (``ftbot run --http`` in a subprocess) is killed with SIGKILL while 16 senders deliver
signed vote events; after a restart and Slack's retries, every event it answered 200 has counted exactly once.

Each cycle sends 400 distinct ``reaction_added`` votes (one voter per event), kills the bot after a random number of
acks, restarts it, redelivers every event that got no 200 with ``X-Slack-Retry-Num: 1`` and waits for the votes.
Run with ``-s`` to see the figures of each cycle.
"""

from __future__ import annotations

import http.client
import json
import os
import random
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import timedelta
from pathlib import Path

import pytest
from sqlalchemy import func, select
from sqlalchemy.exc import OperationalError
from sqlmodel import col

from bot.console.fake_slack import FakeSlack
from bot.scheduler import start_scheduler, stop_scheduler
from storage import evals
from storage.db import Database
from storage.evals import RoundStatus
from storage.events import Delivery, event_status, inbox_database, pending_events, receive_event
from storage.models import SlackEvent, Vote
from storage.vocabulary import InboxStatus
from tests.fixtures.slack_api import BOT_TOKEN, SIGNING_SECRET, SlackHarness, event_callback, signed_headers

CHANNEL = "C_SUPPORT"
EVENTS_PER_CYCLE = 400
SENDERS = 16
KILLS = 3
COMPARISONS = 4
VOTE_REACTIONS = ("a", "b", "handshake", "-1")
SEED = int(os.environ.get("FTBOT_TEST_SEED", "0")) or random.SystemRandom().randrange(1, 10**6)


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def database_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'bot.sqlite3'}"
    return request.getfixturevalue("postgres_server").create_database()


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


class BotProcess:
    """``ftbot run --http`` on a free port, against the fake Slack and the test's database."""

    def __init__(self, database_url: str, slack_api_url: str, log_path: Path):
        self.port = _free_port()
        self.env = {**os.environ, "SLACK_BOT_TOKEN": BOT_TOKEN, "SLACK_SIGNING_SECRET": SIGNING_SECRET,
                    "FTBOT_SLACK_API_URL": slack_api_url, "FTBOT_DATABASE_URL": database_url}
        self.env.pop("SLACK_APP_TOKEN", None)
        self.log_path = log_path
        self.process: subprocess.Popen[bytes] | None = None

    def start(self, timeout: float = 60.0) -> BotProcess:
        with self.log_path.open("ab") as log:
            self.process = subprocess.Popen(
                [sys.executable, "-c", "from bot.cli import main; main()",
                 "run", "--http", "--host", "127.0.0.1", "--port", str(self.port)],
                env=self.env, stdout=log, stderr=subprocess.STDOUT,
            )
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise AssertionError(f"the bot exited with {self.process.returncode}:\n{self.log_path.read_text()[-3000:]}")
            try:
                connection = http.client.HTTPConnection("127.0.0.1", self.port, timeout=1)
                connection.request("GET", "/healthz")
                if connection.getresponse().status == 200:
                    return self
            except OSError:
                time.sleep(0.1)
        raise AssertionError(f"the bot did not start in {timeout:.0f} s:\n{self.log_path.read_text()[-3000:]}")

    def kill(self) -> None:
        """SIGKILL: no shutdown handler, no flush, threads gone mid-statement."""
        if self.process is not None:
            self.process.kill()
            self.process.wait(timeout=10)  # reaped: the killed pid is gone, not a zombie

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.kill()

    def deliver(self, body: str, retry_num: int | None = None) -> int | None:
        """POST one signed event; its status, or None when no answer came (refused, reset, killed)."""
        try:
            connection = http.client.HTTPConnection("127.0.0.1", self.port, timeout=10)
            connection.request("POST", "/slack/events", body=body.encode(),
                               headers=signed_headers(body, content_type="application/json", retry_num=retry_num))
            status = connection.getresponse().status
            connection.close()
            return status
        except OSError:
            return None
        except http.client.HTTPException:
            return None


@dataclass
class Cycle:
    number: int
    kill_after: int
    acked: set[str] = field(default_factory=set)
    lock: threading.Lock = field(default_factory=threading.Lock)
    reached: threading.Event = field(default_factory=threading.Event)


def _seed_open_round(db: Database) -> list[str]:
    """An open round whose comparisons were posted as messages; their timestamps."""
    prompts = [[{"role": "user", "content": f"How do I fix issue {i}?"}] for i in range(COMPARISONS)]
    round_ = evals.create_round(db, candidate_model="ft:gpt-4o-mini:acme:support:x1", baseline_model="gpt-4o-mini",
                                prompts=prompts, channel=CHANNEL, status=RoundStatus.OPEN).example
    timestamps = []
    for index, comparison in enumerate(evals.round_comparisons(db, round_.id)):
        ts = f"1700000000.{index:06d}"
        evals.set_comparison_message(db, comparison.id, channel=CHANNEL, message_ts=ts)
        timestamps.append(ts)
    return timestamps


def _vote_events(cycle: int, timestamps: list[str]) -> dict[str, tuple[str, str]]:
    """event_id -> (signed body, voter); each event is a different voter's vote."""
    events = {}
    for index in range(EVENTS_PER_CYCLE):
        voter = f"U{cycle}V{index:04d}"
        event = {"type": "reaction_added", "user": voter, "reaction": VOTE_REACTIONS[index % len(VOTE_REACTIONS)],
                 "item": {"type": "message", "channel": CHANNEL, "ts": timestamps[index % len(timestamps)]},
                 "item_user": "U0FTBOT", "event_ts": f"{time.time():.6f}"}
        event_id = f"Ev{cycle}x{index:04d}"
        events[event_id] = (json.dumps(event_callback(event, event_id=event_id)), voter)
    return events


def _voters_with_votes(db: Database) -> set[str]:
    with db.session() as session:
        return set(session.scalars(select(Vote.voter)))


def _duplicated_votes(db: Database) -> int:
    """Votes beyond one per (comparison, voter): an event counted twice."""
    with db.session() as session:
        counts = session.execute(select(func.count()).select_from(Vote).group_by(col(Vote.comparison_id), col(Vote.voter)))
        return sum(count - 1 for (count,) in counts)


def _resumed_after_restart(db: Database, event_ids: set[str]) -> int:
    """Events processed more than once from the inbox: acknowledged ones the killed bot had not finished."""
    with db.session() as session:
        return len(set(session.scalars(select(SlackEvent.event_id).where(col(SlackEvent.attempts) > 1))) & event_ids)


def _wait_for_voters(db: Database, voters: set[str], timeout: float = 30.0) -> set[str]:
    deadline = time.monotonic() + timeout
    while True:
        missing = voters - _voters_with_votes(db)
        if not missing or time.monotonic() > deadline:
            return missing
        time.sleep(0.1)


@pytest.fixture
def fake_slack_server() -> Iterator[FakeSlack]:
    with FakeSlack(token=BOT_TOKEN) as fake:
        fake.add_channel(CHANNEL, "support")
        yield fake


def test_every_acknowledged_vote_counts_once_across_kill_9(database_url: str, fake_slack_server: FakeSlack, tmp_path: Path):
    rng = random.Random(SEED)
    db = Database.open(database_url)
    try:
        timestamps = _seed_open_round(db)
        bot = BotProcess(database_url, fake_slack_server.base_url, tmp_path / "bot.log").start()
        expected_voters: set[str] = set()
        figures = []
        try:
            for number in range(1, KILLS + 1):
                events = _vote_events(number, timestamps)
                cycle = Cycle(number, kill_after=rng.randrange(EVENTS_PER_CYCLE // 20, EVENTS_PER_CYCLE * 3 // 4))

                def send(event_id: str, cycle: Cycle = cycle, events: dict = events) -> None:
                    if bot.deliver(events[event_id][0]) == 200:
                        with cycle.lock:
                            cycle.acked.add(event_id)
                            if len(cycle.acked) >= cycle.kill_after:
                                cycle.reached.set()

                with ThreadPoolExecutor(SENDERS) as senders:
                    futures = [senders.submit(send, event_id) for event_id in events]
                    assert cycle.reached.wait(timeout=60), f"only {len(cycle.acked)} acks before the kill point"
                    bot.kill()
                    for future in futures:
                        future.result()
                with cycle.lock:
                    acked_before_kill = set(cycle.acked)
                bot.start()
                unanswered = [event_id for event_id in events if event_id not in acked_before_kill]
                with ThreadPoolExecutor(SENDERS) as senders:
                    retry_statuses = list(senders.map(bot.deliver, [events[event_id][0] for event_id in unanswered],
                                                      [1] * len(unanswered)))
                assert retry_statuses == [200] * len(unanswered), "a retry after the restart was not answered 200"

                expected_voters |= {voter for _body, voter in events.values()}
                missing = _wait_for_voters(db, expected_voters)
                lost = {event_id for event_id in acked_before_kill if events[event_id][1] in missing}
                duplicated = _duplicated_votes(db)
                resumed = _resumed_after_restart(inbox_database(db), set(events))  # the bot's inbox file
                figures.append(f"cycle {number} (seed {SEED}): sent {EVENTS_PER_CYCLE}, acked before kill "
                               f"{len(acked_before_kill)}, unanswered and retried {len(unanswered)}, finished from the "
                               f"inbox after the restart {resumed}, lost {len(lost)}, duplicated {duplicated}")
                print(figures[-1])
                assert not lost, f"{len(lost)} acknowledged events never counted: {figures}"
                assert not missing, f"{len(missing)} retried events never counted: {figures}"
                assert duplicated == 0, figures
            with db.session() as session:
                assert session.scalar(select(func.count()).select_from(Vote)) == KILLS * EVENTS_PER_CYCLE
        finally:
            bot.stop()
    finally:
        db.close()


# ---- the same guarantees in one process, through the real Bolt app ---------------------------------------------------
def _dead_owner() -> str:
    """The lease owner a killed bot process on this host leaves behind (its pid no longer runs)."""
    finished = subprocess.Popen([sys.executable, "-c", "pass"])
    finished.wait()
    return f"{socket.gethostname()}:{finished.pid}:0dead"


def _vote_body(event_id: str, voter: str, ts: str) -> str:
    event = {"type": "reaction_added", "user": voter, "reaction": "a", "item": {"type": "message", "channel": CHANNEL, "ts": ts},
             "item_user": "U0FTBOT", "event_ts": f"{time.time():.6f}"}
    return json.dumps(event_callback(event, event_id=event_id))


def _left_by_a_killed_bot(db: Database, event_id: str, body: str) -> None:
    assert receive_event(db, event_id, body, owner=_dead_owner(), lease=timedelta(minutes=5)) == Delivery.NEW


def test_a_retry_of_an_event_a_killed_bot_acknowledged_is_processed(sqlite_db, fake_slack):
    [ts, *_] = _seed_open_round(sqlite_db)
    body = _vote_body("EvKilled1", "U_VOTER", ts)
    _left_by_a_killed_bot(sqlite_db, "EvKilled1", body)
    h = SlackHarness.create(sqlite_db, fake_slack)
    try:
        # Slack's retry: the stored event is pending under a dead owner's lease, so this delivery processes it.
        assert h.dispatch(body, content_type="application/json", retry_num=1).status == 200
        h.wait()
        assert _voters_with_votes(sqlite_db) == {"U_VOTER"} and event_status(h.bot.inbox.db, "EvKilled1") == InboxStatus.DONE
        # A later retry of the done event changes nothing.
        assert h.dispatch(body, content_type="application/json", retry_num=2).status == 200
        h.wait()
        assert _duplicated_votes(sqlite_db) == 0 and len(_voters_with_votes(sqlite_db)) == 1
    finally:
        h.close()


def test_a_starting_bot_processes_what_a_killed_bot_left_pending(sqlite_db, fake_slack):
    [ts, *_] = _seed_open_round(sqlite_db)
    for index in range(3):
        _left_by_a_killed_bot(sqlite_db, f"EvLeft{index}", _vote_body(f"EvLeft{index}", f"U_LEFT{index}", ts))
    h = SlackHarness.create(sqlite_db, fake_slack)
    try:
        start_scheduler(h.bot)  # what `ftbot run` does at start-up
        assert _wait_for_voters(sqlite_db, {"U_LEFT0", "U_LEFT1", "U_LEFT2"}, timeout=10) == set()
        h.wait()
        assert pending_events(h.bot.inbox.db) == []
    finally:
        stop_scheduler(h.bot)
        h.close()


def test_an_event_whose_listener_failed_is_processed_again(sqlite_db, fake_slack, monkeypatch):
    [ts, *_] = _seed_open_round(sqlite_db)
    real_cast_vote = evals.cast_vote
    failures = []

    def cast_vote_failing_once(*args, **kwargs):
        if not failures:
            failures.append("database went away")
            raise OperationalError("UPDATE votes", {}, Exception("database went away"))
        return real_cast_vote(*args, **kwargs)

    monkeypatch.setattr(evals, "cast_vote", cast_vote_failing_once)
    h = SlackHarness.create(sqlite_db, fake_slack)
    try:
        assert h.dispatch(_vote_body("EvFails1", "U_VOTER", ts), content_type="application/json").status == 200
        h.wait()
        assert failures and _voters_with_votes(sqlite_db) == set()
        [pending] = pending_events(h.bot.inbox.db)
        assert pending.leased_until is None  # freed at once for the next attempt
        assert h.bot.inbox.redeliver_pending() == 1  # what the periodic job does
        h.wait()
        assert _voters_with_votes(sqlite_db) == {"U_VOTER"} and event_status(h.bot.inbox.db, "EvFails1") == InboxStatus.DONE
    finally:
        h.close()

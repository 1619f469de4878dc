"""The console behaves like a Slack client: "Copy link" (``:link N``), reactions kept per person (``:unreact`` of
one of two vote reactions), Slack's dates, and slash commands no app declares."""

from __future__ import annotations

import io
import logging
from collections.abc import Iterator
from datetime import datetime

import pytest

from bot.console.shell import CHANNEL, PEOPLE, Console
from storage import evals
from storage.config import Settings
from storage.evals import RoundStatus
from storage.models import stored_id


@pytest.fixture
def console(sqlite_db, tmp_path) -> Iterator[Console]:
    session = Console(Settings(), sqlite_db, out=io.StringIO(), files_dir=tmp_path / "console-files")
    try:
        yield session
    finally:
        session.close()


def output(console: Console) -> str:
    out = console.out
    assert isinstance(out, io.StringIO)
    return out.getvalue()


def test_link_prints_the_permalink_that_ft_add_accepts(console):
    console.handle("My parcel never arrived")
    console.handle(":thread 1")
    console.handle(":as agent")
    console.handle("I have sent a replacement today.")
    console.handle(":link 2")
    parent, reply = console.by_number[1], console.by_number[2]
    link = console.fake.permalink(CHANNEL, reply, parent)  # what chat.getPermalink answers for a thread reply
    assert f"\n  {link}\n" in output(console) and "?thread_ts=" in link

    # Pasted into /ft add, it opens the capture form on that reply, as "Copy link" in Slack would.
    console.handle(f"/ft add {link}")
    assert "┌ modal:" in output(console) and "2. Agent reply (assistant):" in output(console)

    console.handle(":link 9")
    console.handle(":link")
    assert "there is no message #9 (messages are #1–#2; :history lists them)" in output(console)
    assert "usage: :link N" in output(console)


def test_a_bad_message_number_says_which_messages_exist(console):
    console.handle(":link 1")
    assert "there is no message #1: nothing has been posted yet" in output(console)
    console.handle("Hello?")
    console.handle(":link 2")
    assert "there is no message #2 (the only message is #1; :history lists them)" in output(console)


def test_help_lists_link(console):
    console.handle(":help")
    assert ":link N" in output(console)


def _open_comparison(console: Console) -> tuple[str, int]:
    """A blind comparison message of an open round in #support, as ``/ft eval`` posts it: (its ts, comparison id)."""
    posted = console.app.ftbot.client.chat_postMessage(channel=CHANNEL, text="Blind comparison 1 of 1")
    saved = evals.create_round(console.bot.db, candidate_model="cand", baseline_model="base", channel=CHANNEL,
                               prompts=[[{"role": "user", "content": "Where is my parcel?"}]], status=RoundStatus.OPEN)
    [comparison] = evals.round_comparisons(console.bot.db, stored_id(saved.example))
    evals.set_comparison_message(console.bot.db, stored_id(comparison), channel=CHANNEL, message_ts=posted["ts"])
    return str(posted["ts"]), stored_id(comparison)


def test_unreact_removes_only_that_reaction_and_the_voters_other_vote_counts(console):
    ts, comparison_id = _open_comparison(console)
    removed_events = []

    @console.app.middleware
    def record_removals(body, next):
        event = body.get("event") or {}
        if event.get("type") == "reaction_removed":
            removed_events.append(event)
        next()

    def vote() -> str | None:
        found = evals.get_vote(console.bot.db, comparison_id, PEOPLE["lead"])
        return None if found is None else found.choice

    number = console.numbers[ts]
    console.handle(":as lead")
    console.handle(f":react {number} a")
    console.handle(f":react {number} b")
    assert vote() == "B"  # the newer reaction moved the vote
    console.handle(f":unreact {number} b")

    # Only :b: went: the fake workspace (what reactions.get answers) still has the lead's :a:, so the vote is A again.
    assert [(e["reaction"], e["user"]) for e in removed_events] == [("b", PEOPLE["lead"])]
    assert vote() == "A"
    assert console.fake.reactions.get((CHANNEL, ts)) == [{"name": "a", "user": PEOPLE["lead"]}]
    assert f"(lead removed :b: on #{number})" in output(console)

    # As in Slack: no second :a: from the same person, and nothing to remove that is not there.
    console.handle(f":react {number} a")
    console.handle(f":unreact {number} b")
    assert f"lead already reacted :a: on #{number}" in output(console)
    assert f"lead has no :b: reaction on #{number} to remove" in output(console)
    assert len(removed_events) == 1 and vote() == "A"


def test_unknown_slash_command_gets_a_friendly_line_not_bolts_hint(console, caplog):
    caplog.set_level(logging.DEBUG)
    console.handle("/foo bar")
    assert "Unknown command /foo. ftbot answers /ft — try /ft help." in output(console)
    assert "@app.command" not in output(console) + caplog.text
    assert "Unhandled request" not in caplog.text
    # /ft itself still reaches the app.
    console.handle("/ft help")
    assert "Unknown command /ft" not in output(console)


def test_bot_messages_show_slack_dates_in_local_time(console):
    stamp = int(datetime.now().timestamp())
    console.app.ftbot.client.chat_postMessage(
        channel=CHANNEL, text=f"Voting closes <!date^{stamp}^{{date_short_pretty}} at {{time}}|2020-01-01 00:00 UTC>.")
    assert f"Voting closes today at {datetime.fromtimestamp(stamp):%H:%M}." in output(console)
    assert "!date" not in output(console) and "@date" not in output(console)

"""Reactions as votes: removals that fall back to a vote reaction still there, the voter allowlist, and votes after
voting time is over."""

from __future__ import annotations

import json
import time

from storage import evals
from storage.evals import RoundStatus
from tests.bot.evaluation.helpers import (
    answer_by_model,
    post_round,
    react,
    seed_model,
    start_round,
    stop_harness_scheduler,
    user_react,
)
from tests.fixtures.slack_api import SlackHarness


def test_removing_the_vote_reaction_falls_back_to_one_still_there(harness):
    h = harness
    seed_model(h.db)
    round_id = start_round(h, "eval --n 2")
    post_round(h, round_id)
    first = evals.round_comparisons(h.db, round_id)[0]

    def vote() -> str | None:
        found = evals.get_vote(h.db, first.id, "U7")
        return None if found is None else found.choice

    t0 = time.time()
    user_react(h, "U7", "a", first.message_ts, event_id="EvF1", event_ts=t0)
    user_react(h, "U7", "b", first.message_ts, event_id="EvF2", event_ts=t0 + 1)
    assert vote() == "B"
    h.fake.reset_calls()
    # :b: removed while :a: is still there: the vote goes back to A (asked of Slack with full=True).
    user_react(h, "U7", "b", first.message_ts, event_id="EvF3", event_ts=t0 + 2, removed=True)
    assert vote() == "A"
    [lookup] = h.fake.calls_to("reactions.get")
    assert lookup.args.get("timestamp") == first.message_ts and str(lookup.args.get("full")).lower() in ("true", "1")
    # Slack retries that removal: still A.
    react(h, "U7", "b", first.message_ts, event_id="EvF3", event_ts=t0 + 2, removed=True, retry_num=1)
    assert vote() == "A"
    # Removing :a: leaves no vote reaction of U7's (the bot's seeded ones do not count): no vote.
    user_react(h, "U7", "a", first.message_ts, event_id="EvF4", event_ts=t0 + 3, removed=True)
    assert vote() is None
    assert evals.round_votes(h.db, round_id) == []


def test_voter_allowlist_and_timed_close(sqlite_db, fake_slack, openai_api):
    openai_api.responder = answer_by_model
    h = SlackHarness.create(sqlite_db, fake_slack, eval_post_interval=0.0, voters=("U_LEAD",), eval_hours=1 / 3600)
    try:
        seed_model(h.db)
        round_id = start_round(h, "eval --n 2")
        post_round(h, round_id)
        first = evals.round_comparisons(h.db, round_id)[0]
        react(h, "U_AGENT", "a", first.message_ts, event_id="EvA")
        assert evals.round_votes(h.db, round_id) == []
        assert any("not counted" in call.args.get("text", "") for call in h.fake.calls_to("chat.postEphemeral"))
        react(h, "U_LEAD", "b", first.message_ts, event_id="EvB")
        assert [v.voter for _, v in evals.round_votes(h.db, round_id)] == ["U_LEAD"]

        # One second later voting time is over: the next reaction closes the round instead of counting.
        time.sleep(1.1)
        react(h, "U_LEAD", "a", first.message_ts, event_id="EvC")
        assert evals.get_round(h.db, round_id).status == RoundStatus.CLOSED
        assert [v.choice for _, v in evals.round_votes(h.db, round_id)] == ["B"]
        [result] = [c for c in h.fake.calls_to("chat.postMessage") if "Round #" in (c.args.get("text") or "")]
        assert "Votes per voter: lee: 1" in json.dumps(result.args["blocks"])  # names from users.info
    finally:
        stop_harness_scheduler(h)
        h.close()


def test_a_removal_delivered_before_its_older_add_leaves_no_vote(harness):
    """Slack does not order deliveries: the add (t1) of a reaction removed at t2 may arrive after the removal."""
    h = harness
    seed_model(h.db)
    round_id = start_round(h, "eval --n 2")
    post_round(h, round_id)
    first = evals.round_comparisons(h.db, round_id)[0]
    t1 = time.time()
    react(h, "U7", "a", first.message_ts, event_id="EvLate2", event_ts=t1 + 1, removed=True)
    react(h, "U7", "a", first.message_ts, event_id="EvLate1", event_ts=t1)
    assert evals.get_vote(h.db, first.id, "U7") is None
    # Slack retries the late add: still nothing.
    react(h, "U7", "a", first.message_ts, event_id="EvLate1", event_ts=t1, retry_num=1)
    assert evals.round_votes(h.db, round_id) == []
    # Adding the reaction again later counts.
    react(h, "U7", "a", first.message_ts, event_id="EvLate3", event_ts=t1 + 2)
    assert evals.get_vote(h.db, first.id, "U7").choice == "A"

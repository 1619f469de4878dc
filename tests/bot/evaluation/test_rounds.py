"""Rounds through the real Bolt app: posting with seeded reactions, the full loop to revealed results and DPO pairs,
429s waited out, long answers attached, failures that say how to resume, and the timed close job."""

from __future__ import annotations

import dataclasses
import json
import subprocess
import sys
import time

from slack_sdk.errors import SlackApiError
from slack_sdk.web import SlackResponse

from bot.evaluation import rounds
from bot.scheduler import context_key, start_scheduler, stop_scheduler
from storage import evals
from storage.evals import RoundStatus
from storage.examples import save_capture
from storage.jobs import register_model, use_model
from storage.pairs import list_pairs
from storage.snapshots import create_snapshot
from tests.bot.evaluation.helpers import (
    BASE,
    CANDIDATE,
    CHANNEL,
    comparison_posts,
    post_round,
    react,
    seed_model,
    start_round,
)
from trainers.evaluation.generation import log_path


def test_full_loop_post_vote_close_results_and_pairs(harness, openai_api):
    h = harness
    seed_model(h.db)
    round_id = start_round(h)
    quote = json.dumps(h.fake.responses[-1]["blocks"])
    # Both sides run on OpenAI: both are priced (the fine-tuned rate for the candidate, the base rate for the baseline).
    assert f"`{CANDIDATE}`" in quote and f"`{BASE}`" in quote and "Prices as of" in quote
    # Nothing is generated before the user accepts the cost.
    assert not [c for c in openai_api.calls if "chat/completions" in c.path]
    assert evals.get_round(h.db, round_id).status == RoundStatus.QUOTED

    post_round(h, round_id)
    posts = comparison_posts(h)
    assert len(posts) == 4
    round_ = evals.get_round(h.db, round_id)
    assert round_.status == RoundStatus.OPEN and round_.closes_at is not None
    comparisons = evals.round_comparisons(h.db, round_id)
    assert {c.candidate_side for c in comparisons} == {"A", "B"}  # balanced: both sides used
    assert len({c.message_ts for c in comparisons}) == 4
    assert all(h.fake.find_message(CHANNEL, c.message_ts) is not None for c in comparisons)
    # Generation happened only after Post: two answers per question.
    assert len([c for c in openai_api.calls if "chat/completions" in c.path]) == 8
    for call in posts:
        payload = json.dumps(call.args)
        # Blind: no model name anywhere in the message; user text escaped.
        assert CANDIDATE not in payload and "gpt-4o-mini" not in payload
        assert "&lt;" in payload and "&amp;" in payload and "<Question" not in payload
    for c in comparisons:
        candidate_answer = c.answer_a if c.candidate_side == "A" else c.answer_b
        assert candidate_answer.startswith("Fine-tuned answer")
        assert {r["name"] for r in h.fake.reactions[(CHANNEL, c.message_ts)]} == set(rounds.SEED_REACTIONS)

    # A double click on Post posts nothing more.
    post_round(h, round_id)
    assert len(comparison_posts(h)) == 4

    c1, c2, c3, c4 = comparisons
    cand = {c.id: c.candidate_side for c in comparisons}
    other = {c.id: "B" if cand[c.id] == "A" else "A" for c in comparisons}
    t0 = time.time()
    # U1 votes for the candidate on c1, first with the wrong reaction, then switches.
    react(h, "U1", other[c1.id].lower(), c1.message_ts, event_id="Ev1", event_ts=t0)
    react(h, "U1", cand[c1.id].lower(), c1.message_ts, event_id="Ev2", event_ts=t0 + 1)
    # ...then removes the old reaction: the vote stays (it was cast by the newer one).
    react(h, "U1", other[c1.id].lower(), c1.message_ts, event_id="Ev3", event_ts=t0 + 2, removed=True)
    # U2: candidate on c1 and c2 (skin-tone variant of a vote emoji on c3 counts as "both bad").
    react(h, "U2", cand[c1.id].lower(), c1.message_ts, event_id="Ev4", event_ts=t0)
    react(h, "U2", cand[c2.id].lower(), c2.message_ts, event_id="Ev5", event_ts=t0)
    react(h, "U2", "-1::skin-tone-3", c3.message_ts, event_id="Ev6", event_ts=t0)
    # U3 votes for the baseline on c4, withdraws it; Slack then retries the original add (must not resurrect it).
    react(h, "U3", other[c4.id].lower(), c4.message_ts, event_id="Ev7", event_ts=t0)
    react(h, "U3", other[c4.id].lower(), c4.message_ts, event_id="Ev8", event_ts=t0 + 1, removed=True)
    react(h, "U3", other[c4.id].lower(), c4.message_ts, event_id="Ev7", event_ts=t0, retry_num=1)
    # U4: baseline on c4 and a tie on c2; delivered twice (retry) and counted once.
    react(h, "U4", other[c4.id].lower(), c4.message_ts, event_id="Ev9", event_ts=t0)
    react(h, "U4", other[c4.id].lower(), c4.message_ts, event_id="Ev9", event_ts=t0, retry_num=1)
    react(h, "U4", "handshake", c2.message_ts, event_id="Ev10", event_ts=t0)
    # Not votes: the bot's own reaction, a non-vote emoji, a reaction on another message.
    react(h, "U0FTBOT", "a", c3.message_ts, event_id="Ev11")
    react(h, "U5", "tada", c3.message_ts, event_id="Ev12")
    other_message = h.fake.post_message(CHANNEL, "U_CUSTOMER", "hello")
    react(h, "U5", "a", other_message["ts"], event_id="Ev13")

    votes = {(c.id, v.voter): v.choice for c, v in evals.round_votes(h.db, round_id)}
    assert votes == {
        (c1.id, "U1"): cand[c1.id], (c1.id, "U2"): cand[c1.id], (c2.id, "U2"): cand[c2.id],
        (c3.id, "U2"): "bad", (c4.id, "U4"): other[c4.id], (c2.id, "U4"): "tie",
    }

    # Interim results are private and do not reveal the models.
    h.command("results", user_id="U_AGENT")
    h.wait()
    interim = h.fake.responses[-1]
    assert interim.get("response_type") == "ephemeral"
    assert CANDIDATE not in json.dumps(interim) and "3 wins, 1 losses" in json.dumps(interim)

    h.fake.reset_calls()
    h.command("eval close", user_id="U_AGENT")
    h.wait()
    assert evals.get_round(h.db, round_id).status == RoundStatus.CLOSED
    results = [c for c in h.fake.calls_to("chat.postMessage") if "Round #" in (c.args.get("text") or "")]
    assert len(results) == 1
    body = json.dumps(results[0].args["blocks"])
    assert "wins 75.0% of decisive votes" in body  # 3 wins of 4 decisive votes
    assert "Revealed" in body and CANDIDATE in body and "gpt-4o-mini-2024-07-18 (OpenAI)" in body
    assert "preference pair" in body
    uploads = [f for f in h.fake.files.values() if f["name"].endswith(".png")]
    assert len(uploads) == 1 and uploads[0]["completed"] and uploads[0]["content"][:8] == b"\x89PNG\r\n\x1a\n"
    assert uploads[0]["channel"] == CHANNEL

    # Decided comparisons (c1: candidate 2-0, c2: candidate 1-0 with a tie, c4: baseline 1-0) became DPO pairs.
    pairs = list_pairs(h.db)
    assert sorted(p.comparison_id for p in pairs) == sorted([c1.id, c2.id, c4.id])
    by_comparison = {p.comparison_id: p.record for p in pairs}
    assert by_comparison[c1.id]["preferred_output"][0]["content"].startswith("Fine-tuned answer")
    assert by_comparison[c4.id]["preferred_output"][0]["content"].startswith("Generic answer")

    # Votes after closing are not counted; closing twice is refused.
    react(h, "U6", "a", c3.message_ts, event_id="Ev14")
    assert len(evals.round_votes(h.db, round_id)) == 6
    h.command("eval close", user_id="U_AGENT")
    h.wait()
    assert "no evaluation round is open" in h.fake.responses[-1]["text"]

    # /ft results on a closed round posts in the channel with the chart again.
    h.fake.reset_calls()
    h.command("results", user_id="U_AGENT")
    h.wait()
    assert any("Round #" in (c.args.get("text") or "") for c in h.fake.calls_to("chat.postMessage"))
    assert h.fake.calls_to("files.completeUploadExternal")


def test_close_due_rounds_job_closes_expired_rounds(harness):
    h = harness
    round_ = evals.create_round(h.db, candidate_model="x", baseline_model="openai:y", prompts=[[{"role": "user", "content": "q"}]],
                                channel=CHANNEL).example
    evals.move_round(h.db, round_.id, RoundStatus.OPEN, closes_at=evals.utcnow())
    start_scheduler(h.bot)
    try:
        rounds.close_due_rounds_job(context_key(h.bot))
    finally:
        stop_scheduler(h.bot)
    assert evals.get_round(h.db, round_.id).status == RoundStatus.CLOSED


def test_posting_waits_out_rate_limits_and_attaches_long_answers(harness, openai_api):
    h = harness
    seed_model(h.db)

    def long_answers(request: dict) -> str:
        if request["model"] == CANDIDATE:
            return "Step & detail. " * 400  # ~6,000 characters: more than one section holds
        return "Short answer."

    openai_api.responder = long_answers
    round_id = start_round(h, "eval --n 2")
    # Slack answers 429 + Retry-After to the first posts and reactions: the round is still posted completely.
    h.fake.fail_next("chat.postMessage", times=3, retry_after=0)
    h.fake.fail_next("reactions.add", times=4, retry_after=0)
    post_round(h, round_id)
    comparisons = evals.round_comparisons(h.db, round_id)
    assert all(c.message_ts for c in comparisons)
    for c in comparisons:
        assert {r["name"] for r in h.fake.reactions[(CHANNEL, c.message_ts)]} == set(rounds.SEED_REACTIONS)
        message = h.fake.find_message(CHANNEL, c.message_ts)
        sections = [b["text"]["text"] for b in message["blocks"] if b["type"] == "section"]
        assert all(len(text) <= 3000 for text in sections)
        assert len(json.dumps(message["blocks"])) < 12000
        assert "full texts are in the thread" in json.dumps(message["blocks"])
    attachments = [f for f in h.fake.files.values() if f["name"].endswith(".txt")]
    assert sorted(f["thread_ts"] for f in attachments) == sorted(c.message_ts for c in comparisons)
    full = attachments[0]["content"].decode()
    assert full.count("Step & detail.") == 400 and "Answer A:" in full and "Answer B:" in full


def test_failed_generation_is_reported_and_can_be_resumed(harness, openai_api, monkeypatch):
    h = harness
    seed_model(h.db)
    # FTBOT_OPENAI_MAX_RETRIES=0, as the bot's settings read it at start
    h.bot.settings = dataclasses.replace(h.bot.settings, openai_max_retries=0)
    round_id = start_round(h, "eval --n 2")
    openai_api.inject("/chat/completions", 500, 500)  # both first answers fail
    post_round(h, round_id)
    assert evals.get_round(h.db, round_id).status == RoundStatus.FAILED
    updates = [c.args.get("text", "") for c in h.fake.calls_to("chat.update")]
    assert any("generation failed: OpenAI could not answer" in t for t in updates)
    assert comparison_posts(h) == []

    h.command(f"eval resume {round_id}", user_id="U_AGENT")
    h.wait(timeout=30)
    assert evals.get_round(h.db, round_id).status == RoundStatus.OPEN
    assert len(comparison_posts(h)) == 2


def test_posting_stopped_by_slack_says_how_to_resume(harness, openai_api):
    h = harness
    seed_model(h.db)
    round_id = start_round(h, "eval --n 3")
    # The first comparison posts; then Slack refuses (e.g. the bot was removed from the channel).
    original = h.bot.client.chat_postMessage
    posted = []

    def flaky(**kwargs):
        if "Blind comparison" in kwargs.get("text", "") and posted:
            response = SlackResponse(client=None, http_verb="POST", api_url="", req_args={},
                                     data={"ok": False, "error": "not_in_channel"}, headers={}, status_code=200)
            raise SlackApiError("not_in_channel", response)
        result = original(**kwargs)
        if "Blind comparison" in kwargs.get("text", ""):
            posted.append(result["ts"])
        return result

    h.bot.client.chat_postMessage = flaky
    post_round(h, round_id)
    assert evals.get_round(h.db, round_id).status == RoundStatus.POSTING
    updates = [c.args.get("text", "") for c in h.fake.calls_to("chat.update")]
    assert any("posting stopped" in t and "not_in_channel" in t and f"/ft eval resume {round_id}" in t for t in updates)

    h.bot.client.chat_postMessage = original
    h.command(f"eval resume {round_id}", user_id="U_AGENT")
    h.wait()
    assert evals.get_round(h.db, round_id).status == RoundStatus.OPEN
    assert len(comparison_posts(h)) == 3


def test_a_failed_generation_worker_keeps_its_log_out_of_the_channel(trainer_harness, monkeypatch, tmp_path):
    h = trainer_harness
    monkeypatch.setenv("FTBOT_HOME", str(tmp_path / "home"))
    seed_model(h.db)
    round_id = start_round(h, "eval --n 2")
    home_file = tmp_path / "home" / "evals" / str(round_id) / "model.bin"

    def failing_worker(round_id: int, *, database_url: str, **_options) -> subprocess.Popen:
        path = log_path(round_id)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(f"Traceback (most recent call last):\n  File \"{home_file}\"\n"
                        "RuntimeError: customer asked about order 4471; key sk-abc123secret\n")
        return subprocess.Popen([sys.executable, "-c", "raise SystemExit(3)"])

    monkeypatch.setattr(rounds, "round_needs_worker", lambda db, round_id: True)
    monkeypatch.setattr(rounds, "spawn_generation", failing_worker)
    post_round(h, round_id)
    assert evals.get_round(h.db, round_id).status == RoundStatus.FAILED
    in_channel = json.dumps([c.args for c in h.fake.calls if c.args.get("channel") == CHANNEL])
    assert "generation failed" in in_channel and "log was sent to <@U_AGENT>" in in_channel
    assert "order 4471" not in in_channel and "Traceback" not in in_channel and str(tmp_path) not in in_channel
    [dm] = [c.args for c in h.fake.calls_to("chat.postMessage") if c.args["channel"] != CHANNEL]
    assert "order 4471" in json.dumps(dm["blocks"]) and "sk-abc123secret" not in json.dumps(dm)


def test_slack_markup_in_questions_never_reaches_slack_unescaped(harness):
    h = harness
    for i in range(10):
        record = {"messages": [
            {"role": "user", "content": f"<!channel> question {i} for <@U123>: see <https://evil.example|here>"},
            {"role": "assistant", "content": f"Reply {i}."},
        ]}
        save_capture(h.db, record=record, source_key=f"slack:C:{i}", channel="C", ts=f"{i}.0", thread_ts=None,
                     permalink=None, captured_by="U_AGENT", status="approved")
    snapshot = create_snapshot(h.db, validation_fraction=0.2).snapshot
    register_model(h.db, name=CANDIDATE, backend="openai", base_model=BASE, location=CANDIDATE, snapshot_id=snapshot.id)
    use_model(h.db, CANDIDATE)
    post_round(h, start_round(h, "eval --n 2"))
    posts = comparison_posts(h)
    assert len(posts) == 2
    for call in posts:
        assert "&lt;!channel&gt;" in call.args["text"]
    sent = json.dumps([c.args for c in h.fake.calls] + list(h.fake.responses))
    assert "<!channel>" not in sent and "<@U123>" not in sent and "<https://evil" not in sent

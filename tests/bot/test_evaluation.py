"""The evaluation loop through the real Bolt app (signed requests), the fake Slack Web API and the fake OpenAI API.

/ft eval → cost quote → Post → blind comparisons posted with seeded reactions → votes as reaction events (switches,
removals, skin tones, retries, the bot's own reactions, other messages) → /ft eval close → revealed results with the
chart uploaded → DPO pairs; plus the voter allowlist, the timed close, /ft eval add and /ft judge.
"""

from __future__ import annotations

import json
import re
import time

import pytest

from bot import evaluation
from storage import evals
from storage.evals import RoundStatus
from storage.examples import save_capture
from storage.jobs import register_model, use_model
from storage.pairs import list_pairs
from storage.snapshots import create_snapshot
from tests.fixtures.slack_api import SlackHarness, block_actions
from tests.fixtures.paths import REPO

CANDIDATE = "ft:gpt-4o-mini-2024-07-18:acme:support:abc123"
BASE = "gpt-4o-mini-2024-07-18"
CHANNEL = "C_SUPPORT"


def _seed_model(db, n_examples: int = 30) -> None:
    for i in range(n_examples):
        record = {"messages": [
            {"role": "system", "content": "You are Acme support."},
            {"role": "user", "content": f"Question {i}: how do I fix issue {i}?"},
            {"role": "assistant", "content": f"Reference reply {i} & more <details>."},
        ]}
        save_capture(db, record=record, source_key=f"slack:C:{i}", channel="C", ts=f"{i}.0", thread_ts=None,
                     permalink=None, captured_by="U_AGENT", status="approved")
    snapshot = create_snapshot(db, validation_fraction=0.2).snapshot
    register_model(db, name=CANDIDATE, backend="openai", base_model=BASE, location=CANDIDATE, snapshot_id=snapshot.id)
    use_model(db, CANDIDATE)


def _answer_by_model(request: dict) -> str:
    question = request["messages"][-1]["content"]
    if request["model"] == CANDIDATE:
        return f"Fine-tuned answer to <{question}> — follow the steps & done."
    return f"Generic answer to {question}"


@pytest.fixture
def harness(sqlite_db, fake_slack, openai_api):
    openai_api.responder = _answer_by_model
    h = SlackHarness.create(sqlite_db, fake_slack, eval_post_interval=0.0)
    try:
        yield h
    finally:
        _stop_scheduler(h)
        h.close()


def _stop_scheduler(h: SlackHarness) -> None:
    # Opening a round schedules the close check; stop its thread with the test's database.
    from bot.scheduler import stop_scheduler

    stop_scheduler(h.bot, wait=True)


def _start_round(h: SlackHarness, text: str = "eval --n 4") -> int:
    h.command(text, user_id="U_AGENT")
    h.wait()
    quote = h.fake.responses[-1]
    buttons = [e for b in quote["blocks"] if b["type"] == "actions" for e in b["elements"]]
    assert [b["action_id"] for b in buttons] == [evaluation.POST_ACTION, evaluation.CANCEL_ACTION]
    assert "$" in quote["text"] and "Post or cancel" in quote["text"]
    return int(buttons[0]["value"])


def _post(h: SlackHarness, round_id: int) -> None:
    h.interact(block_actions(evaluation.POST_ACTION, str(round_id), response_url=h.fake.response_url()))
    h.wait(timeout=30)


def _chats(openai_api) -> list:
    return [c for c in openai_api.calls if "chat/completions" in c.path]


def _comparison_posts(h: SlackHarness) -> list:
    return [c for c in h.fake.calls_to("chat.postMessage") if "Blind comparison" in (c.args.get("text") or "")]


def _react(h: SlackHarness, user: str, name: str, ts: str, *, event_id: str, removed: bool = False,
           event_ts: float | None = None, **sign) -> None:
    event = {
        "type": "reaction_removed" if removed else "reaction_added", "user": user, "reaction": name,
        "item": {"type": "message", "channel": CHANNEL, "ts": ts}, "item_user": "U0FTBOT",
        "event_ts": f"{event_ts if event_ts is not None else time.time():.6f}",
    }
    response = h.event(event, event_id=event_id, **sign)
    assert response.status == 200
    h.wait()


def _user_react(h: SlackHarness, user: str, name: str, ts: str, *, event_id: str, removed: bool = False,
                event_ts: float) -> None:
    """A person reacting in the Slack client: Slack's stored reactions change, then the event is delivered."""
    entries = h.fake.reactions.setdefault((CHANNEL, ts), [])
    if removed:
        entries.remove({"name": name, "user": user})
    else:
        entries.append({"name": name, "user": user})
    _react(h, user, name, ts, event_id=event_id, removed=removed, event_ts=event_ts)


def test_removing_the_vote_reaction_falls_back_to_one_still_there(harness):
    h = harness
    _seed_model(h.db)
    round_id = _start_round(h, "eval --n 2")
    _post(h, round_id)
    first = evals.round_comparisons(h.db, round_id)[0]

    def vote() -> str | None:
        found = evals.get_vote(h.db, first.id, "U7")
        return None if found is None else found.choice

    t0 = time.time()
    _user_react(h, "U7", "a", first.message_ts, event_id="EvF1", event_ts=t0)
    _user_react(h, "U7", "b", first.message_ts, event_id="EvF2", event_ts=t0 + 1)
    assert vote() == "B"
    h.fake.reset_calls()
    # :b: removed while :a: is still there: the vote goes back to A (asked of Slack with full=True).
    _user_react(h, "U7", "b", first.message_ts, event_id="EvF3", event_ts=t0 + 2, removed=True)
    assert vote() == "A"
    [lookup] = h.fake.calls_to("reactions.get")
    assert lookup.args.get("timestamp") == first.message_ts and str(lookup.args.get("full")).lower() in ("true", "1")
    # Slack retries that removal: still A.
    _react(h, "U7", "b", first.message_ts, event_id="EvF3", event_ts=t0 + 2, removed=True, retry_num=1)
    assert vote() == "A"
    # Removing :a: leaves no vote reaction of U7's (the bot's seeded ones do not count): no vote.
    _user_react(h, "U7", "a", first.message_ts, event_id="EvF4", event_ts=t0 + 3, removed=True)
    assert vote() is None
    assert evals.round_votes(h.db, round_id) == []


def test_full_loop_post_vote_close_results_and_pairs(harness, openai_api):
    h = harness
    _seed_model(h.db)
    round_id = _start_round(h)
    quote = json.dumps(h.fake.responses[-1]["blocks"])
    # Both sides run on OpenAI: both are priced (the fine-tuned rate for the candidate, the base rate for the baseline).
    assert f"`{CANDIDATE}`" in quote and f"`{BASE}`" in quote and "Prices as of" in quote
    # Nothing is generated before the user accepts the cost.
    assert not [c for c in openai_api.calls if "chat/completions" in c.path]
    assert evals.get_round(h.db, round_id).status == RoundStatus.QUOTED

    _post(h, round_id)
    posts = _comparison_posts(h)
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
        assert {r["name"] for r in h.fake.reactions[(CHANNEL, c.message_ts)]} == set(evaluation.SEED_REACTIONS)

    # A double click on Post posts nothing more.
    _post(h, round_id)
    assert len(_comparison_posts(h)) == 4

    c1, c2, c3, c4 = comparisons
    cand = {c.id: c.candidate_side for c in comparisons}
    other = {c.id: "B" if cand[c.id] == "A" else "A" for c in comparisons}
    t0 = time.time()
    # U1 votes for the candidate on c1, first with the wrong reaction, then switches.
    _react(h, "U1", other[c1.id].lower(), c1.message_ts, event_id="Ev1", event_ts=t0)
    _react(h, "U1", cand[c1.id].lower(), c1.message_ts, event_id="Ev2", event_ts=t0 + 1)
    # ...then removes the old reaction: the vote stays (it was cast by the newer one).
    _react(h, "U1", other[c1.id].lower(), c1.message_ts, event_id="Ev3", event_ts=t0 + 2, removed=True)
    # U2: candidate on c1 and c2 (skin-tone variant of a vote emoji on c3 counts as "both bad").
    _react(h, "U2", cand[c1.id].lower(), c1.message_ts, event_id="Ev4", event_ts=t0)
    _react(h, "U2", cand[c2.id].lower(), c2.message_ts, event_id="Ev5", event_ts=t0)
    _react(h, "U2", "-1::skin-tone-3", c3.message_ts, event_id="Ev6", event_ts=t0)
    # U3 votes for the baseline on c4, withdraws it; Slack then retries the original add (must not resurrect it).
    _react(h, "U3", other[c4.id].lower(), c4.message_ts, event_id="Ev7", event_ts=t0)
    _react(h, "U3", other[c4.id].lower(), c4.message_ts, event_id="Ev8", event_ts=t0 + 1, removed=True)
    _react(h, "U3", other[c4.id].lower(), c4.message_ts, event_id="Ev7", event_ts=t0, retry_num=1)
    # U4: baseline on c4 and a tie on c2; delivered twice (retry) and counted once.
    _react(h, "U4", other[c4.id].lower(), c4.message_ts, event_id="Ev9", event_ts=t0)
    _react(h, "U4", other[c4.id].lower(), c4.message_ts, event_id="Ev9", event_ts=t0, retry_num=1)
    _react(h, "U4", "handshake", c2.message_ts, event_id="Ev10", event_ts=t0)
    # Not votes: the bot's own reaction, a non-vote emoji, a reaction on another message.
    _react(h, "U0FTBOT", "a", c3.message_ts, event_id="Ev11")
    _react(h, "U5", "tada", c3.message_ts, event_id="Ev12")
    other_message = h.fake.post_message(CHANNEL, "U_CUSTOMER", "hello")
    _react(h, "U5", "a", other_message["ts"], event_id="Ev13")

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
    _react(h, "U6", "a", c3.message_ts, event_id="Ev14")
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


def test_cancel_spends_nothing(harness, openai_api):
    h = harness
    _seed_model(h.db)
    round_id = _start_round(h)
    h.interact(block_actions(evaluation.CANCEL_ACTION, str(round_id), response_url=h.fake.response_url()))
    h.wait()
    assert evals.get_round(h.db, round_id).status == RoundStatus.CANCELLED
    assert "cancelled" in h.fake.responses[-1]["text"]
    _post(h, round_id)  # a late click on Post does nothing
    assert _comparison_posts(h) == []
    assert not [c for c in openai_api.calls if "chat/completions" in c.path]


def test_voter_allowlist_and_timed_close(sqlite_db, fake_slack, openai_api):
    openai_api.responder = _answer_by_model
    h = SlackHarness.create(sqlite_db, fake_slack, eval_post_interval=0.0, voters=("U_LEAD",), eval_hours=1 / 3600)
    try:
        _seed_model(h.db)
        round_id = _start_round(h, "eval --n 2")
        _post(h, round_id)
        first = evals.round_comparisons(h.db, round_id)[0]
        _react(h, "U_AGENT", "a", first.message_ts, event_id="EvA")
        assert evals.round_votes(h.db, round_id) == []
        assert any("not counted" in call.args.get("text", "") for call in h.fake.calls_to("chat.postEphemeral"))
        _react(h, "U_LEAD", "b", first.message_ts, event_id="EvB")
        assert [v.voter for _, v in evals.round_votes(h.db, round_id)] == ["U_LEAD"]

        # One second later voting time is over: the next reaction closes the round instead of counting.
        time.sleep(1.1)
        _react(h, "U_LEAD", "a", first.message_ts, event_id="EvC")
        assert evals.get_round(h.db, round_id).status == RoundStatus.CLOSED
        assert [v.choice for _, v in evals.round_votes(h.db, round_id)] == ["B"]
        [result] = [c for c in h.fake.calls_to("chat.postMessage") if "Round #" in (c.args.get("text") or "")]
        assert "Votes per voter: lee: 1" in json.dumps(result.args["blocks"])  # names from users.info
    finally:
        _stop_scheduler(h)
        h.close()


def test_close_due_rounds_job_closes_expired_rounds(harness):
    h = harness
    round_ = evals.create_round(h.db, candidate_model="x", baseline_model="openai:y", prompts=[[{"role": "user", "content": "q"}]],
                                channel=CHANNEL).example
    evals.move_round(h.db, round_.id, RoundStatus.OPEN, closes_at=evals.utcnow())
    from bot.scheduler import context_key, start_scheduler, stop_scheduler

    start_scheduler(h.bot)
    try:
        evaluation.close_due_rounds_job(context_key(h.bot))
    finally:
        stop_scheduler(h.bot)
    assert evals.get_round(h.db, round_.id).status == RoundStatus.CLOSED


def test_eval_add_from_thread_link_and_text(harness):
    h = harness
    fake = h.fake
    # Slack escapes &, < and > in message text; the stored question has them back as typed.
    parent = fake.post_message(CHANNEL, "U_CUSTOMER", "My invoice is wrong &lt;b&gt;")
    fake.post_message(CHANNEL, "U_AGENT", "Which invoice number?", thread_ts=parent["ts"])
    question = fake.post_message(CHANNEL, "U_CUSTOMER", "Number 42, from March", thread_ts=parent["ts"])
    fake.post_message(CHANNEL, "U_AGENT", "Refunded.", thread_ts=parent["ts"])
    link = fake.permalink(CHANNEL, question["ts"], parent["ts"])
    h.command(f"eval add {link}", user_id="U_AGENT")
    h.wait()
    prompts = evals.list_eval_prompts(h.db)
    assert len(prompts) == 1
    messages = prompts[0].messages
    assert [m["role"] for m in messages] == ["system", "user", "assistant", "user"]
    assert messages[-1]["content"] == "Number 42, from March" and messages[1]["content"] == "My invoice is wrong <b>"
    assert "Added evaluation question" in fake.responses[-1]["text"]

    h.command(f"eval add {link}", user_id="U_AGENT")
    h.wait()
    assert "already in the evaluation set" in fake.responses[-1]["text"]

    h.command("eval add How do I export to CSV?", user_id="U_AGENT")
    h.wait()
    assert evals.list_eval_prompts(h.db)[-1].messages[-1] == {"role": "user", "content": "How do I export to CSV?"}

    h.command("eval add", user_id="U_AGENT")
    h.wait()
    assert "usage" in fake.responses[-1]["text"].lower()


def test_eval_errors_are_clear(harness):
    h = harness
    h.command("eval", user_id="U_AGENT")
    h.wait()
    assert "no trained model" in h.fake.responses[-1]["text"]
    h.command("eval --n 0", user_id="U_AGENT")
    h.wait()
    assert "--n" in h.fake.responses[-1]["text"]
    h.command("results", user_id="U_AGENT")
    h.wait()
    assert "no evaluation round yet" in h.fake.responses[-1]["text"]


def test_judge_scores_both_orders_and_reports_agreement(harness, openai_api):
    h = harness
    _seed_model(h.db)
    round_id = _start_round(h, "eval --n 4")
    _post(h, round_id)
    comparisons = evals.round_comparisons(h.db, round_id)

    def judge_or_answer(request: dict) -> str:
        if request["messages"][0]["content"].startswith("You are an impartial judge"):
            text = request["messages"][1]["content"]
            reply1 = text.split("[Reply 1]")[1].split("[End of reply 1]")[0]
            # Prefers the fine-tuned answer in whichever position it is, except on the first question,
            # where it always says "1" (position bias): inconsistent → tie.
            if comparisons[0].prompt[-1]["content"] in text:
                return "Reply 1 reads better. [[1]]"
            return "The first is better. [[1]]" if "Fine-tuned" in reply1 else "The second is better. [[2]]"
        return _answer_by_model(request)

    openai_api.responder = judge_or_answer
    for c in comparisons[1:3]:
        _react(h, "U1", c.candidate_side.lower(), c.message_ts, event_id=f"EvJ{c.id}")
    chats_before = len(_chats(openai_api))
    h.command(f"judge {round_id} --model gpt-4.1-2025-04-14", user_id="U_AGENT")
    h.wait(timeout=30)
    # Judging costs money: first an ephemeral quote with Judge / Cancel, and no call to OpenAI yet.
    quote = h.fake.responses[-1]
    assert quote.get("response_type") == "ephemeral"
    assert re.search(r"at most \$\d+\.\d{4}", quote["text"]) and "Judge or cancel" in quote["text"]
    buttons = [e for b in quote["blocks"] if b["type"] == "actions" for e in b["elements"]]
    assert [b["action_id"] for b in buttons] == [evaluation.JUDGE_ACTION, evaluation.JUDGE_CANCEL_ACTION]
    assert "gpt-4.1-2025-04-14" in json.dumps(quote["blocks"]) and "Prices as of" in json.dumps(quote["blocks"])
    assert len(_chats(openai_api)) == chats_before
    assert evals.round_verdicts(h.db, round_id) == []

    # A double click on Judge judges once: two calls (both orders) per question.
    for _ in range(2):
        h.interact(block_actions(evaluation.JUDGE_ACTION, buttons[0]["value"], response_url=h.fake.response_url()))
        h.wait(timeout=30)
    judge_calls = _chats(openai_api)[chats_before:]
    assert len(judge_calls) == 2 * len(comparisons)
    assert all(c.json["model"] == "gpt-4.1-2025-04-14" for c in judge_calls)
    assert any("already used" in r["text"] for r in h.fake.responses)
    verdicts = {v.comparison_id: v.choice for v in evals.round_verdicts(h.db, round_id)}
    assert verdicts[comparisons[0].id] == "tie"
    for c in comparisons[1:]:
        assert verdicts[c.id] == c.candidate_side
    final = next(r["text"] for r in reversed(h.fake.responses) if "judged" in r["text"])
    assert "3 verdicts held in both orders" in final and "Agreement with the voters: 2/2" in final


@pytest.fixture
def trainer_harness(sqlite_db, fake_slack, openai_api):
    openai_api.responder = _answer_by_model
    h = SlackHarness.create(sqlite_db, fake_slack, eval_post_interval=0.0, trainers=("U_AGENT",))
    try:
        yield h
    finally:
        _stop_scheduler(h)
        h.close()


def test_judge_quote_cancel_spends_nothing_and_prices_the_exact_prompts(trainer_harness, openai_api):
    from trainers.evaluation.judge import JUDGE_MAX_TOKENS, estimate_judge_cost, judge_messages
    from trainers.data.pricing import inference_cost, load_price_table
    from trainers.data.tokens import count_record_tokens, encoding_for_model

    h = trainer_harness
    _seed_model(h.db)
    round_id = _start_round(h, "eval --n 2")
    _post(h, round_id)
    comparisons = evals.round_comparisons(h.db, round_id)
    chats_before = len(_chats(openai_api))

    # The estimate: both orders of each question, prompt tokens counted with trainers.data.tokens, the model's
    # table price, the full output allowance of each call.
    model = "gpt-4.1-2025-04-14"
    encoding = encoding_for_model(model)
    input_tokens = sum(
        count_record_tokens({"messages": judge_messages(c.prompt, first, second)}, encoding).total
        for c in comparisons for first, second in ((c.answer_a, c.answer_b), (c.answer_b, c.answer_a))
    )
    price = load_price_table().get(model)
    expected = inference_cost(price, input_tokens=input_tokens, output_tokens=4 * JUDGE_MAX_TOKENS, fine_tuned=False)
    estimate = estimate_judge_cost(h.db, round_id, model)
    assert (estimate.prompts, estimate.input_tokens, estimate.max_output_tokens) == (4, input_tokens, 4 * JUDGE_MAX_TOKENS)
    assert estimate.max_usd == pytest.approx(expected) and expected > 0

    h.command(f"judge {round_id} --model {model}", user_id="U_AGENT")
    h.wait()
    quote = h.fake.responses[-1]
    assert f"at most ${expected:.4f}" in quote["text"]
    value = next(e["value"] for b in quote["blocks"] if b["type"] == "actions" for e in b["elements"])
    # Only trainers may confirm; then Cancel wins, and a late Judge click does nothing.
    h.interact(block_actions(evaluation.JUDGE_ACTION, value, user_id="U_RANDOM", response_url=h.fake.response_url()))
    h.wait()
    assert "Only trainers" in h.fake.responses[-1]["text"]
    h.interact(block_actions(evaluation.JUDGE_CANCEL_ACTION, value, response_url=h.fake.response_url()))
    h.wait()
    assert "cancelled" in h.fake.responses[-1]["text"] and "Nothing was spent" in h.fake.responses[-1]["text"]
    h.interact(block_actions(evaluation.JUDGE_ACTION, value, response_url=h.fake.response_url()))
    h.wait()
    assert "already used or cancelled" in h.fake.responses[-1]["text"]
    assert len(_chats(openai_api)) == chats_before
    assert evals.round_verdicts(h.db, round_id) == []


def test_posting_waits_out_rate_limits_and_attaches_long_answers(harness, openai_api):
    h = harness
    _seed_model(h.db)

    def long_answers(request: dict) -> str:
        if request["model"] == CANDIDATE:
            return "Step & detail. " * 400  # ~6,000 characters: more than one section holds
        return "Short answer."

    openai_api.responder = long_answers
    round_id = _start_round(h, "eval --n 2")
    # Slack answers 429 + Retry-After to the first posts and reactions: the round is still posted completely.
    h.fake.fail_next("chat.postMessage", times=3, retry_after=0)
    h.fake.fail_next("reactions.add", times=4, retry_after=0)
    _post(h, round_id)
    comparisons = evals.round_comparisons(h.db, round_id)
    assert all(c.message_ts for c in comparisons)
    for c in comparisons:
        assert {r["name"] for r in h.fake.reactions[(CHANNEL, c.message_ts)]} == set(evaluation.SEED_REACTIONS)
        message = h.fake.find_message(CHANNEL, c.message_ts)
        sections = [b["text"]["text"] for b in message["blocks"] if b["type"] == "section"]
        assert all(len(text) <= 3000 for text in sections)
        assert len(json.dumps(message["blocks"])) < 12000
        assert "full texts are in the thread" in json.dumps(message["blocks"])
    attachments = [f for f in h.fake.files.values() if f["name"].endswith(".txt")]
    assert sorted(f["thread_ts"] for f in attachments) == sorted(c.message_ts for c in comparisons)
    full = attachments[0]["content"].decode()
    assert full.count("Step & detail.") == 400 and "Answer A:" in full and "Answer B:" in full


def test_evaluation_commands_do_not_import_the_ml_stack(tmp_path):
    import subprocess
    import sys
    from pathlib import Path

    code = (
        "import sys, io, tempfile\n"
        "from bot.config import Settings\nfrom storage.db import Database\nfrom bot.console.shell import Console\n"
        "import trainers.evaluation.results, trainers.evaluation.charts, trainers.evaluation.generation, trainers.evaluation.inference, trainers.evaluation.judge, bot.cli.evaluation\n"
        "db = Database.open('sqlite:///' + tempfile.mkdtemp() + '/x.db')\n"
        "c = Console(Settings(), db, out=io.StringIO())\n"
        "c.handle('/ft eval add How do I export?'); c.handle('/ft eval'); c.handle('/ft results'); c.close()\n"
        "print(sorted(m for m in ('torch', 'transformers', 'peft', 'trl', 'datasets', 'bitsandbytes') if m in sys.modules))\n"
    )
    env = {**__import__("os").environ, "FTBOT_HOME": str(tmp_path)}
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, env=env,
                            cwd=REPO)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip().splitlines()[-1] == "[]"


def test_resume_after_a_restart_posts_only_what_is_missing(harness, openai_api):
    h = harness
    _seed_model(h.db)
    baseline = f"openai:{BASE}"
    prompts = [[{"role": "user", "content": f"Interrupted question {i}?"}] for i in range(4)]
    # A round whose process died mid-generation: two candidate answers already stored.
    round_ = evals.create_round(h.db, candidate_model=CANDIDATE, baseline_model=baseline, prompts=prompts,
                                channel=CHANNEL, status=RoundStatus.GENERATING).example
    comparisons = evals.round_comparisons(h.db, round_.id)
    evals.set_answers(h.db, round_.id, CANDIDATE, {c.id: "stored before the restart" for c in comparisons[:2]})

    h.command("eval", user_id="U_AGENT")
    h.wait()
    assert f"/ft eval resume {round_.id}" in h.fake.responses[-1]["text"]

    h.command(f"eval resume {round_.id}", user_id="U_AGENT")
    h.wait(timeout=30)
    assert len([c for c in openai_api.calls if "chat/completions" in c.path]) == 6  # 2 candidate + 4 baseline
    assert evals.get_round(h.db, round_.id).status == RoundStatus.OPEN
    assert len(_comparison_posts(h)) == 4

    # A round interrupted while posting: two comparisons were posted, two were not.
    second = evals.create_round(h.db, candidate_model=CANDIDATE, baseline_model=baseline, prompts=prompts,
                                channel=CHANNEL, status=RoundStatus.POSTING).example
    rows = evals.round_comparisons(h.db, second.id)
    evals.set_answers(h.db, second.id, CANDIDATE, {c.id: "a" for c in rows})
    evals.set_answers(h.db, second.id, baseline, {c.id: "b" for c in rows})
    for c in rows[:2]:
        posted = h.fake.post_message(CHANNEL, None, "Blind comparison (before restart)", bot=True)
        evals.set_comparison_message(h.db, c.id, channel=CHANNEL, message_ts=posted["ts"])
    h.fake.reset_calls()
    h.command(f"eval resume {second.id}", user_id="U_AGENT")
    h.wait(timeout=30)
    assert len(_comparison_posts(h)) == 2
    assert evals.get_round(h.db, second.id).status == RoundStatus.OPEN
    assert len({c.message_ts for c in evals.round_comparisons(h.db, second.id)}) == 4

    h.command(f"eval resume {second.id}", user_id="U_AGENT")
    h.wait()
    assert "nothing to resume" in h.fake.responses[-1]["text"]


def test_failed_generation_is_reported_and_can_be_resumed(harness, openai_api, monkeypatch):
    h = harness
    _seed_model(h.db)
    monkeypatch.setenv("FTBOT_OPENAI_MAX_RETRIES", "0")
    round_id = _start_round(h, "eval --n 2")
    openai_api.inject("/chat/completions", 500, 500)  # both first answers fail
    _post(h, round_id)
    assert evals.get_round(h.db, round_id).status == RoundStatus.FAILED
    updates = [c.args.get("text", "") for c in h.fake.calls_to("chat.update")]
    assert any("generation failed: OpenAI could not answer" in t for t in updates)
    assert _comparison_posts(h) == []

    h.command(f"eval resume {round_id}", user_id="U_AGENT")
    h.wait(timeout=30)
    assert evals.get_round(h.db, round_id).status == RoundStatus.OPEN
    assert len(_comparison_posts(h)) == 2


def test_posting_stopped_by_slack_says_how_to_resume(harness, openai_api):
    h = harness
    _seed_model(h.db)
    round_id = _start_round(h, "eval --n 3")
    # The first comparison posts; then Slack refuses (e.g. the bot was removed from the channel).
    original = h.bot.client.chat_postMessage
    posted = []

    def flaky(**kwargs):
        if "Blind comparison" in kwargs.get("text", "") and posted:
            from slack_sdk.errors import SlackApiError
            from slack_sdk.web import SlackResponse

            response = SlackResponse(client=None, http_verb="POST", api_url="", req_args={},
                                     data={"ok": False, "error": "not_in_channel"}, headers={}, status_code=200)
            raise SlackApiError("not_in_channel", response)
        result = original(**kwargs)
        if "Blind comparison" in kwargs.get("text", ""):
            posted.append(result["ts"])
        return result

    h.bot.client.chat_postMessage = flaky
    _post(h, round_id)
    assert evals.get_round(h.db, round_id).status == RoundStatus.POSTING
    updates = [c.args.get("text", "") for c in h.fake.calls_to("chat.update")]
    assert any("posting stopped" in t and "not_in_channel" in t and f"/ft eval resume {round_id}" in t for t in updates)

    h.bot.client.chat_postMessage = original
    h.command(f"eval resume {round_id}", user_id="U_AGENT")
    h.wait()
    assert evals.get_round(h.db, round_id).status == RoundStatus.OPEN
    assert len(_comparison_posts(h)) == 3

"""``/ft judge``: the cost quote with Judge / Cancel, both answer orders, and the agreement with the voters."""

from __future__ import annotations

import json
import re

import pytest

from bot.evaluation import judge
from storage import evals
from tests.bot.evaluation.helpers import answer_by_model, chat_calls, post_round, react, seed_model, start_round
from tests.fixtures.slack_api import block_actions
from trainers.data.pricing import inference_cost, load_price_table
from trainers.data.tokens import count_record_tokens, encoding_for_model
from trainers.evaluation.judge import JUDGE_MAX_TOKENS, estimate_judge_cost, judge_messages


def test_judge_scores_both_orders_and_reports_agreement(harness, openai_api):
    h = harness
    seed_model(h.db)
    round_id = start_round(h, "eval --n 4")
    post_round(h, round_id)
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
        return answer_by_model(request)

    openai_api.responder = judge_or_answer
    for c in comparisons[1:3]:
        react(h, "U1", c.candidate_side.lower(), c.message_ts, event_id=f"EvJ{c.id}")
    chats_before = len(chat_calls(openai_api))
    h.command(f"judge {round_id} --model gpt-4.1-2025-04-14", user_id="U_AGENT")
    h.wait(timeout=30)
    # Judging costs money: first an ephemeral quote with Judge / Cancel, and no call to OpenAI yet.
    quote = h.fake.responses[-1]
    assert quote.get("response_type") == "ephemeral"
    assert re.search(r"at most \$\d+\.\d{4}", quote["text"]) and "Judge or cancel" in quote["text"]
    buttons = [e for b in quote["blocks"] if b["type"] == "actions" for e in b["elements"]]
    assert [b["action_id"] for b in buttons] == [judge.JUDGE_ACTION, judge.JUDGE_CANCEL_ACTION]
    assert "gpt-4.1-2025-04-14" in json.dumps(quote["blocks"]) and "Prices as of" in json.dumps(quote["blocks"])
    assert len(chat_calls(openai_api)) == chats_before
    assert evals.round_verdicts(h.db, round_id) == []

    # A double click on Judge judges once: two calls (both orders) per question.
    for _ in range(2):
        h.interact(block_actions(judge.JUDGE_ACTION, buttons[0]["value"], response_url=h.fake.response_url()))
        h.wait(timeout=30)
    judge_calls = chat_calls(openai_api)[chats_before:]
    assert len(judge_calls) == 2 * len(comparisons)
    assert all(c.json["model"] == "gpt-4.1-2025-04-14" for c in judge_calls)
    assert any("already used" in r["text"] for r in h.fake.responses)
    verdicts = {v.comparison_id: v.choice for v in evals.round_verdicts(h.db, round_id)}
    assert verdicts[comparisons[0].id] == "tie"
    for c in comparisons[1:]:
        assert verdicts[c.id] == c.candidate_side
    final = next(r["text"] for r in reversed(h.fake.responses) if "judged" in r["text"])
    assert "3 verdicts held in both orders" in final and "Agreement with the voters: 2/2" in final


def test_judge_quote_cancel_spends_nothing_and_prices_the_exact_prompts(trainer_harness, openai_api):
    h = trainer_harness
    seed_model(h.db)
    round_id = start_round(h, "eval --n 2")
    post_round(h, round_id)
    comparisons = evals.round_comparisons(h.db, round_id)
    chats_before = len(chat_calls(openai_api))

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
    h.interact(block_actions(judge.JUDGE_ACTION, value, user_id="U_RANDOM", response_url=h.fake.response_url()))
    h.wait()
    assert "Only trainers" in h.fake.responses[-1]["text"]
    h.interact(block_actions(judge.JUDGE_CANCEL_ACTION, value, response_url=h.fake.response_url()))
    h.wait()
    assert "cancelled" in h.fake.responses[-1]["text"] and "Nothing was spent" in h.fake.responses[-1]["text"]
    h.interact(block_actions(judge.JUDGE_ACTION, value, response_url=h.fake.response_url()))
    h.wait()
    assert "already used or cancelled" in h.fake.responses[-1]["text"]
    assert len(chat_calls(openai_api)) == chats_before
    assert evals.round_verdicts(h.db, round_id) == []


def test_every_judge_message_escapes_the_typed_model_name(harness, openai_api):
    """The judge model is whatever follows --model: the notification texts show it, they never ping with it."""
    h = harness
    seed_model(h.db)
    round_id = start_round(h, "eval --n 2")
    post_round(h, round_id)

    def judge_or_answer(request: dict) -> str:
        judging = request["messages"][0]["content"].startswith("You are an impartial judge")
        return "Reply 1 is better. [[1]]" if judging else answer_by_model(request)

    openai_api.responder = judge_or_answer
    before = len(h.fake.responses)
    h.command(f"judge {round_id} --model gpt-4.1<!channel>&<@U123>", user_id="U_AGENT")
    h.wait()
    value = next(e["value"] for b in h.fake.responses[-1]["blocks"] if b["type"] == "actions" for e in b["elements"])
    h.interact(block_actions(judge.JUDGE_ACTION, value, response_url=h.fake.response_url()))
    h.wait(timeout=30)
    texts = [response["text"] for response in h.fake.responses[before:]]
    assert len(texts) == 3  # the quote, "Judging…", the result
    for text in texts:
        assert "gpt-4.1&lt;!channel&gt;&amp;&lt;@U123&gt;" in text
        assert "<!channel>" not in text and "<@U123>" not in text

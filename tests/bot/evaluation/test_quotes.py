"""The cost quote of OpenAI generation: Cancel spends nothing, and a late Post does nothing."""

from __future__ import annotations

from bot.evaluation import quotes
from storage import evals
from storage.evals import RoundStatus
from tests.bot.evaluation.helpers import comparison_posts, post_round, seed_model, start_round
from tests.fixtures.slack_api import block_actions


def test_cancel_spends_nothing(harness, openai_api):
    h = harness
    seed_model(h.db)
    round_id = start_round(h)
    h.interact(block_actions(quotes.CANCEL_ACTION, str(round_id), response_url=h.fake.response_url()))
    h.wait()
    assert evals.get_round(h.db, round_id).status == RoundStatus.CANCELLED
    assert "cancelled" in h.fake.responses[-1]["text"]
    post_round(h, round_id)  # a late click on Post does nothing
    assert comparison_posts(h) == []
    assert not [c for c in openai_api.calls if "chat/completions" in c.path]

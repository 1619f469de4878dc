"""/ft price through the real Bolt app: every model at once, and an unknown model named with the known ones."""

from __future__ import annotations

import pytest

from storage.examples import import_records
from tests.fixtures.slack_api import SlackHarness
from trainers.data.pricing import load_price_table
from trainers.tiny_model import sample_conversations


@pytest.fixture
def bot(sqlite_db, fake_slack):
    harness = SlackHarness.create(sqlite_db, fake_slack)
    import_records(sqlite_db, enumerate(sample_conversations(12, seed=5, max_turns=1), 1), source_file="t.jsonl", approved_by="U_LEAD")
    yield harness
    harness.close()


def _answers(harness: SlackHarness, text: str) -> list[dict]:
    before = len(harness.fake.responses)
    harness.command(text, user_id="U_AGENT")
    harness.wait()
    assert len(harness.fake.responses) > before, "no answer to the command"
    return harness.fake.responses[before:]


def test_price_all_models_quotes_every_fine_tunable_model(bot):
    final = _answers(bot, "price --all-models")[-1]
    blocks = str(final["blocks"])
    table = load_price_table()
    names = [entry.name for entry in table.fine_tunable()]
    assert len(names) > 3 and all(name in blocks for name in names)
    assert "Training cost by model" in blocks and "$" in blocks
    assert "unknown" not in final["text"].lower()


def test_price_of_an_unknown_model_says_so_and_lists_the_known_models(bot):
    answer = _answers(bot, "price gpt-5")[-1]["text"]
    table = load_price_table()
    assert answer.count("no prices for model 'gpt-5'") == 1
    assert all(name in answer for name in table.models)
    # The CLI says the same: one message for both.
    assert table.unknown_model_message("gpt-5") in answer


@pytest.mark.parametrize(("command", "expected"), [
    ("price gpt-4o --all-models", "either a model or --all-models"),
    ("price gpt-4o gpt-4.1", "Usage: `/ft price [model|--all-models]`"),
    ("price --cheap", "unknown option --cheap"),
])
def test_price_usage_errors(bot, command, expected):
    assert expected in _answers(bot, command)[-1]["text"]

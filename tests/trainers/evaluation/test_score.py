"""`ftbot eval score`: a registered model's held-out loss next to its baseline's, on SQLite and PostgreSQL."""

from __future__ import annotations

import json
import math

import pytest
from typer.testing import CliRunner

from bot.cli import app
from storage import eval_prompts
from storage.examples import import_records
from storage.jobs import register_model, use_model
from storage.snapshots import VALIDATION, create_snapshot, snapshot_records
from tests.fixtures.db import database_url
from trainers.evaluation.loss import assistant_token_loss, prepare_scoring_tokenizer
from trainers.evaluation.score import ScoreUnavailable, model_to_score, score_model
from trainers.tiny_model import sample_conversations

REFERENCE = "Open Settings, then Billing, and download the invoice as PDF."


@pytest.fixture
def scored_setup(db, tiny_model_dir, adapter_dir):
    """A local model (the tiny base + a random adapter) registered on a snapshot with a validation split, and one
    question added by hand with the team's reply and one without."""
    import_records(db, enumerate(sample_conversations(20, max_turns=1, seed=7), 1), source_file="t.jsonl", approved_by="U1")
    snapshot = create_snapshot(db, validation_fraction=0.2).snapshot
    model, _ = register_model(db, name="tiny-sft-job1", backend="local", base_model=str(tiny_model_dir),
                              location=str(adapter_dir), snapshot_id=snapshot.id)
    eval_prompts.add_eval_prompt(db, [{"role": "user", "content": "Where is my invoice?"}], reference=REFERENCE)
    eval_prompts.add_eval_prompt(db, [{"role": "user", "content": "Any discounts this week?"}])
    return model, snapshot


def _expected(tiny_model_dir, adapter_dir, conversations):
    from peft import PeftModel
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(adapter_dir)
    prepare_scoring_tokenizer(tokenizer)
    tuned = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(tiny_model_dir), adapter_dir)
    base = AutoModelForCausalLM.from_pretrained(tiny_model_dir)
    return assistant_token_loss(tuned, tokenizer, conversations).loss, assistant_token_loss(base, tokenizer, conversations).loss


def test_score_covers_the_validation_split_and_added_questions_with_a_reply(db, scored_setup, tiny_model_dir, adapter_dir):
    model, snapshot = scored_setup
    validation = [r["messages"] for r in snapshot_records(db, snapshot.id, VALIDATION)]
    conversations = [*validation, [{"role": "user", "content": "Where is my invoice?"}, {"role": "assistant", "content": REFERENCE}]]
    report = score_model(db, model)
    expected_loss, expected_baseline = _expected(tiny_model_dir, adapter_dir, conversations)
    assert report.prompts == len(validation) + 1  # the question without a reply is not scored
    assert math.isclose(report.loss, expected_loss, rel_tol=1e-5)
    assert math.isclose(report.baseline_loss, expected_baseline, rel_tol=1e-5)
    assert report.baseline == str(tiny_model_dir)
    assert report.relative_change == pytest.approx((expected_loss - expected_baseline) / expected_baseline, rel=1e-5)


def test_cli_prints_json_with_the_model_its_baseline_and_both_losses(db, scored_setup, monkeypatch):
    monkeypatch.setenv("FTBOT_DATABASE_URL", database_url(db))
    model, _ = scored_setup
    use_model(db, model.name)
    result = CliRunner().invoke(app, ["eval", "score", "--json"])
    assert result.exit_code == 0, result.output
    answer = json.loads(result.stdout)
    assert {"model", "baseline", "prompts", "loss", "baseline_loss", "relative_change"} <= set(answer)
    assert answer["model"] == "tiny-sft-job1" and answer["prompts"] >= 2
    plain = CliRunner().invoke(app, ["eval", "score", model.name])
    assert plain.exit_code == 0 and "held-out loss" in plain.stdout and "tiny-sft-job1" in plain.stdout


def test_openai_models_are_not_scored_and_say_why(db, monkeypatch):
    monkeypatch.setenv("FTBOT_DATABASE_URL", database_url(db))
    register_model(db, name="ft:gpt-4o-mini:acme::abc", backend="openai", base_model="gpt-4o-mini", location="ft:gpt-4o-mini:acme::abc")
    with pytest.raises(ScoreUnavailable, match="log-probabilities"):
        score_model(db, model_to_score(db, None))
    result = CliRunner().invoke(app, ["eval", "score", "--json"])
    assert result.exit_code == 1
    assert "log-probabilities" in json.loads(result.stdout)["error"]["message"]


def test_a_model_with_nothing_held_out_is_a_clear_error(db, tiny_model_dir, adapter_dir):
    model, _ = register_model(db, name="tiny-sft-job2", backend="local", base_model=str(tiny_model_dir), location=str(adapter_dir))
    with pytest.raises(ScoreUnavailable, match="no held-out replies.*eval add"):
        score_model(db, model)


def test_no_model_registered_is_a_clear_error(db):
    with pytest.raises(ScoreUnavailable, match="no model is registered"):
        model_to_score(db, None)

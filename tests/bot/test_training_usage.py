"""/ft train, /ft cancel, /ft jobs and /ft models through the real Bolt app: back ends, base models, finished jobs."""

from __future__ import annotations

import json
import time

import pytest

from bot.scheduler import stop_scheduler
from storage.examples import import_records
from storage.jobs import create_job, list_jobs, register_model, update_job
from storage.models import stored_id
from storage.vocabulary import JobStatus
from tests.fixtures.slack_api import SlackHarness
from trainers.tiny_model import sample_conversations


@pytest.fixture
def bot(sqlite_db, fake_slack, monkeypatch, tmp_path):
    monkeypatch.setenv("FTBOT_HOME", str(tmp_path / "home"))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    harness = SlackHarness.create(sqlite_db, fake_slack)
    import_records(sqlite_db, enumerate(sample_conversations(12, seed=5, max_turns=1), 1), source_file="t.jsonl", approved_by="U_LEAD")
    yield harness
    stop_scheduler(harness.bot)
    harness.close()


def _reply(harness: SlackHarness, text: str, user: str = "U_AGENT") -> dict:
    before = len(harness.fake.responses)
    harness.command(text, user_id=user, trigger_id=harness.fake.new_trigger_id())
    harness.wait()
    assert len(harness.fake.responses) > before, "no answer to the command"
    return harness.fake.responses[-1]


def _answer(harness: SlackHarness, text: str, user: str = "U_AGENT") -> str:
    return _reply(harness, text, user)["text"]


@pytest.mark.parametrize(("command", "expected"), [
    ("train lcoal", "unknown back end 'lcoal' (did you mean local?)"),
    ("train azure", "unknown back end 'azure'"),
    ("train azure gpt-4o", "unknown back end 'azure'"),
    ("train togther", "unknown back end 'togther' (did you mean together?)"),
])
def test_an_unknown_back_end_is_a_usage_error_listing_the_back_ends(bot, command, expected):
    answer = _answer(bot, command)
    assert expected in answer and "openai, local and together" in answer and "Usage: `/ft train" in answer
    assert list_jobs(bot.db) == []


@pytest.mark.parametrize("model", ["nonexistent/model", "/no/such/model-dir", "not a model"])
def test_a_base_model_that_cannot_be_loaded_fails_at_the_quote_naming_it(bot, model):
    started = time.monotonic()
    answer = _answer(bot, f"train local {model}" if " " not in model else f'train local "{model}"')
    assert time.monotonic() - started < 10
    assert "base model" in answer and model in answer and "Training quote" not in answer and "Traceback" not in answer
    assert list_jobs(bot.db) == []


def test_a_model_directory_and_the_tiny_model_are_quoted(bot, tmp_path):
    (tmp_path / "model").mkdir()
    assert "has no config.json" in _answer(bot, f"train local {tmp_path / 'model'}")
    (tmp_path / "model" / "config.json").write_text("{}")
    assert "Training quote" in _answer(bot, f"train local {tmp_path / 'model'}")
    assert "Training quote" in _answer(bot, "train local ftbot:tiny")


def test_train_openai_without_a_key_says_which_variable_to_set_before_quoting(bot, monkeypatch):
    monkeypatch.delenv("OPENAI_API_KEY", raising=False)
    before = len(bot.fake.responses)
    bot.command("train openai", user_id="U_AGENT", trigger_id=bot.fake.new_trigger_id())
    bot.wait()
    answer = bot.fake.responses[-1]
    assert len(bot.fake.responses) == before + 1 and answer["response_type"] == "ephemeral"
    assert "OPENAI_API_KEY" in answer["text"] and "/ft train local" in answer["text"] and "--backend" not in answer["text"]
    assert list_jobs(bot.db) == []


def test_jobs_and_models_name_models_and_bases_without_server_paths(bot):
    base = "/srv/models/Qwen2.5-0.5B-Instruct"
    named = create_job(bot.db, backend="local", base_model=base).job
    unnamed = create_job(bot.db, backend="local", base_model=base).job
    for job in (named, unnamed):
        update_job(bot.db, stored_id(job), status=JobStatus.SUCCEEDED, result_model=f"/root/.ftbot/models/{job.id}/adapter")
    register_model(bot.db, name="acme-support-v12", backend="local", base_model=base,
                   location=f"/root/.ftbot/models/{named.id}/adapter", job_id=stored_id(named))
    jobs, models = _reply(bot, "jobs"), _reply(bot, "models")
    for reply in (jobs, models):
        for shown in (reply["text"], json.dumps(reply["blocks"])):
            assert "/root" not in shown and "/srv" not in shown
            assert "`Qwen2.5-0.5B-Instruct`" in shown
    assert "→ `acme-support-v12`" in jobs["text"] and f"→ `job #{unnamed.id} adapter`" in jobs["text"]
    assert "*acme-support-v12* — local, base `Qwen2.5-0.5B-Instruct`" in models["text"]

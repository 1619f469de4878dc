"""/ft train together through the real Bolt app: signed requests, fake Slack and the fake Together server on 127.0.0.1
(the real ``together`` client); the test moves the remote job along as Together would."""

from __future__ import annotations

import json
from pathlib import Path

from bot.training import DISCARD_ACTION, START_ACTION, START_OVER_BUDGET_ACTION, START_PII_ACTION, START_REDACTED_ACTION
from storage.examples import import_records
from storage.jobs import get_job, list_jobs, list_models
from storage.vocabulary import JobStatus
from tests.bot import training_helpers as slack_training
from tests.fixtures.concurrency import wait_until
from tests.fixtures.slack_api import block_actions
from trainers.tiny_model import sample_conversations

TOGETHER_MODEL = "meta-llama/Meta-Llama-3.1-8B-Instruct-Reference"


def _approve(db, n: int = 20, *, pii: bool = False) -> None:
    records = sample_conversations(n, seed=5, max_turns=1)
    if pii:
        records[2]["messages"][1]["content"] = "Reach me at sam.lee@example.org about the refund."
    import_records(db, enumerate(records, 1), source_file="t.jsonl", approved_by="U_LEAD")


def test_ft_train_together_quotes_starts_once_shows_togethers_price_and_registers_the_brought_home_adapter(
        harnesses, together_api, adapter_dir):
    together_api.adapter_source = adapter_dir
    bot = harnesses()
    _approve(bot.db)
    quote = slack_training.quote(bot, f"train together {TOGETHER_MODEL}")
    assert quote["response_type"] == "ephemeral" and "Training quote" in quote["text"]
    blocks = json.dumps(quote["blocks"])
    job_id = int(slack_training.buttons(quote)[START_ACTION])
    # Only the model's name went to Together for the quote; it prices the uploaded file at Start.
    assert "Estimated cost: Together AI prices the run at Start" in blocks
    assert [c.path for c in together_api.calls] == ["/fine-tunes/models/limits"]

    for _ in range(2):  # a double click starts one job
        bot.interact(block_actions(START_ACTION, str(job_id), response_url=bot.fake.response_url()))
    bot.wait()
    assert len([c for c in together_api.calls if c.method == "POST" and c.path.rstrip("/").endswith("/fine-tunes")]) == 1
    external = get_job(bot.db, job_id).external_id
    assert external and get_job(bot.db, job_id).backend == "together"
    bot.fake.wait_for("chat.postMessage")
    cost = get_job(bot.db, job_id).estimated_cost_usd
    assert cost and together_api.requests_to("/fine-tunes/estimate-price", "POST")
    assert f"Together AI's estimate for this run: ${cost:,.2f}" in json.dumps(
        bot.fake.find_message(get_job(bot.db, job_id).slack_channel, get_job(bot.db, job_id).slack_ts))

    together_api.advance(external, "running")
    together_api.step(external, 1, 2, loss=2.4)
    together_api.step(external, 2, 2, loss=1.9)
    together_api.complete(external)
    wait_until(lambda: list_models(bot.db), 30, "job succeeded and its model registered")
    job = get_job(bot.db, job_id)
    assert job.status == JobStatus.SUCCEEDED
    assert Path(job.result_model or "", "adapter_config.json").is_file()
    [model] = list_models(bot.db)
    assert model.backend == "together" and model.location == job.result_model
    assert len(bot.fake.calls_to("chat.postMessage")) == 1  # one progress message, edited in place
    wait_until(lambda: "succeeded" in json.dumps(bot.fake.find_message(job.slack_channel, job.slack_ts) or {}), 10,
               "progress message says succeeded")

    listing = slack_training.quote(bot, "models")["text"]
    assert model.name in listing and "together" in listing


def test_personal_data_bound_for_together_is_redacted_by_the_first_button(harnesses, together_api):
    bot = harnesses()
    _approve(bot.db, pii=True)
    quote = slack_training.quote(bot, "train together")
    buttons = slack_training.buttons(quote)
    assert list(buttons) == [START_REDACTED_ACTION, START_PII_ACTION, DISCARD_ACTION]
    assert "will be sent to Together AI" in json.dumps(quote["blocks"])
    job_id = buttons[START_REDACTED_ACTION]
    slack_training.click(bot, START_REDACTED_ACTION, job_id)
    job = get_job(bot.db, int(job_id))
    assert job.external_id and job.config["gate"]["redact_pii"] is True
    uploaded = "".join(data.decode() for data in together_api.file_contents.values())
    assert "[EMAIL]" in uploaded and "sam.lee@example.org" not in uploaded


def test_cancel_stops_the_remote_job(harnesses, together_api):
    bot = harnesses()
    _approve(bot.db)
    job_id = slack_training.buttons(slack_training.quote(bot, "train together"))[START_ACTION]
    slack_training.click(bot, START_ACTION, job_id)
    external = get_job(bot.db, int(job_id)).external_id
    assert external
    answer = slack_training.quote(bot, f"cancel {job_id}")["text"]
    assert f"Job #{job_id} is cancelled" in answer
    assert get_job(bot.db, int(job_id)).status == JobStatus.CANCELLED
    assert together_api.requests_to(f"/fine-tunes/{external}/cancel", "POST")


def test_an_error_from_together_is_shown_verbatim(harnesses, together_api):
    bot = harnesses()
    _approve(bot.db)
    job_id = slack_training.buttons(slack_training.quote(bot, "train together"))[START_ACTION]
    together_api.refuse("/fine-tunes", 400, "Insufficient balance: add credits at api.together.ai/settings/billing")
    slack_training.click(bot, START_ACTION, job_id)
    said = " ".join(r["text"] for r in bot.fake.responses)
    assert "Insufficient balance: add credits at api.together.ai/settings/billing" in said


def test_without_a_together_key_the_quote_says_what_to_set(harnesses, together_api, monkeypatch):
    monkeypatch.delenv("TOGETHER_API_KEY")
    bot = harnesses()
    _approve(bot.db)
    answer = slack_training.quote(bot, "train together")["text"]
    assert "TOGETHER_API_KEY" in answer and "/ft train local" in answer
    assert list_jobs(bot.db) == [] and not together_api.calls


def test_togethers_price_above_the_budget_cap_is_refused_at_start_and_an_admin_may_override(harnesses, together_api,
                                                                                            monkeypatch):
    monkeypatch.setenv("FTBOT_BUDGET_USD", "0")
    bot = harnesses(trainers=("U_AGENT",), admins=("U_LEAD",))
    _approve(bot.db)
    job_id = slack_training.buttons(slack_training.quote(bot, "train together"))[START_ACTION]
    slack_training.click(bot, START_ACTION, job_id)
    said = " ".join(r["text"] for r in bot.fake.responses)
    assert "above the budget cap" in said and "Started training" not in said
    assert not [c for c in together_api.calls if c.method == "POST" and c.path.rstrip("/").endswith("/fine-tunes")]
    # The quote comes back with Together's price and the admin's button; an admin's click starts the job.
    [requote] = [r for r in bot.fake.responses if r.get("replace_original") and r.get("blocks")]
    assert "Together AI's estimate" in json.dumps(requote["blocks"])
    buttons = slack_training.buttons(requote)
    assert START_OVER_BUDGET_ACTION in buttons and START_ACTION not in buttons
    assert get_job(bot.db, int(job_id)).status == JobStatus.QUOTED
    slack_training.click(bot, START_OVER_BUDGET_ACTION, job_id, user="U_AGENT")
    assert "only an ftbot admin" in bot.fake.responses[-1]["text"] and not get_job(bot.db, int(job_id)).external_id
    slack_training.click(bot, START_OVER_BUDGET_ACTION, job_id, user="U_LEAD")
    assert get_job(bot.db, int(job_id)).external_id
    assert len([c for c in together_api.calls if c.method == "POST" and c.path.rstrip("/").endswith("/fine-tunes")]) == 1

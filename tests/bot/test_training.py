"""/ft train, cancel, jobs, models, use through the real Bolt app: signed requests, fake Slack and fake OpenAI on 127.0.0.1."""

from __future__ import annotations

import json
import os
import random
import subprocess
import sys
import threading
import time
from datetime import timedelta
from pathlib import Path

import pytest

from bot.scheduler import EXPIRE_QUOTES_JOB, context_key, expire_old_quotes, start_scheduler, stop_scheduler
from bot.training import (
    DISCARD_ACTION,
    START_ACTION,
    START_OVER_BUDGET_ACTION,
    START_PII_ACTION,
    START_REDACTED_ACTION,
    relay_training_job,
)
from storage.db import Database
from storage.examples import import_records
from storage.jobs import QUOTE_MAX_AGE, create_job, get_job, list_jobs, list_models, register_model, update_job
from storage.models import stored_id, utcnow
from storage.vocabulary import JobStatus
from tests.bot import training_helpers as slack_training
from tests.fixtures.concurrency import wait_until
from tests.fixtures.db import database_url
from tests.fixtures.paths import REPO
from tests.fixtures.slack_api import BOT_TOKEN, SIGNING_SECRET, SlackHarness, block_actions, slash_command_body
from trainers.tiny_model import sample_conversations

MODEL = "gpt-4o-mini-2024-07-18"


def _approve(db, n: int = 12) -> None:
    import_records(db, enumerate(sample_conversations(n, seed=5, max_turns=1), 1), source_file="t.jsonl", approved_by="U_LEAD")


def _progress_message(harness: SlackHarness, job_id: int) -> dict:
    job = get_job(harness.db, job_id)
    message = harness.fake.find_message(job.slack_channel, job.slack_ts)
    assert message is not None
    return message


def test_ft_train_openai_quotes_starts_relays_progress_and_registers_the_model(harnesses, openai_api):
    bot = harnesses()
    _approve(bot.db, 20)
    status, _ = bot.http(slash_command_body(f"train openai {MODEL}", response_url=bot.fake.response_url(),
                                            trigger_id=bot.fake.new_trigger_id()))
    assert status == 200
    bot.wait()
    quote = bot.fake.responses[-1]
    assert quote["response_type"] == "ephemeral" and "Training quote" in quote["text"]
    assert "Estimated cost: $" in json.dumps(quote["blocks"])
    job_id = int(slack_training.buttons(quote)[START_ACTION])
    assert get_job(bot.db, job_id).status == JobStatus.QUOTED and not openai_api.calls

    slack_training.click(bot, START_ACTION, str(job_id))
    posted = bot.fake.wait_for("chat.postMessage")
    assert posted[0].args["channel"] == "C_SUPPORT"
    # One message, updated in place until the end; then the loss curve in its thread and the model registered.
    uploads = bot.fake.wait_for("files.completeUploadExternal", timeout=30)
    job = get_job(bot.db, job_id)
    assert job.status == JobStatus.SUCCEEDED
    assert len(bot.fake.calls_to("chat.postMessage")) == 1
    assert all(c.args["ts"] == job.slack_ts for c in bot.fake.calls_to("chat.update"))
    final = _progress_message(bot, job_id)
    assert "succeeded" in final["text"] and job.result_model in json.dumps(final["blocks"])
    assert "Trained tokens" in json.dumps(final["blocks"])
    assert uploads[0].args["thread_ts"] == job.slack_ts
    [file] = [f for f in bot.fake.files.values() if f["completed"]]
    assert file["content"].startswith(b"\x89PNG") and file["name"] == f"ftbot-job{job_id}-loss.png"
    assert [m.name for m in list_models(bot.db)] == [job.result_model]
    # Intermediate updates showed status and losses.
    texts = [c.args["text"] for c in bot.fake.calls_to("chat.update")]
    assert any("running" in t and "train loss" in t for t in texts)


def test_polling_resumes_in_a_new_bot_after_a_restart_mid_job(harnesses, openai_api):
    openai_api.steps = 40  # long enough to stop the first bot while the job runs
    first = harnesses()
    _approve(first.db, 20)
    job_id = int(slack_training.buttons(slack_training.quote(first, f"train openai {MODEL}"))[START_ACTION])
    slack_training.click(first, START_ACTION, str(job_id))
    wait_until(lambda: get_job(first.db, job_id).status == "running", 20, "job running")
    stop_scheduler(first.bot)  # the first process "dies"; its scheduled poll stays in the database
    polls_before = len([c for c in openai_api.calls if c.method == "GET" and c.path.count("/") == 3])
    time.sleep(0.5)
    assert len([c for c in openai_api.calls if c.method == "GET" and c.path.count("/") == 3]) == polls_before

    openai_api.steps = 0  # let it finish quickly now
    for job in openai_api.jobs.values():
        job.total_steps = job.step + 2
    second = harnesses()  # a new bot on the same database resumes the stored poll by itself
    wait_until(lambda: get_job(second.db, job_id).status == JobStatus.SUCCEEDED, 30, "job finished after restart")
    second.fake.wait_for("files.completeUploadExternal", timeout=10)
    job = get_job(second.db, job_id)
    assert len(second.fake.calls_to("chat.postMessage")) == 1  # still the one progress message
    assert "succeeded" in _progress_message(second, job_id)["text"]
    assert len(list_models(second.db)) == 1 and len(openai_api.requests_to("/fine_tuning/jobs", "POST")) == 1
    assert job.result_model


def test_a_double_clicked_start_starts_one_job(harnesses, openai_api):
    bot = harnesses()
    _approve(bot.db, 20)
    job_id = slack_training.buttons(slack_training.quote(bot, f"train openai {MODEL}"))[START_ACTION]
    for _ in range(2):
        bot.interact(block_actions(START_ACTION, job_id, response_url=bot.fake.response_url()))
    bot.wait()
    assert len(openai_api.requests_to("/fine_tuning/jobs", "POST")) == 1
    assert len(bot.fake.calls_to("chat.postMessage")) == 1
    assert any("already" in r["text"] for r in bot.fake.responses)
    assert len(list_jobs(bot.db)) == 1


def test_personal_data_is_redacted_on_the_way_out_by_the_first_button_and_a_double_click_starts_one_job(harnesses, openai_api):
    bot = harnesses()
    records = sample_conversations(20, seed=5, max_turns=1)
    records[2]["messages"][1]["content"] = "Reach me at sam.lee@example.org about the refund."
    import_records(bot.db, enumerate(records, 1), source_file="t.jsonl", approved_by="U_LEAD")
    quote = slack_training.quote(bot, f"train openai {MODEL}")
    buttons = slack_training.buttons(quote)
    # Redacting is offered first; plain Start is not offered while PII would leave; the explicit override stays.
    assert list(buttons) == [START_REDACTED_ACTION, START_PII_ACTION, DISCARD_ACTION]
    job_id = buttons[START_REDACTED_ACTION]
    for _ in range(2):
        bot.interact(block_actions(START_REDACTED_ACTION, job_id, response_url=bot.fake.response_url()))
    bot.wait()
    assert len(openai_api.requests_to("/fine_tuning/jobs", "POST")) == 1 and len(list_jobs(bot.db)) == 1
    job = get_job(bot.db, int(job_id))
    uploaded = openai_api.file_text(job.training_file_id) + openai_api.file_text(job.validation_file_id)
    assert "[EMAIL]" in uploaded and "sam.lee@example.org" not in uploaded
    started = next(r for r in bot.fake.responses if r["text"].startswith(f"Started training job #{job_id}"))
    assert "redacted before upload in 1 example(s)" in started["text"]
    bot.fake.wait_for("chat.postMessage")
    assert "redacted before upload in 1 example(s)" in json.dumps(_progress_message(bot, int(job_id))["blocks"])


def test_only_the_trainers_role_may_train_and_the_budget_cap_needs_an_admin(harnesses, openai_api, monkeypatch):
    monkeypatch.setenv("FTBOT_BUDGET_USD", "0.0001")
    bot = harnesses(trainers=("U_AGENT",), admins=("U_LEAD",))
    _approve(bot.db, 20)
    refused = slack_training.quote(bot, f"train openai {MODEL}", user="U_CUSTOMER")
    assert "trainers role" in refused["text"] and not list_jobs(bot.db)

    quote = slack_training.quote(bot, f"train openai {MODEL}", user="U_AGENT")
    buttons = slack_training.buttons(quote)
    assert START_ACTION not in buttons and START_OVER_BUDGET_ACTION in buttons  # over budget: no plain Start
    assert "above the budget cap" in json.dumps(quote["blocks"])
    job_id = buttons[START_OVER_BUDGET_ACTION]
    slack_training.click(bot, START_OVER_BUDGET_ACTION, job_id, user="U_AGENT")
    assert "only an ftbot admin" in bot.fake.responses[-1]["text"]
    slack_training.click(bot, START_ACTION, job_id, user="U_CUSTOMER")
    assert "trainers role" in bot.fake.responses[-1]["text"]
    assert get_job(bot.db, int(job_id)).status == JobStatus.QUOTED and not openai_api.requests_to("/files")

    slack_training.click(bot, START_OVER_BUDGET_ACTION, job_id, user="U_LEAD")
    assert get_job(bot.db, int(job_id)).external_id
    assert get_job(bot.db, int(job_id)).config["gate"]["admin_confirmed"] is True


def test_the_wind_down_refusal_is_shown_verbatim_with_the_local_alternative(harnesses, openai_api):
    openai_api.refuse_create(403, "Your organization cannot create fine-tuning jobs.", code="permission_denied")
    bot = harnesses()
    _approve(bot.db, 20)
    job_id = slack_training.buttons(slack_training.quote(bot, f"train openai {MODEL}"))[START_ACTION]
    slack_training.click(bot, START_ACTION, job_id)
    answer = bot.fake.responses[-1]["text"]
    assert "Your organization cannot create fine-tuning jobs." in answer and "/ft train local" in answer
    message = _progress_message(bot, int(job_id))
    assert ":x:" in json.dumps(message["blocks"]) and "cannot create fine-tuning jobs" in json.dumps(message["blocks"])


def test_cancel_discard_jobs_models_and_use(harnesses, openai_api):
    openai_api.steps = 50
    bot = harnesses()
    _approve(bot.db, 20)
    discarded = slack_training.buttons(slack_training.quote(bot, f"train openai {MODEL}"))[DISCARD_ACTION]
    slack_training.click(bot, DISCARD_ACTION, discarded)
    assert get_job(bot.db, int(discarded)).status == JobStatus.CANCELLED and "discarded" in bot.fake.responses[-1]["text"]

    job_id = slack_training.buttons(slack_training.quote(bot, f"train openai {MODEL} --epochs 2"))[START_ACTION]
    slack_training.click(bot, START_ACTION, job_id)
    assert openai_api.requests_to("/fine_tuning/jobs", "POST")[0].json["method"]["supervised"]["hyperparameters"] == {"n_epochs": 2}
    slack_training.quote(bot, f"cancel {job_id}")
    assert get_job(bot.db, int(job_id)).status == JobStatus.CANCELLED
    assert openai_api.jobs[get_job(bot.db, int(job_id)).external_id].body["status"] == "cancelled"
    assert "cancelled" in _progress_message(bot, int(job_id))["text"]

    jobs = slack_training.quote(bot, "jobs")
    assert f"job #{job_id} cancelled" in jobs["text"]
    assert "No models registered yet" in slack_training.quote(bot, "models")["text"]

    register_model(bot.db, name="ft:gpt-4o-mini:acme::a1", backend="openai", base_model=MODEL, location="ft:gpt-4o-mini:acme::a1")
    register_model(bot.db, name="tiny-sft-job9", backend="local", base_model="ftbot:tiny", location="/x/adapter")
    before = len(bot.fake.responses)
    slack_training.quote(bot, "use tiny-sft-job9")
    said = [r["text"] for r in bot.fake.responses[before:]]  # then drafts say whether they can use it (bot.drafts)
    assert "Now using *tiny-sft-job9*" in said[0] and "adapter `/x/adapter` is not here" in said[1]
    listing = slack_training.quote(bot, "models")["text"]
    assert "★ *tiny-sft-job9*" in listing and "• *ft:gpt-4o-mini:acme::a1*" in listing
    assert "no registered model named 'nope'" in slack_training.quote(bot, "use nope")["text"]
    assert "--method must be sft or dpo" in slack_training.quote(bot, "train local --method ppo")["text"]


@pytest.mark.slow
def test_ft_train_local_runs_the_worker_and_posts_the_loss_plot(harnesses, tiny_model_dir):
    bot = harnesses()
    _approve(bot.db, 12)  # a training split of at least 10 (the quote blocks fewer)
    quote = slack_training.quote(bot, f"train local {tiny_model_dir}")
    assert "GPU-hours" in json.dumps(quote["blocks"])
    job_id = int(slack_training.buttons(quote)[START_ACTION])
    slack_training.click(bot, START_ACTION, str(job_id))
    assert get_job(bot.db, job_id).worker_pid
    bot.fake.wait_for("files.completeUploadExternal", timeout=120)
    job = get_job(bot.db, job_id)
    assert job.status == JobStatus.SUCCEEDED, job.error
    assert Path(job.result_model, "adapter_config.json").is_file()
    [model] = list_models(bot.db)
    assert model.backend == "local" and model.location == job.result_model
    assert "succeeded" in _progress_message(bot, job_id)["text"]


def test_the_bot_never_imports_the_ml_stack(tmp_path):
    database = f"sqlite:///{tmp_path / 'ftbot.sqlite3'}"
    script = (
        "import sys\n"
        "from bot.app import build_app\n"
        "from storage.config import Settings\n"
        "import bot.training, bot.cli, trainers.training.jobs, trainers.training.openai_backend, trainers.training.quote, "
        "trainers.training.launch, trainers.data.report\n"
        "from storage.db import Database\n"
        "app = build_app(Settings(slack_bot_token='xoxb-x', slack_signing_secret='s'), Database.open(sys.argv[1]))\n"
        "heavy = sorted(m for m in ('torch', 'transformers', 'trl', 'peft', 'datasets', 'bitsandbytes') if m in sys.modules)\n"
        "print(','.join(heavy))\n"
    )
    result = subprocess.run([sys.executable, "-c", script, database], capture_output=True, text=True, timeout=120,
                            cwd=REPO)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == ""


def test_a_new_bot_process_resumes_polling_from_the_database(harnesses, openai_api, fake_slack, sqlite_db):
    openai_api.steps = 40
    first = harnesses()
    _approve(first.db, 20)
    job_id = int(slack_training.buttons(slack_training.quote(first, f"train openai {MODEL}"))[START_ACTION])
    slack_training.click(first, START_ACTION, str(job_id))
    wait_until(lambda: get_job(first.db, job_id).status == "running", 20, "job running")
    stop_scheduler(first.bot)
    for job in openai_api.jobs.values():
        job.total_steps = job.step + 2

    script = (
        "import dataclasses, sys, time\n"
        "from bot.app import build_app\n"
        "from storage.config import Settings\n"
        "from bot.scheduler import stop_scheduler\n"
        "from storage.db import Database\n"
        "from storage.jobs import get_job\n"
        "db = Database.open(sys.argv[1])\n"
        "settings = Settings.from_env()  # FTBOT_TRAINING_POLL_SECONDS comes from the environment\n"
        "app = build_app(dataclasses.replace(settings, slack_bot_token=sys.argv[2], slack_signing_secret=sys.argv[3],\n"
        "                                    slack_api_url=sys.argv[4]), db)\n"
        "deadline = time.time() + 60\n"
        "while get_job(db, int(sys.argv[5])).status != 'succeeded' and time.time() < deadline:\n"
        "    time.sleep(0.1)\n"
        "time.sleep(1.0)  # let the relay post the final update and the plot\n"
        "stop_scheduler(app.ftbot)\n"
        "print(get_job(db, int(sys.argv[5])).status)\n"
    )
    env = {**os.environ, "OPENAI_BASE_URL": openai_api.base_url, "OPENAI_API_KEY": "sk-test",
           "FTBOT_TRAINING_POLL_SECONDS": "0.2"}
    result = subprocess.run(
        [sys.executable, "-c", script, database_url(sqlite_db), BOT_TOKEN, SIGNING_SECRET, fake_slack.base_url, str(job_id)],
        capture_output=True, text=True, timeout=120, env=env, cwd=REPO,
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "succeeded"
    assert "succeeded" in _progress_message(first, job_id)["text"]  # the same message, edited by the new process
    assert len(fake_slack.calls_to("chat.postMessage")) == 1
    assert fake_slack.calls_to("files.completeUploadExternal")
    assert [m.name for m in list_models(sqlite_db)] == [get_job(sqlite_db, job_id).result_model]


def _all_slack_text(harness: SlackHarness) -> str:
    """Every argument the bot sent to Slack (messages, edits, responses), as one string."""
    sent = [call.args for call in harness.fake.calls] + list(harness.fake.responses)
    return json.dumps(sent)


def test_openai_error_bodies_are_stored_and_posted_without_credentials(harnesses, openai_api):
    openai_api.refuse_create(401, "Incorrect API key provided: sk-abc123secretKEY. Header: Bearer xyz789token",
                             code="invalid_api_key", type_="invalid_request_error")
    bot = harnesses()
    _approve(bot.db, 20)
    job_id = int(slack_training.buttons(slack_training.quote(bot, f"train openai {MODEL}"))[START_ACTION])
    slack_training.click(bot, START_ACTION, str(job_id))
    job = get_job(bot.db, job_id)
    assert job.status == JobStatus.FAILED and "Incorrect API key provided" in job.error
    assert "sk-abc123secretKEY" not in job.error and "xyz789token" not in job.error
    sent = _all_slack_text(bot)
    assert "Incorrect API key provided" in sent
    assert "sk-abc123secretKEY" not in sent and "xyz789token" not in sent


def test_a_failing_openai_job_posts_its_reason_without_credentials(harnesses, openai_api):
    openai_api.fail_jobs_with("invalid_training_file", "File rejected; request had Bearer xyz789token and sk-proj-abc123def")
    bot = harnesses()
    _approve(bot.db, 20)
    job_id = int(slack_training.buttons(slack_training.quote(bot, f"train openai {MODEL}"))[START_ACTION])
    slack_training.click(bot, START_ACTION, str(job_id))
    wait_until(lambda: "File rejected" in json.dumps(_progress_message(bot, job_id)["blocks"]), 20, "failure posted")
    job = get_job(bot.db, job_id)
    assert job.status == JobStatus.FAILED
    stored = json.dumps([job.error, job.log_tail, job.progress])
    assert "xyz789token" not in stored and "sk-proj-abc123def" not in stored
    sent = _all_slack_text(bot)
    assert "xyz789token" not in sent and "sk-proj-abc123def" not in sent


@pytest.mark.slow
def test_a_failing_local_job_keeps_its_log_out_of_the_channel_and_sends_it_to_the_trainer(harnesses, tmp_path):
    not_a_model = tmp_path / "not-a-model"
    not_a_model.mkdir()
    (not_a_model / "config.json").write_text('{"model_type": "no-such-architecture"}')  # passes the quote, fails the worker
    bot = harnesses(trainers=("U_AGENT",))
    _approve(bot.db, 12)  # a training split of at least 10 (the quote blocks fewer)
    quote = slack_training.quote(bot, f"train local {not_a_model}")
    assert START_ACTION in slack_training.buttons(quote), quote
    job_id = int(slack_training.buttons(quote)[START_ACTION])
    slack_training.click(bot, START_ACTION, str(job_id))
    wait_until(lambda: get_job(bot.db, job_id).status == JobStatus.FAILED, 120, "job failed")
    job = get_job(bot.db, job_id)
    assert "Traceback" in job.log_tail
    wait_until(lambda: "failed" in _progress_message(bot, job_id)["text"], 20, "failure posted")
    dm = bot.fake.wait_for("chat.postMessage", count=2, timeout=20)[-1].args
    assert dm["channel"] != job.slack_channel and "Traceback" in json.dumps(dm["blocks"])

    home = str(bot.settings.home)
    channel_posts = [c.args for c in bot.fake.calls if c.args.get("channel") == job.slack_channel]
    channel_text = json.dumps(channel_posts)
    assert channel_posts and "Traceback" not in channel_text and "ConfigError" not in channel_text
    assert home not in channel_text and str(Path(home).resolve()) not in channel_text
    final = _progress_message(bot, job_id)
    assert "log was sent to <@U_AGENT>" in json.dumps(final["blocks"])


# The second bot process of the rolling-deploy test: it relays the job as fast as it can (with a slow, jittery
# render so its read of the job and its Slack edit are far apart) until the test's writer reaches the last step.
_SECOND_BOT = """
import dataclasses, random, sys, time
import bot.training as training
import bot.training_progress as training_progress
from bot.app import build_app
from bot.scheduler import context_key, start_scheduler, stop_scheduler
from storage.config import Settings
from storage.db import Database
from storage.jobs import get_job
url, token, secret, slack_url, job_id, last = sys.argv[1:7]
def slow_line(db, job):
    time.sleep(random.uniform(0, 0.02))
    return f"step {(job.progress or {}).get('step', 0)}"
training_progress.progress_line = slow_line
db = Database.open(url, migrate=False)
settings = dataclasses.replace(Settings.from_env(), slack_bot_token=token, slack_signing_secret=secret, slack_api_url=slack_url)
bot = build_app(settings, db).ftbot
start_scheduler(bot)
print("ready", flush=True)
while (get_job(db, int(job_id)).progress or {}).get("step") != int(last):
    training.relay_training_job(context_key(bot), int(job_id))
training.relay_training_job(context_key(bot), int(job_id))
stop_scheduler(bot)
"""


@pytest.mark.postgres
def test_two_bot_processes_on_postgresql_never_show_an_older_state_after_a_newer(
        postgres_server, fake_slack, training_env, monkeypatch):
    monkeypatch.setenv("FTBOT_TRAINING_POLL_SECONDS", "3600")  # the relays below are driven by hand
    url = postgres_server.create_database("_deploy")
    db = Database.open(url)
    first = SlackHarness.create(db, fake_slack)
    posted = first.bot.client.chat_postMessage(channel="C_SUPPORT", text="Training job starting")
    job_id = stored_id(create_job(db, backend="local", base_model="m", status=JobStatus.RUNNING, slack_channel="C_SUPPORT",
                                  slack_ts=posted["ts"]).job)
    last_step = 40
    monkeypatch.setattr("bot.training_progress.progress_line", lambda _db, job: (time.sleep(random.uniform(0, 0.02)),
                                                                         f"step {(job.progress or {}).get('step', 0)}")[1])
    second = subprocess.Popen(
        [sys.executable, "-c", _SECOND_BOT, url, BOT_TOKEN, SIGNING_SECRET, fake_slack.base_url, str(job_id), str(last_step)],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=REPO)
    try:
        assert second.stdout is not None and second.stdout.readline().strip() == "ready", second.stderr.read() if second.stderr else ""
        start_scheduler(first.bot)
        done = threading.Event()

        def relay_here() -> None:
            while not done.is_set():
                relay_training_job(context_key(first.bot), job_id)

        relay = threading.Thread(target=relay_here)
        relay.start()
        for step in range(1, last_step + 1):  # the worker reports progress
            update_job(db, job_id, progress={"step": step})
            time.sleep(0.01)
        done.set()
        relay.join(30)
        assert second.wait(60) == 0, second.stderr.read() if second.stderr else ""
    finally:
        if second.poll() is None:
            second.kill()
        stop_scheduler(first.bot)
        first.close()
        db.close()

    shown = [int(call.args["text"].rsplit(" ", 1)[1]) for call in fake_slack.calls_to("chat.update")]
    assert shown and shown[-1] == last_step
    assert shown == sorted(shown), f"an older state was applied after a newer one: {shown}"


def test_cancel_of_a_finished_job_says_how_it_ended(harnesses):
    bot = harnesses()
    for status, said in ((JobStatus.SUCCEEDED, "already succeeded"), (JobStatus.FAILED, "already failed"),
                         (JobStatus.CANCELLED, "was already cancelled")):
        job = create_job(bot.db, backend="local", base_model="ftbot:tiny", status=status).job
        answer = slack_training.quote(bot, f"cancel {job.id}")
        assert f"job #{job.id} {said}" in answer["text"] and answer.get("response_type", "ephemeral") == "ephemeral"
        assert get_job(bot.db, stored_id(job)).status == status


def test_an_abandoned_quote_expires_and_start_says_so(harnesses):
    bot = harnesses()
    _approve(bot.db, 12)
    old = int(slack_training.buttons(slack_training.quote(bot, "train local ftbot:tiny"))[START_ACTION])
    fresh = int(slack_training.buttons(slack_training.quote(bot, "train local ftbot:tiny"))[START_ACTION])
    update_job(bot.db, old, created_at=utcnow() - QUOTE_MAX_AGE - timedelta(minutes=1))
    start_scheduler(bot.bot)
    assert [job.id for job in bot.bot.scheduler.get_jobs() if job.id == EXPIRE_QUOTES_JOB]
    assert expire_old_quotes(context_key(bot.bot)) == 1
    assert get_job(bot.db, old).status == JobStatus.CANCELLED and get_job(bot.db, fresh).status == JobStatus.QUOTED
    listing = slack_training.quote(bot, "jobs")["text"]
    assert f"job #{fresh} quoted" in listing and f"job #{old} " not in listing
    slack_training.click(bot, START_ACTION, str(old))
    assert wait_until(lambda: "expired" in bot.fake.responses[-1]["text"])
    assert "/ft train" in bot.fake.responses[-1]["text"] and get_job(bot.db, old).status == JobStatus.CANCELLED

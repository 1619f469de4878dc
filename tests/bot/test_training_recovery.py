"""Training relays survive a crash: the database, not a process, says which jobs still need their Slack message.

Each test builds the state a killed bot leaves behind (a job started and committed, but nothing posted and nothing
scheduled), lets time pass without a bot, then starts a new bot through the real Bolt app on fake Slack and OpenAI.
"""

from __future__ import annotations

import json
import time

from bot.scheduler import stop_scheduler
from bot.training import START_ACTION
from storage.examples import import_records
from storage.jobs import get_job, list_models
from storage.vocabulary import JobStatus
from tests.fixtures.concurrency import wait_until
from tests.fixtures.slack_api import SlackHarness
from trainers.tiny_model import sample_conversations
from trainers.training.jobs import start_job, wait_for_job

MODEL = "gpt-4o-mini-2024-07-18"


def _quoted_job(harness: SlackHarness) -> int:
    """A job quoted through /ft train in #support (so its progress belongs in that channel)."""
    harness.command(f"train openai {MODEL}", user_id="U_AGENT", trigger_id=harness.fake.new_trigger_id())
    harness.wait()
    quote = harness.fake.responses[-1]
    buttons = {e["action_id"]: e["value"] for b in quote["blocks"] if b["type"] == "actions" for e in b["elements"]}
    return int(buttons[START_ACTION])


def _crash_right_after_start(harness: SlackHarness, job_id: int) -> None:
    """What Start commits before it posts and schedules anything; then the process is gone."""
    started = start_job(harness.db, job_id, openai_client=harness.bot.openai_client, settings=harness.bot.settings)
    assert started.started
    stop_scheduler(harness.bot)
    harness.close()


def _posts_about(harness: SlackHarness, job_id: int) -> list:
    return [c for c in harness.fake.calls_to("chat.postMessage") if f"Training job #{job_id}" in c.args.get("text", "")]


def _message_text(harness: SlackHarness, job_id: int) -> str:
    job = get_job(harness.db, job_id)
    message = harness.fake.find_message(job.slack_channel, job.slack_ts)
    assert message is not None, f"job {job_id} has no progress message"
    return json.dumps(message["blocks"]) + message["text"]


def test_a_job_started_just_before_a_crash_is_relayed_by_the_next_bot(harnesses, openai_api):
    first = harnesses()
    import_records(first.db, enumerate(sample_conversations(20, seed=5, max_turns=1), 1), source_file="t.jsonl",
                   approved_by="U_LEAD")
    job_id = _quoted_job(first)
    _crash_right_after_start(first, job_id)
    assert not _posts_about(first, job_id)  # the crash came before the progress message

    second = harnesses()  # nobody scheduled a relay for the job: the new bot finds it in the database
    wait_until(lambda: get_job(second.db, job_id).status == JobStatus.SUCCEEDED, 30, "the job to finish")
    second.fake.wait_for("files.completeUploadExternal", timeout=10)
    wait_until(lambda: "succeeded" in _message_text(second, job_id), 10, "the final state to be posted")
    assert len(_posts_about(second, job_id)) == 1
    assert get_job(second.db, job_id).slack_channel == "C_SUPPORT"
    assert [m.job_id for m in list_models(second.db)] == [job_id]


def test_jobs_that_finished_while_no_bot_ran_are_announced_once(harnesses, openai_api):
    first = harnesses()
    import_records(first.db, enumerate(sample_conversations(20, seed=5, max_turns=1), 1), source_file="t.jsonl",
                   approved_by="U_LEAD")
    succeeded = _quoted_job(first)
    start_job(first.db, succeeded, openai_client=first.bot.openai_client, settings=first.bot.settings)
    openai_api.fail_jobs_with("invalid_training_file", "The training file has a bad line.")  # jobs created from now on
    failed = _quoted_job(first)
    openai_client, settings = first.bot.openai_client, first.bot.settings
    _crash_right_after_start(first, failed)
    # Without a bot, someone runs `ftbot train --wait`: both jobs finish and the model is registered, silently.
    assert wait_for_job(first.db, failed, interval=0.01, openai_client=openai_client, settings=settings).job.status == "failed"
    assert wait_for_job(first.db, succeeded, interval=0.01, openai_client=openai_client, settings=settings).finished
    assert [m.job_id for m in list_models(first.db)] == [succeeded]

    second = harnesses()
    wait_until(lambda: len(second.fake.calls_to("files.completeUploadExternal")) == 1, 15, "the loss curve")
    wait_until(lambda: get_job(second.db, succeeded).slack_ts and get_job(second.db, failed).slack_ts, 15, "both messages")
    wait_until(lambda: "succeeded" in _message_text(second, succeeded) and ":x:" in _message_text(second, failed),
               15, "both final states posted")
    assert "bad line" in _message_text(second, failed)
    stop_scheduler(second.bot)
    assert len(_posts_about(second, succeeded)) == 1 and len(_posts_about(second, failed)) == 1
    assert [m.job_id for m in list_models(second.db)] == [succeeded]

    calls = len(second.fake.calls)
    third = harnesses()  # announced once: a later bot says nothing more about finished jobs
    time.sleep(1.0)
    assert not [c.method for c in third.fake.calls[calls:]
                if c.method in ("chat.postMessage", "chat.update", "files.completeUploadExternal")]

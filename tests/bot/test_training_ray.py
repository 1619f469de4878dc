"""`/ft train local` when the bot's model work runs on a Ray cluster (a real local head): the trainer who started a
job that failed there gets Ray's log in a direct message, the tail and the whole log as a file; the channel gets
neither."""

from __future__ import annotations

import json

import pytest

from bot.training import START_ACTION
from storage.examples import import_records
from storage.jobs import get_job
from storage.vocabulary import JobStatus
from tests.bot import training_helpers as slack_training
from tests.fixtures.concurrency import wait_until
from trainers.tiny_model import sample_conversations

pytestmark = [pytest.mark.slow, pytest.mark.usefixtures("ray_cluster_env")]


def test_a_job_that_fails_on_ray_sends_rays_whole_log_to_the_trainer_only(harnesses, tmp_path):
    not_a_model = tmp_path / "not-a-model"
    not_a_model.mkdir()
    (not_a_model / "config.json").write_text('{"model_type": "no-such-architecture"}')  # passes the quote, fails the worker
    bot = harnesses(trainers=("U_AGENT",))
    import_records(bot.db, enumerate(sample_conversations(12, seed=5, max_turns=1), 1), source_file="t.jsonl",
                   approved_by="U_LEAD")
    quote = slack_training.quote(bot, f"train local {not_a_model}")
    job_id = int(slack_training.buttons(quote)[START_ACTION])
    slack_training.click(bot, START_ACTION, str(job_id))
    assert get_job(bot.db, job_id).config["runner"] == "ray"
    wait_until(lambda: get_job(bot.db, job_id).status == JobStatus.FAILED, 180, "job failed on Ray")
    # The worker's traceback only exists in Ray's log: the relay copies its tail into the record.
    wait_until(lambda: "Traceback" in (get_job(bot.db, job_id).log_tail or ""), 60, "Ray's log tail kept with the job")
    [upload] = bot.fake.wait_for("files.completeUploadExternal", timeout=60)
    dm = upload.args["channel_id"]
    job = get_job(bot.db, job_id)
    assert dm != job.slack_channel and dm.startswith("D")
    [whole] = [f for f in bot.fake.files.values() if f["completed"]]
    content = whole["content"] if isinstance(whole["content"], str) else whole["content"].decode()
    assert f"trainers.training.worker --job-id {job_id}" in content and "Traceback" in content
    channel_text = json.dumps([c.args for c in bot.fake.calls if c.args.get("channel") == job.slack_channel])
    assert "Traceback" not in channel_text and str(bot.settings.home) not in channel_text

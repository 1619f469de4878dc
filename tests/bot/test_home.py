"""App Home and Block Kit limits on long threads."""

from __future__ import annotations

import json

from storage import evals
from storage.evals import RoundStatus
from storage.examples import list_examples, save_capture
from storage.jobs import create_job, register_model, update_job
from storage.models import Job, Snapshot, stored_id
from storage.vocabulary import JobStatus
from tests.fixtures.slack_api import SlackHarness, form_values, message_action, view_submission


def _open_home(h: SlackHarness, user: str, event_id: str) -> dict:
    h.event({"type": "app_home_opened", "user": user, "channel": "D1", "tab": "home", "event_ts": "1.0"}, event_id=event_id)
    h.wait()
    return h.fake.home_views[user]


def test_home_shows_onboarding_once_then_status(sqlite_db, fake_slack):
    h = SlackHarness.create(sqlite_db, fake_slack, agents=("U_AGENT",), reviewers=("U_LEAD",))
    try:
        save_capture(h.db, record={"messages": [{"role": "user", "content": "How do refunds work?"},
                                                {"role": "assistant", "content": "Refunds take five business days."}]},
                     source_key="slack:C_SUPPORT:1.1", channel="C_SUPPORT", ts="1.1", thread_ts=None, permalink=None,
                     captured_by="U_AGENT", status="pending")
        first = json.dumps(_open_home(h, "U_AGENT", "EvH1"))
        assert "Welcome, <@U_AGENT>" in first
        assert "Pending review*\\n1" in first and "*Reviewers:* <@U_LEAD>" in first
        assert "Latest snapshot" not in first and "Latest training job" not in first
        assert "Add to ftbot" in first

        with h.db.session() as session:
            session.add(Snapshot(content_hash="a" * 64, train_count=9, validation_count=1))
            session.add(Job(backend="openai", base_model="gpt-4o-mini-2024-07-18", status="running"))
        second = json.dumps(_open_home(h, "U_AGENT", "EvH2"))
        assert "Welcome" not in second  # onboarding only on the first visit
        assert "Latest snapshot:* #1" in second and "9 train / 1 validation" in second
        assert "Latest training job:* #1 on openai" in second and "*running*" in second
        # messages tab opens are not home opens
        h.event({"type": "app_home_opened", "user": "U_LEAD", "channel": "D1", "tab": "messages", "event_ts": "2.0"},
                event_id="EvH3")
        h.wait()
        assert "U_LEAD" not in h.fake.home_views
    finally:
        h.close()


def test_long_thread_stays_within_modal_limits_and_keeps_everything(sqlite_db, fake_slack):
    h = SlackHarness.create(sqlite_db, fake_slack, agents=("U_AGENT",))
    try:
        parent = fake_slack.post_message("C_SUPPORT", "U_CUSTOMER", "My sync keeps failing on every laptop.")
        for i in range(60):
            user = "U_CUSTOMER" if i % 2 == 0 else "U_AGENT"
            text = "Long story: " + "my sync keeps failing. " * 200 if i == 56 else f"message {i}: " + ("details " * 20)
            fake_slack.post_message("C_SUPPORT", user, text, thread_ts=parent["ts"])
        reply = fake_slack.post_message("C_SUPPORT", "U_AGENT", "Final answer: reinstall the sync client, then sign in again.",
                                        thread_ts=parent["ts"])
        h.interact(message_action(reply, trigger_id=fake_slack.new_trigger_id(), response_url=fake_slack.response_url()))
        h.wait()
        view = list(fake_slack.views.values())[-1]
        assert len(view["blocks"]) <= 100 and len(view["private_metadata"]) <= 3000
        # the 4,600-character message cannot be an input (3,000 max): shown, kept as captured
        [locked] = [b["block_id"] for b in view["blocks"] if b.get("block_id", "").startswith("locked_")]
        assert "earlier turns are kept as captured" in json.dumps(view)
        values = form_values(view)
        h.interact(view_submission(view, values))
        h.wait()
        [example] = list_examples(h.db)
        # system + 60 turns (the parent merges with the next customer message, the last agent message with the reply)
        assert len(example.messages) == 61
        assert [m["role"] for m in example.messages[1:]] == ["user", "assistant"] * 30
        assert example.messages[int(locked.split("_")[1])]["content"].count("my sync keeps failing") == 200
        # the confirmation in the thread is within limits and the full conversation is attached as a file
        confirmation = fake_slack.calls_to("chat.postMessage")[-1].args
        assert len(json.dumps(confirmation["blocks"])) < 12000
        [attached] = [f for f in fake_slack.files.values() if f["completed"]]
        assert attached["thread_ts"] == parent["ts"] and b"reinstall the sync client" in attached["content"]
    finally:
        h.close()


def test_home_never_names_the_models_of_an_open_round(sqlite_db, fake_slack):
    h = SlackHarness.create(sqlite_db, fake_slack, agents=("U_AGENT",))
    try:
        round_ = evals.create_round(h.db, candidate_model="ft:gpt-4o-mini:acme:zebra:1", baseline_model="openai:okapi-base",
                                    prompts=[[{"role": "user", "content": "Where is my order?"}]], channel="C_SUPPORT").example
        evals.move_round(h.db, round_.id, RoundStatus.OPEN)
        [comparison] = evals.round_comparisons(h.db, round_.id)
        evals.cast_vote(h.db, comparison.id, "U_VOTER", "A", reaction="a")
        home = json.dumps(_open_home(h, "U_AGENT", "EvHBlind"))
        assert "ftbot" in home and "zebra" not in home and "okapi" not in home
    finally:
        h.close()


def test_home_names_the_latest_model_and_its_base_without_server_paths(sqlite_db, fake_slack):
    h = SlackHarness.create(sqlite_db, fake_slack, agents=("U_AGENT",))
    try:
        job = create_job(h.db, backend="local", base_model="/srv/models/Qwen2.5-0.5B-Instruct").job
        adapter = f"/root/.ftbot/models/{job.id}/adapter"
        update_job(h.db, stored_id(job), status=JobStatus.SUCCEEDED, result_model=adapter)
        unregistered = json.dumps(_open_home(h, "U_AGENT", "EvHPath1"))
        assert f"job #{job.id} adapter" in unregistered
        register_model(h.db, name="acme-support-gpt-4o-mini-2026-11-30-v12", backend="local",
                       base_model="/srv/models/Qwen2.5-0.5B-Instruct", location=adapter, job_id=stored_id(job))
        home = json.dumps(_open_home(h, "U_AGENT", "EvHPath2"))
        assert "`acme-support-gpt-4o-mini-2026-11-30-v12`" in home and "`Qwen2.5-0.5B-Instruct`" in home
        for view in (unregistered, home):
            assert "/root" not in view and "/srv" not in view
    finally:
        h.close()

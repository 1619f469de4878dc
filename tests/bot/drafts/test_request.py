"""Generating a draft: the thread as the model sees it, one draft per request however often Slack delivers it, the
model in use (or the newest one, said so), the private message within Block Kit's limits."""

from __future__ import annotations

import json

import pytest

from bot.drafts.views import SEND_ACTION
from storage.drafts import list_drafts
from storage.jobs import register_model
from storage.models import RegisteredModel
from tests.bot.drafts.conftest import DRAFT_TEXT, FINE_TUNED, MODEL, Desk
from tests.fixtures.concurrency import at_once


def _text(value: object) -> str:
    return json.dumps(value, ensure_ascii=False)


def _chat_requests(openai_api) -> list[dict]:
    return [call.json for call in openai_api.requests_to("/chat/completions")]


def test_a_mention_drafts_a_reply_to_the_latest_customer_message_privately(team: Desk, openai_api):
    team.say("Which card did you use?", user="U_AGENT2", deliver=False)
    team.say("The Visa ending 4242. Also, the app logs me out.", user="U_CUSTOMER", deliver=False)
    team.mention()

    [request] = _chat_requests(openai_api)
    assert request["model"] == FINE_TUNED and request["temperature"] == 0
    roles = [m["role"] for m in request["messages"]]
    assert roles == ["system", "user", "assistant", "user"]  # the thread as capture reads it, ending with the question
    assert request["messages"][-1]["content"].startswith("The Visa ending 4242")
    assert "draft" not in _text(request["messages"][1:])  # the mention itself is not a turn

    [shown] = team.drafts_shown("U_AGENT")
    assert shown["thread_ts"] == team.thread_ts and shown["channel"] == "C_SUPPORT"
    blocks = _text(shown["blocks"])
    assert DRAFT_TEXT in blocks and MODEL in blocks and "Edit…" in blocks and "Discard" in blocks
    assert DRAFT_TEXT in shown["text"]
    [draft] = list_drafts(team.h.db)
    assert draft.request_key.startswith("mention:C_SUPPORT:") and draft.requested_by == "U_AGENT"
    assert draft.model == MODEL and draft.backend == "openai" and draft.outcome is None
    assert draft.latency_ms is not None and draft.generation_ms is not None and draft.latency_ms >= draft.generation_ms
    assert not team.thread_posts_by_bot()  # nothing in the thread: the customer sees nothing


def test_a_mention_delivered_four_times_makes_one_draft_and_one_private_message(team: Desk, openai_api):
    team.mention(deliveries=4)  # Slack's retries under new event ids, one after the other
    assert len(list_drafts(team.h.db)) == 1 and len(team.drafts_shown()) == 1
    assert len(_chat_requests(openai_api)) == 1

    # …and four at once: still one draft, one private message, one generation.
    team.question("Second question: where is my invoice?")
    message = team.fake.post_message("C_SUPPORT", "U_AGENT", "<@U0FTBOT> draft", thread_ts=team.thread_ts)
    from tests.fixtures.slack_api import app_mention

    event = app_mention("<@U0FTBOT> draft", user="U_AGENT", ts=message["ts"], thread_ts=team.thread_ts)
    responses = at_once(lambda i: team.h.event(event, event_id=f"EvAtOnce{i}"), 4)
    team.h.wait()
    assert all(r.status == 200 for r in responses)
    assert len(list_drafts(team.h.db)) == 2 and len(team.drafts_shown()) == 2 and len(_chat_requests(openai_api)) == 2


def test_without_a_model_in_use_the_newest_is_used_and_the_draft_says_so(harnesses, fake_slack, openai_api):
    from tests.bot.drafts.conftest import draft_answer

    openai_api.responder = draft_answer
    h = harnesses()
    try:
        desk = Desk(h)
        desk.question()
        desk.mention()
        assert "no model to draft with yet" in fake_slack.ephemerals[-1]["text"] and "/ft use" in fake_slack.ephemerals[-1]["text"]
        assert not list_drafts(h.db)

        register_model(h.db, name="older", backend="openai", base_model="gpt-4o-mini-2024-07-18", location="ft:a")
        register_model(h.db, name="newest", backend="openai", base_model="gpt-4o-mini-2024-07-18", location="ft:b")
        desk.mention()
        [shown] = desk.drafts_shown()
        assert "No model is in use, so this draft comes from the newest one, *newest*" in _text(shown["blocks"])
        assert list_drafts(h.db)[0].model == "newest"
    finally:
        h.bot.close()


def test_model_and_customer_text_are_escaped_and_long_drafts_fit_slack(team: Desk, openai_api):
    long_draft = "<!here> Thanks <@U_LEAD>! " + "We are on it. " * 400  # ~5,600 characters
    openai_api.responder = lambda request: long_draft
    team.mention()
    [shown] = team.drafts_shown()
    blocks = _text(shown["blocks"])
    assert "<!here>" not in blocks and "&lt;!here&gt;" in blocks and "<!channel>" not in blocks
    assert "<!here>" not in shown["text"] and len(shown["text"]) <= 3000
    assert len(blocks) < 11000 and all(len(b.get("text", {}).get("text", "")) <= 3000 for b in shown["blocks"])
    assert any(b["type"] == "actions" for b in shown["blocks"]) and SEND_ACTION in blocks


def test_a_failing_model_is_explained_privately_and_stores_nothing(team: Desk, openai_api):
    openai_api.inject("/chat/completions", 400)
    team.mention()
    said = team.fake.ephemerals[-1]
    assert said["user"] == "U_AGENT" and MODEL in said["text"] and "could not draft" in said["text"]
    assert not list_drafts(team.h.db) and not team.drafts_shown()


def test_a_local_model_drafts_through_an_inference_server(harnesses, fake_slack, openai_api):
    """FTBOT_INFERENCE_URL: the registered name goes to the server; the agent is told a draft is coming."""
    h = harnesses(inference_url=openai_api.base_url)
    openai_api.responder = lambda request: f"Local answer from {request['model']}"
    register_model(h.db, name="acme-local-job2", backend="local", base_model="ftbot:smollm2", location="/models/2/adapter")
    try:
        desk = Desk(h)
        desk.question()
        desk.mention()
        [request] = _chat_requests(openai_api)
        assert request["model"] == "acme-local-job2"
        assert any("Drafting a reply with *acme-local-job2*" in e["text"] for e in fake_slack.ephemerals)
        [shown] = desk.drafts_shown()
        assert "Local answer from acme-local-job2" in _text(shown["blocks"])
        assert list_drafts(h.db)[0].backend == "local"
    finally:
        h.bot.close()


def test_the_registered_model_type_is_what_the_service_gets(team: Desk, monkeypatch):
    seen: list[RegisteredModel] = []
    service = team.h.bot.draft_service()
    original = service.generate

    def spy(model, messages):
        seen.append(model)
        return original(model, messages)

    monkeypatch.setattr(service, "generate", spy)
    team.mention()
    assert [m.name for m in seen] == [MODEL] and seen[0].location == FINE_TUNED


@pytest.mark.slow
def test_a_local_model_drafts_in_ftbots_own_process_loaded_at_ft_use(harnesses, fake_slack, tiny_model_dir, adapter_dir):
    """No inference server: `/ft use` loads the model into the embedded drafting process, drafts reuse it."""
    h = harnesses(trainers=("U_LEAD",), agents=("U_AGENT",), draft_max_tokens=8)
    register_model(h.db, name="tiny-sft-job1", backend="local", base_model=str(tiny_model_dir), location=str(adapter_dir))
    try:
        h.command("use tiny-sft-job1", user_id="U_LEAD")
        h.wait(180)
        said = [r["text"] for r in fake_slack.responses]
        assert any("Now using *tiny-sft-job1*" in text for text in said)
        assert any(text.startswith("Loaded tiny-sft-job1") and "drafting process" in text for text in said), said
        process = h.bot.draft_service().embedded_process
        assert process is not None and process.alive()

        desk = Desk(h)
        desk.question()
        desk.mention(timeout=120)
        [shown] = desk.drafts_shown()
        [draft] = list_drafts(h.db)
        assert draft.backend == "local" and draft.model == "tiny-sft-job1" and draft.draft.strip()
        assert "tiny-sft-job1" in _text(shown["blocks"]) and draft.latency_ms is not None
    finally:
        h.bot.close()
    assert process.exited(within=10)

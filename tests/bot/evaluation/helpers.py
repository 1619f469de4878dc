"""The evaluation loop's test helpers: a registered model to evaluate, a fake OpenAI that answers per model, and the
steps users take in Slack (start a round, post it, react)."""

from __future__ import annotations

import time

from bot.evaluation import quotes
from bot.scheduler import stop_scheduler
from storage.examples import save_capture
from storage.jobs import register_model, use_model
from storage.snapshots import create_snapshot
from tests.fixtures.slack_api import SlackHarness, block_actions

CANDIDATE = "ft:gpt-4o-mini-2024-07-18:acme:support:abc123"
BASE = "gpt-4o-mini-2024-07-18"
CHANNEL = "C_SUPPORT"


def seed_model(db, n_examples: int = 30) -> None:
    for i in range(n_examples):
        record = {"messages": [
            {"role": "system", "content": "You are Acme support."},
            {"role": "user", "content": f"Question {i}: how do I fix issue {i}?"},
            {"role": "assistant", "content": f"Reference reply {i} & more <details>."},
        ]}
        save_capture(db, record=record, source_key=f"slack:C:{i}", channel="C", ts=f"{i}.0", thread_ts=None,
                     permalink=None, captured_by="U_AGENT", status="approved")
    snapshot = create_snapshot(db, validation_fraction=0.2).snapshot
    register_model(db, name=CANDIDATE, backend="openai", base_model=BASE, location=CANDIDATE, snapshot_id=snapshot.id)
    use_model(db, CANDIDATE)


def answer_by_model(request: dict) -> str:
    question = request["messages"][-1]["content"]
    if request["model"] == CANDIDATE:
        return f"Fine-tuned answer to <{question}> — follow the steps & done."
    return f"Generic answer to {question}"


def stop_harness_scheduler(h: SlackHarness) -> None:
    # Opening a round schedules the close check; stop its thread with the test's database.
    stop_scheduler(h.bot, wait=True)


def start_round(h: SlackHarness, text: str = "eval --n 4") -> int:
    h.command(text, user_id="U_AGENT")
    h.wait()
    quote = h.fake.responses[-1]
    buttons = [e for b in quote["blocks"] if b["type"] == "actions" for e in b["elements"]]
    assert [b["action_id"] for b in buttons] == [quotes.POST_ACTION, quotes.CANCEL_ACTION]
    assert "$" in quote["text"] and "Post or cancel" in quote["text"]
    return int(buttons[0]["value"])


def post_round(h: SlackHarness, round_id: int) -> None:
    h.interact(block_actions(quotes.POST_ACTION, str(round_id), response_url=h.fake.response_url()))
    h.wait(timeout=30)


def chat_calls(openai_api) -> list:
    return [c for c in openai_api.calls if "chat/completions" in c.path]


def comparison_posts(h: SlackHarness) -> list:
    return [c for c in h.fake.calls_to("chat.postMessage") if "Blind comparison" in (c.args.get("text") or "")]


def react(h: SlackHarness, user: str, name: str, ts: str, *, event_id: str, removed: bool = False,
           event_ts: float | None = None, **sign) -> None:
    event = {
        "type": "reaction_removed" if removed else "reaction_added", "user": user, "reaction": name,
        "item": {"type": "message", "channel": CHANNEL, "ts": ts}, "item_user": "U0FTBOT",
        "event_ts": f"{event_ts if event_ts is not None else time.time():.6f}",
    }
    response = h.event(event, event_id=event_id, **sign)
    assert response.status == 200
    h.wait()


def user_react(h: SlackHarness, user: str, name: str, ts: str, *, event_id: str, removed: bool = False,
                event_ts: float) -> None:
    """A person reacting in the Slack client: Slack's stored reactions change, then the event is delivered."""
    entries = h.fake.reactions.setdefault((CHANNEL, ts), [])
    if removed:
        entries.remove({"name": name, "user": user})
    else:
        entries.append({"name": name, "user": user})
    react(h, user, name, ts, event_id=event_id, removed=removed, event_ts=event_ts)

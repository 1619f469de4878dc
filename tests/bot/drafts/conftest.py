"""The drafts' Slack tests: the real Bolt app on the fake Slack Web API, an OpenAI model in use on the fake OpenAI API.

``team``: roles configured (U_AGENT and U_AGENT2 agents, U_LEAD a trainer; U_CUSTOMER and U_OTHER no role), the
OpenAI model ``acme-sft-job1`` in use, and a customer thread in #support; :class:`Desk` drives it as people would.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import pytest

from bot.drafts.views import DISCARD_ACTION, EDIT_ACTION, SEND_ACTION
from storage.jobs import register_model, use_model
from tests.fixtures.slack_api import SlackHarness, app_mention, block_actions, view_submission

CHANNEL = "C_SUPPORT"
MODEL = "acme-sft-job1"
FINE_TUNED = "ft:gpt-4o-mini:acme::x"
QUESTION = "My card was charged twice for order 1042. <!channel> please help"
DRAFT_TEXT = "Sorry about the double charge! I refunded the second one; it shows within 5 days."


def draft_answer(request: dict[str, Any]) -> str:
    """The fake OpenAI's reply to every draft request."""
    return DRAFT_TEXT


def message_event(*, user: str, text: str, ts: str, thread_ts: str | None = None, parent_user_id: str | None = None,
                  channel: str = CHANNEL, **extra: Any) -> dict[str, Any]:
    """A ``message`` event as Slack sends it for ``message.channels``."""
    event: dict[str, Any] = {"type": "message", "channel": channel, "user": user, "text": text, "ts": ts, "event_ts": ts,
                             "channel_type": "channel", "team": "T0FTBOT", **extra}
    if thread_ts:
        event["thread_ts"] = thread_ts
        if parent_user_id:
            event["parent_user_id"] = parent_user_id
    return event


@dataclass
class Desk:
    """A support channel: a customer's thread, agents asking for drafts and clicking their buttons."""

    h: SlackHarness
    thread_ts: str = ""
    _events: int = 0

    @property
    def fake(self) -> Any:
        return self.h.fake

    def next_event_id(self) -> str:
        self._events += 1
        return f"EvDraft{self._events:04d}"

    def question(self, text: str = QUESTION, *, user: str = "U_CUSTOMER", channel: str = CHANNEL) -> str:
        """The customer opens a thread (no event delivered: auto mode is off unless a test says so)."""
        message = self.fake.post_message(channel, user, text)
        self.thread_ts = message["ts"]
        return message["ts"]

    def say(self, text: str, *, user: str, thread_ts: str | None = None, deliver: bool = True,
            channel: str = CHANNEL) -> dict[str, Any]:
        """Someone posts (in the thread by default); Slack sends the ``message`` event."""
        thread = thread_ts or self.thread_ts
        message = self.fake.post_message(channel, user, text, thread_ts=thread)
        if deliver:
            root = self.fake.find_message(channel, thread) or {}
            self.h.event(message_event(user=user, text=text, ts=message["ts"], thread_ts=thread, channel=channel,
                                       parent_user_id=root.get("user")), event_id=self.next_event_id())
            self.h.wait()
        return message

    def mention(self, *, user: str = "U_AGENT", deliveries: int = 1, text: str = "<@U0FTBOT> draft",
                timeout: float = 10.0) -> str:
        """`@ftbot draft` in the thread, delivered ``deliveries`` times under new event ids (Slack's retries)."""
        message = self.fake.post_message(CHANNEL, user, text, thread_ts=self.thread_ts)
        for _ in range(deliveries):
            self.h.event(app_mention(text, user=user, ts=message["ts"], thread_ts=self.thread_ts),
                         event_id=self.next_event_id())
        self.h.wait(timeout)
        return message["ts"]

    def drafts_shown(self, user: str | None = None) -> list[dict[str, Any]]:
        """The private drafts (ephemerals with the Send button), to ``user`` or anyone."""
        return [e for e in self.fake.ephemerals if SEND_ACTION in json.dumps(e.get("blocks") or [])
                and (user is None or e.get("user") == user)]

    def draft_id(self, user: str = "U_AGENT") -> int:
        [shown] = self.drafts_shown(user)
        return int(next(el["value"] for block in shown["blocks"] if block["type"] == "actions" for el in block["elements"]
                        if el["action_id"] == SEND_ACTION))

    def click(self, action_id: str, draft_id: int | str, *, user: str = "U_AGENT", wait: bool = True) -> str:
        """Click a draft's button; returns the click's response_url (where the bot answers)."""
        url = self.fake.response_url()
        self.h.interact(block_actions(action_id, str(draft_id), user_id=user, response_url=url,
                                      trigger_id=self.fake.new_trigger_id()))
        if wait:
            self.h.wait()
        return url

    def answers(self, url: str) -> list[dict[str, Any]]:
        key = url.rsplit("/", 1)[1]
        return [r for r in self.fake.responses if r.get("key") == key]

    def open_form(self, action_id: str, draft_id: int, *, user: str = "U_AGENT") -> dict[str, Any]:
        before = set(self.fake.views)
        self.click(action_id, draft_id, user=user)
        [opened] = [v for k, v in self.fake.views.items() if k not in before]
        return opened

    def submit(self, view: dict[str, Any], text: str | None, *, block_id: str, user: str = "U_AGENT") -> Any:
        values = {block_id: {"text": {"type": "plain_text_input", "value": text}}}
        response = self.h.interact(view_submission(view, values, user_id=user))
        self.h.wait()
        return response

    def edit(self, draft_id: int, text: str, *, user: str = "U_AGENT") -> Any:
        return self.submit(self.open_form(EDIT_ACTION, draft_id, user=user), text, block_id="reply", user=user)

    def discard(self, draft_id: int, reason: str | None = None, *, user: str = "U_AGENT") -> Any:
        return self.submit(self.open_form(DISCARD_ACTION, draft_id, user=user), reason, block_id="reason", user=user)

    def thread_posts_by_bot(self) -> list[dict[str, Any]]:
        return [m for m in self.fake.thread(CHANNEL, self.thread_ts) if m.get("bot_id")]


def use_openai_model(db: Any) -> None:
    register_model(db, name=MODEL, backend="openai", base_model="gpt-4o-mini-2024-07-18", location=FINE_TUNED)
    use_model(db, MODEL)


@pytest.fixture
def team(harnesses, fake_slack, openai_api) -> Iterator[Desk]:
    """Roles configured, the OpenAI model in use, #support with the team, a customer and a bystander in it."""
    openai_api.responder = draft_answer
    for user, name in (("U_AGENT2", "sam"), ("U_OTHER", "otto")):
        fake_slack.add_user(user, name)
    fake_slack.channels[CHANNEL]["members"] = ["U_AGENT", "U_AGENT2", "U_LEAD", "U_CUSTOMER", "U_OTHER", "U0FTBOT"]
    yield from _desk_with_a_question(harnesses(agents=("U_AGENT", "U_AGENT2"), trainers=("U_LEAD",)))


@pytest.fixture
def open_desk(harnesses, fake_slack, openai_api) -> Iterator[Desk]:
    """No roles configured ("everything open"), the OpenAI model in use."""
    openai_api.responder = draft_answer
    fake_slack.channels[CHANNEL]["members"] = ["U_AGENT", "U_LEAD", "U_CUSTOMER", "U0FTBOT"]
    yield from _desk_with_a_question(harnesses())


def _desk_with_a_question(h) -> Iterator[Desk]:
    """The OpenAI model in use and a customer's question in #support; the bot is closed afterwards."""
    use_openai_model(h.db)
    desk = Desk(h)
    desk.question()
    try:
        yield desk
    finally:
        h.bot.close()

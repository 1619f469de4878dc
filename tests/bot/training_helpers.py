"""Driving `/ft train` through the real Bolt app: ask for a quote, read its buttons, click one (as a person would)."""

from __future__ import annotations

from tests.fixtures.slack_api import SlackHarness, block_actions


def quote(harness: SlackHarness, text: str, user: str = "U_AGENT") -> dict:
    """The bot's private answer to ``/ft <text>`` (a training quote, or why there is none)."""
    before = len(harness.fake.responses)
    harness.command(text, user_id=user, trigger_id=harness.fake.new_trigger_id())
    harness.wait()
    assert len(harness.fake.responses) > before, "no answer to the command"
    return harness.fake.responses[-1]


def buttons(response: dict) -> dict[str, str]:
    """The answer's buttons: action id → value."""
    return {e["action_id"]: e.get("value", "") for b in response.get("blocks", []) if b["type"] == "actions" for e in b["elements"]}


def click(harness: SlackHarness, action_id: str, value: str, user: str = "U_AGENT") -> None:
    harness.interact(block_actions(action_id, value, user_id=user, response_url=harness.fake.response_url()))
    harness.wait()

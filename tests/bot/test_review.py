"""Approve / Reject through the real Bolt app: the thread's confirmation follows the example, stale buttons change nothing."""

from __future__ import annotations

import json

import pytest

from storage.examples import get_example, list_examples
from tests.fixtures.slack_api import SlackHarness, block_actions, form_values, message_action, view_submission


@pytest.fixture
def team_bot(sqlite_db, fake_slack):
    fake_slack.add_usergroup("S_REVIEWERS", ["U_LEAD", "U_LEAD2"])
    h = SlackHarness.create(sqlite_db, fake_slack, agents=("U_AGENT",), reviewers=("S_REVIEWERS",))
    yield h
    h.close()


def _capture_pending(h: SlackHarness) -> tuple[int, dict]:
    """Capture an agent's reply (pending review); returns the example id and its confirmation message in the thread."""
    parent = h.fake.post_message("C_SUPPORT", "U_CUSTOMER", "How do I change my billing address?")
    reply = h.fake.post_message("C_SUPPORT", "U_AGENT", "Open Settings, then Billing, and edit the address there.",
                                thread_ts=parent["ts"])
    h.interact(message_action(reply, trigger_id=h.fake.new_trigger_id(), response_url=h.fake.response_url()))
    h.wait()
    view = list(h.fake.views.values())[-1]
    h.interact(view_submission(view, form_values(view)))
    h.wait()
    [example] = list_examples(h.db)
    posted = h.fake.calls_to("chat.postMessage")[-1].args
    assert posted["thread_ts"] == parent["ts"]
    confirmation = h.fake.thread("C_SUPPORT", parent["ts"])[-1]
    assert "ft_review_approve" in json.dumps(confirmation["blocks"])
    return example.id, confirmation


def _review_button(h: SlackHarness, reviewer: str, action_id: str) -> str:
    h.command("review", user_id=reviewer)
    h.wait()
    page = h.fake.responses[-1]
    return next(e["value"] for b in page["blocks"] if b["type"] == "actions" for e in b["elements"] if e["action_id"] == action_id)


def test_approving_from_ft_review_updates_the_confirmation_in_the_thread(team_bot: SlackHarness):
    h = team_bot
    example_id, confirmation = _capture_pending(h)
    value = _review_button(h, "U_LEAD", "ft_review_approve")
    h.interact(block_actions("ft_review_approve", value, user_id="U_LEAD", message=None, response_url=h.fake.response_url()))
    h.wait()
    assert get_example(h.db, example_id).status == "approved"
    [update] = h.fake.calls_to("chat.update")
    assert (update.args["channel"], update.args["ts"]) == ("C_SUPPORT", confirmation["ts"])
    # The thread no longer offers Approve / Reject, and says who approved.
    shown = h.fake.find_message("C_SUPPORT", confirmation["ts"])
    assert "ft_review_approve" not in json.dumps(shown["blocks"])
    assert "Approved* by <@U_LEAD>" in json.dumps(shown["blocks"])


def test_a_stale_button_changes_nothing_and_says_what_happened(team_bot: SlackHarness):
    h = team_bot
    example_id, confirmation = _capture_pending(h)
    stale_page_value = _review_button(h, "U_LEAD2", "ft_review_reject")  # U_LEAD2 opened /ft review before the approval

    h.interact(block_actions("ft_review_approve", str(example_id), user_id="U_LEAD", message=confirmation))
    h.wait()
    assert get_example(h.db, example_id).status == "approved"
    updates = len(h.fake.calls_to("chat.update"))

    # The same confirmation, clicked again by another reviewer (their client had not refreshed it yet).
    h.interact(block_actions("ft_review_reject", str(example_id), user_id="U_LEAD2", message=confirmation,
                             response_url=h.fake.response_url()))
    h.wait()
    assert get_example(h.db, example_id).status == "approved"
    answer = h.fake.responses[-1]
    assert answer["response_type"] == "ephemeral" and answer.get("replace_original") is False
    assert f"#{example_id} was already approved by <@U_LEAD>" in answer["text"]
    assert len(h.fake.calls_to("chat.update")) == updates

    # A Reject on a /ft review page drawn before the approval: nothing changes either.
    h.interact(block_actions("ft_review_reject", stale_page_value, user_id="U_LEAD2", message=None,
                             response_url=h.fake.response_url()))
    h.wait()
    example = get_example(h.db, example_id)
    assert (example.status, example.approved_by) == ("approved", "U_LEAD")
    assert f"#{example_id} was already approved by <@U_LEAD>" in h.fake.responses[-1]["text"]


def test_a_stale_approve_on_a_rejected_example_keeps_it_rejected(team_bot: SlackHarness):
    h = team_bot
    example_id, confirmation = _capture_pending(h)
    h.interact(block_actions("ft_review_reject", str(example_id), user_id="U_LEAD", message=confirmation))
    h.wait()
    h.interact(block_actions("ft_review_approve", str(example_id), user_id="U_LEAD2", message=confirmation,
                             response_url=h.fake.response_url()))
    h.wait()
    assert get_example(h.db, example_id).status == "rejected"
    assert f"#{example_id} was already rejected" in h.fake.responses[-1]["text"]

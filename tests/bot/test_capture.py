"""Capture flows against the real Bolt app and the fake Slack Web API: shortcut, /ft add, @ftbot add, review."""

from __future__ import annotations

import json

import pytest

from storage.examples import count_by_status, list_examples, set_status
from tests.fixtures.slack_api import (
    SlackHarness,
    app_mention,
    block_actions,
    form_values,
    message_action,
    view_submission,
)


def _thread(fake, *, customer_text="My invoice shows the wrong VAT number &amp; address. Can you fix it?"):
    parent = fake.post_message("C_SUPPORT", "U_CUSTOMER", customer_text)
    fake.post_message("C_SUPPORT", "U_CUSTOMER", "It is invoice 1042.", thread_ts=parent["ts"])
    reply = fake.post_message("C_SUPPORT", "U_AGENT", "Thanks <@U_CUSTOMER>! I corrected it, see <https://example.com/inv|your invoice>.",
                              thread_ts=parent["ts"])
    fake.post_message("C_SUPPORT", "U_CUSTOMER", "Great, thanks!", thread_ts=parent["ts"])  # after the reply: not included
    return parent, reply


def _open_via_shortcut(h: SlackHarness, reply, *, user="U_AGENT"):
    trigger = h.fake.new_trigger_id()
    response = h.interact(message_action(reply, user_id=user, trigger_id=trigger, response_url=h.fake.response_url()))
    assert response.status == 200
    h.wait()
    return h.fake.views[h.fake.calls_to("views.open")[-1].args["trigger_id"] and list(h.fake.views)[-1]]


def test_shortcut_opens_modal_then_fills_it_with_the_thread(slack_bot: SlackHarness):
    h = slack_bot
    _parent, reply = _thread(h.fake)
    view = _open_via_shortcut(h, reply)

    methods = h.fake.methods()
    assert methods.index("views.open") < methods.index("conversations.replies") < methods.index("views.update")
    assert h.fake.calls_to("views.open")[0].args["view"]["blocks"][0]["text"]["text"].endswith("Reading the thread…")
    inputs = [b for b in view["blocks"] if b["type"] == "input" and b["block_id"].startswith("turn_")]
    roles = [b["label"]["text"] for b in inputs]
    assert roles == ["0. System prompt", "1. Customer (user)", "2. Agent reply (assistant)"]
    texts = [b["element"]["initial_value"] for b in inputs]
    # consecutive customer messages merged, Slack markup turned into plain text, later messages left out
    assert texts[1] == "My invoice shows the wrong VAT number & address. Can you fix it?\n\nIt is invoice 1042."
    assert texts[2] == "Thanks @carla! I corrected it, see your invoice (https://example.com/inv)."
    assert "Great, thanks" not in json.dumps(view)


def test_submission_stores_example_once_even_when_double_clicked(slack_bot: SlackHarness):
    h = slack_bot
    _parent, reply = _thread(h.fake)
    view = _open_via_shortcut(h, reply)
    values = form_values(view)
    values["tags"] = {"value": {"type": "plain_text_input", "value": "Billing, invoices"}}
    turn2 = next(k for k in values if k.startswith("turn_2"))
    values[turn2]["text"]["value"] = "I corrected the VAT number on invoice 1042."

    payload = view_submission(view, values)
    first = h.interact(payload)
    second = h.interact(payload)  # the double click
    h.wait()
    assert first.status == second.status == 200

    examples = list_examples(h.db)
    assert len(examples) == 1
    example = examples[0]
    assert example.status == "approved"  # no roles configured: approved at once
    assert example.source_key == f"slack:C_SUPPORT:{reply['ts']}"
    assert example.tags == ["billing", "invoices"]
    assert example.messages[-1] == {"role": "assistant", "content": "I corrected the VAT number on invoice 1042."}
    assert [m["role"] for m in example.messages] == ["system", "user", "assistant"]
    # one private confirmation, not two
    assert len(h.fake.calls_to("chat.postEphemeral")) == 1


def test_capturing_same_message_again_updates_the_example(slack_bot: SlackHarness):
    h = slack_bot
    _parent, reply = _thread(h.fake)
    for new_text in ("First version of the reply.", "Second, better version of the reply."):
        view = _open_via_shortcut(h, reply)
        values = form_values(view)
        values[next(k for k in values if k.startswith("turn_2"))]["text"]["value"] = new_text
        h.interact(view_submission(view, values))
        h.wait()
    examples = list_examples(h.db)
    assert len(examples) == 1
    assert examples[0].messages[-1]["content"] == "Second, better version of the reply."


def test_invalid_edit_returns_field_errors_and_stores_nothing(slack_bot: SlackHarness):
    h = slack_bot
    _parent, reply = _thread(h.fake)
    view = _open_via_shortcut(h, reply)
    values = form_values(view)
    # an assistant turn edited to weight-0-only content is impossible here; blank the customer turn instead
    turn1 = next(k for k in values if k.startswith("turn_1"))
    values[turn1]["text"]["value"] = "   "
    response = h.interact(view_submission(view, values))
    h.wait()
    body = json.loads(response.body)
    assert body["response_action"] == "errors"
    assert turn1 in body["errors"] and "empty" in body["errors"][turn1]
    assert list_examples(h.db) == []


def test_redact_pii_button_updates_the_view(slack_bot: SlackHarness):
    h = slack_bot
    parent = h.fake.post_message("C_SUPPORT", "U_CUSTOMER", "Please email me at jane.doe@example.com about my order")
    reply = h.fake.post_message("C_SUPPORT", "U_AGENT", "Sure Jane, I will write to you within the hour with the details.",
                                thread_ts=parent["ts"])
    view = _open_via_shortcut(h, reply)
    assert any(b.get("block_id") == "pii" for b in view["blocks"])
    h.interact(block_actions("ft_capture_redact", "redact", view={**view, "state": {"values": form_values(view)}}))
    h.wait()
    updated = h.fake.views[view["id"]]
    text = json.dumps(updated)
    assert "jane.doe@example.com" not in text and "[EMAIL]" in text
    assert not any(b.get("block_id") == "pii" for b in updated["blocks"])
    # the redacted text is what gets stored
    h.interact(view_submission(updated, form_values(updated)))
    h.wait()
    assert "[EMAIL]" in list_examples(h.db)[0].messages[1]["content"]


def test_ft_add_with_thread_permalink(slack_bot: SlackHarness):
    h = slack_bot
    parent, reply = _thread(h.fake)
    link = h.fake.permalink("C_SUPPORT", reply["ts"], parent["ts"])
    h.command(f"add <{link.replace('&', '&amp;')}>", trigger_id=h.fake.new_trigger_id())
    h.wait()
    view = list(h.fake.views.values())[-1]
    values = form_values(view)
    assert values[next(k for k in values if k.startswith("turn_2"))]["text"]["value"].startswith("Thanks @carla")
    h.interact(view_submission(view, values))
    h.wait()
    assert list_examples(h.db)[0].source_thread_ts == parent["ts"]


def test_ft_add_with_a_reply_link_lacking_thread_ts_reads_the_whole_thread(slack_bot: SlackHarness):
    h = slack_bot
    parent, reply = _thread(h.fake)
    h.command(f"add {h.fake.permalink('C_SUPPORT', reply['ts'])}", trigger_id=h.fake.new_trigger_id())
    h.wait()
    view = list(h.fake.views.values())[-1]
    assert "Can you fix it?" in json.dumps(view) and view.get("submit")
    h.interact(view_submission(view, form_values(view)))
    h.wait()
    assert list_examples(h.db)[0].source_thread_ts == parent["ts"]
    assert h.fake.calls_to("chat.postEphemeral")[-1].args["thread_ts"] == parent["ts"]


def test_ft_add_rejects_a_non_link(slack_bot: SlackHarness):
    h = slack_bot
    h.command("add not-a-link")
    h.wait()
    assert "not a Slack message link" in h.fake.responses[-1]["text"]
    assert h.fake.calls_to("views.open") == []


def test_app_mention_add_offers_the_form_once_even_when_retried(slack_bot: SlackHarness):
    h = slack_bot
    parent, reply = _thread(h.fake)
    mention = h.fake.post_message("C_SUPPORT", "U_AGENT", "<@U0FTBOT> add", thread_ts=parent["ts"])
    event = app_mention("<@U0FTBOT> add", ts=mention["ts"], thread_ts=parent["ts"])
    for retry in (None, 1, 2, 3):
        assert h.event(event, event_id="EvMention1", retry_num=retry).status == 200
    h.wait()
    offers = h.fake.calls_to("chat.postEphemeral")
    assert len(offers) == 1
    button = offers[0].args["blocks"][1]["elements"][0]
    target = json.loads(button["value"])
    # no roles configured: the mentioning agent's own reply above the mention is the one to capture
    assert target == {"channel": "C_SUPPORT", "ts": reply["ts"], "thread_ts": parent["ts"]}
    assert offers[0].args["user"] == "U_AGENT" and offers[0].args["thread_ts"] == parent["ts"]


def test_app_mention_outside_a_thread_explains_where_to_use_it(slack_bot: SlackHarness):
    h = slack_bot
    mention = h.fake.post_message("C_SUPPORT", "U_AGENT", "<@U0FTBOT> add")
    h.event(app_mention("<@U0FTBOT> add", ts=mention["ts"], thread_ts=None), event_id="EvTop")
    h.wait()
    assert "inside the thread" in h.fake.calls_to("chat.postEphemeral")[0].args["text"]


def test_app_mention_with_roles_targets_the_agent_reply(sqlite_db, fake_slack):
    h = SlackHarness.create(sqlite_db, fake_slack, agents=("U_AGENT",), reviewers=("U_LEAD",))
    try:
        parent, reply = _thread(fake_slack)
        mention = fake_slack.post_message("C_SUPPORT", "U_AGENT", "<@U0FTBOT> add", thread_ts=parent["ts"])
        h.event(app_mention("<@U0FTBOT> add", ts=mention["ts"], thread_ts=parent["ts"]), event_id="EvM2")
        h.wait()
        button = fake_slack.calls_to("chat.postEphemeral")[0].args["blocks"][1]["elements"][0]
        assert json.loads(button["value"])["ts"] == reply["ts"]
        # clicking the button opens the form for that reply
        h.interact(block_actions("ft_capture_open", button["value"], message={"ts": mention["ts"]},
                                 trigger_id=fake_slack.new_trigger_id()))
        h.wait()
        view = list(fake_slack.views.values())[-1]
        assert view["callback_id"] == "ft_capture" and view.get("submit")
    finally:
        h.close()


@pytest.fixture
def team_bot(sqlite_db, fake_slack):
    fake_slack.add_usergroup("S_REVIEWERS", ["U_LEAD"])
    h = SlackHarness.create(sqlite_db, fake_slack, agents=("U_AGENT",), reviewers=("S_REVIEWERS",))
    yield h
    h.close()


def _capture_pending(h: SlackHarness):
    _parent, reply = _thread(h.fake)
    view = _open_via_shortcut(h, reply)
    h.interact(view_submission(view, form_values(view)))
    h.wait()
    return list_examples(h.db)[0]


def test_with_roles_capture_is_pending_and_reviewer_approves_from_the_confirmation(team_bot: SlackHarness):
    h = team_bot
    example = _capture_pending(h)
    assert example.status == "pending"
    confirmation = h.fake.calls_to("chat.postMessage")[-1].args
    assert confirmation["thread_ts"]
    message = h.fake.find_message("C_SUPPORT", h.fake.calls_to("chat.postMessage")[-1].args and
                                  h.fake.channels["C_SUPPORT"]["messages"][-1]["ts"])
    assert [e["action_id"] for e in confirmation["blocks"][-1]["elements"]] == ["ft_review_approve", "ft_review_reject"]

    # an agent (not a reviewer) clicking Approve is refused privately, nothing changes
    url = h.fake.response_url()
    h.interact(block_actions("ft_review_approve", str(example.id), user_id="U_AGENT", message=message, response_url=url))
    h.wait()
    assert "Only reviewers" in h.fake.responses[-1]["text"]
    assert count_by_status(h.db)["pending"] == 1

    # the reviewer (member of the S_REVIEWERS user group) approves: the message is updated in place
    h.interact(block_actions("ft_review_approve", str(example.id), user_id="U_LEAD", message=message))
    h.wait()
    assert count_by_status(h.db)["approved"] == 1
    update = h.fake.calls_to("chat.update")[-1].args
    assert update["ts"] == message["ts"]
    assert "Approved* by <@U_LEAD>" in json.dumps(update["blocks"])
    assert not any(b["type"] == "actions" for b in update["blocks"])


def test_ft_review_lists_pending_and_reject_redraws_the_page(team_bot: SlackHarness):
    h = team_bot
    example = _capture_pending(h)
    h.command("review", user_id="U_AGENT")
    h.wait()
    assert "Only reviewers" in h.fake.responses[-1]["text"]
    h.command("review", user_id="U_LEAD")
    h.wait()
    page = h.fake.responses[-1]
    assert page["response_type"] == "ephemeral"
    button = next(e for b in page["blocks"] if b["type"] == "actions" for e in b["elements"]
                  if e["action_id"] == "ft_review_reject")
    h.interact(block_actions("ft_review_reject", button["value"], user_id="U_LEAD", message=None,
                             response_url=h.fake.response_url()))
    h.wait()
    assert count_by_status(h.db)["rejected"] == 1
    assert h.fake.responses[-1]["replace_original"] is True
    assert "Nothing waiting for review" in json.dumps(h.fake.responses[-1]["blocks"])
    assert example.id == list_examples(h.db, status="rejected")[0].id


def test_customer_message_cannot_be_captured_as_a_reply(team_bot: SlackHarness):
    h = team_bot
    parent, _reply = _thread(h.fake)
    view = _open_via_shortcut(h, parent)
    assert "not on the support team" in json.dumps(view)
    assert view.get("submit") is None


def test_expired_trigger_is_explained(slack_bot: SlackHarness):
    h = slack_bot
    _parent, reply = _thread(h.fake)
    trigger = h.fake.new_trigger_id()
    h.interact(message_action(reply, trigger_id=trigger, response_url=h.fake.response_url()))
    h.wait()
    h.interact(message_action(reply, trigger_id=trigger, response_url=h.fake.response_url()))  # reused trigger
    h.wait()
    assert "try again" in h.fake.calls_to("chat.postEphemeral")[-1].args["text"]


def _pii_thread(h: SlackHarness):
    parent = h.fake.post_message("C_SUPPORT", "U_CUSTOMER", "Please email me at jane.doe@example.com about my order")
    return h.fake.post_message("C_SUPPORT", "U_AGENT", "Sure Jane, I will write to you within the hour with the details.",
                               thread_ts=parent["ts"])


def _capture_redacted(h: SlackHarness, reply):
    view = _open_via_shortcut(h, reply)
    h.interact(block_actions("ft_capture_redact", "redact", view={**view, "state": {"values": form_values(view)}}))
    h.wait()
    redacted = h.fake.views[view["id"]]
    h.interact(view_submission(redacted, form_values(redacted)))
    h.wait()
    [example] = list_examples(h.db)
    assert "[EMAIL]" in example.messages[1]["content"]
    return example


def test_capturing_again_opens_the_stored_example_and_keeps_its_approval(team_bot: SlackHarness):
    h = team_bot
    reply = _pii_thread(h)
    example = _capture_redacted(h, reply)
    set_status(h.db, example.id, "approved", by="U_LEAD")

    view = _open_via_shortcut(h, reply)
    shown = json.dumps(view)
    assert f"Already captured as #{example.id}" in shown and "approved" in shown
    assert "jane.doe@example.com" not in shown and "[EMAIL]" in shown  # the stored, redacted text, not the raw thread
    h.interact(view_submission(view, form_values(view)))
    h.wait()
    [again] = list_examples(h.db)
    assert (again.status, again.approved_by) == ("approved", "U_LEAD")
    assert again.messages == example.messages
    assert f"Unchanged example #{example.id} (approved)" in h.fake.calls_to("chat.postEphemeral")[-1].args["text"]

    # An edit after approval goes back to review, and the capturer is told so.
    view = _open_via_shortcut(h, reply)
    values = form_values(view)
    values[next(k for k in values if k.startswith("turn_2"))]["text"]["value"] = "Sure, I will email you within the hour."
    h.interact(view_submission(view, values))
    h.wait()
    [edited] = list_examples(h.db)
    assert edited.status == "pending" and "[EMAIL]" in edited.messages[1]["content"]
    assert "was approved" in json.dumps(h.fake.calls_to("chat.postMessage")[-1].args)


def test_a_rejected_example_is_reopened_only_by_a_reviewer(team_bot: SlackHarness):
    h = team_bot
    reply = _pii_thread(h)
    example = _capture_redacted(h, reply)
    set_status(h.db, example.id, "rejected", by="U_LEAD")

    view = _open_via_shortcut(h, reply, user="U_AGENT")
    assert "only a reviewer can reopen it" in json.dumps(view)
    assert not any(b.get("block_id") == "reopen" for b in view["blocks"])
    h.interact(view_submission(view, form_values(view), user_id="U_AGENT"))
    h.wait()
    assert list_examples(h.db)[0].status == "rejected"

    view = _open_via_shortcut(h, reply, user="U_LEAD")
    assert any(b.get("block_id") == "reopen" for b in view["blocks"])
    values = {**form_values(view), "reopen": {"reopen": {"type": "checkboxes", "selected_options": [{"value": "reopen"}]}}}
    h.interact(view_submission(view, values, user_id="U_LEAD"))
    h.wait()
    [reopened] = list_examples(h.db)
    assert reopened.status == "pending" and "[EMAIL]" in reopened.messages[1]["content"]
    assert f"Reopened example #{example.id}" in h.fake.calls_to("chat.postMessage")[-1].args["text"]


def test_a_capture_saved_meanwhile_by_someone_else_is_not_overwritten(team_bot: SlackHarness):
    h = team_bot
    reply = _pii_thread(h)
    raw_form = _open_via_shortcut(h, reply, user="U_LEAD")  # opened before the example exists: the raw thread
    example = _capture_redacted(h, reply)
    h.interact(view_submission(raw_form, form_values(raw_form), user_id="U_LEAD"))
    h.wait()
    [kept] = list_examples(h.db)
    assert kept.messages == example.messages and "jane.doe@example.com" not in json.dumps(kept.messages)
    assert f"already captured as #{example.id}" in h.fake.calls_to("chat.postEphemeral")[-1].args["text"]

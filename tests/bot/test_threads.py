"""Reading a conversation by link only for its members (``bot.threads.require_member``), through the real app."""

from __future__ import annotations

import json

import pytest
from slack_sdk import WebClient

from bot.threads import require_member
from storage import eval_prompts
from storage.errors import FtbotError
from storage.examples import list_examples
from tests.fixtures.slack_api import BOT_TOKEN, SlackHarness, app_mention

SECRET = "CONFIDENTIAL: layoffs planned"


@pytest.fixture
def private_thread(fake_slack):
    """A private channel the bot was invited to but U_AGENT is not in, with a thread whose reply is by U_LEAD."""
    fake_slack.add_channel("G_LEADS", "leads", is_private=True, members=["U_LEAD", "U_CUSTOMER"])
    parent = fake_slack.post_message("G_LEADS", "U_CUSTOMER", SECRET)
    reply = fake_slack.post_message("G_LEADS", "U_LEAD", "Noted, keep it quiet.", thread_ts=parent["ts"])
    return fake_slack.permalink("G_LEADS", reply["ts"], parent["ts"])


def _client(fake) -> WebClient:
    return WebClient(token=BOT_TOKEN, base_url=fake.base_url)


def _nothing_read_or_said(h: SlackHarness) -> None:
    assert not h.fake.calls_to("conversations.replies") and not h.fake.calls_to("conversations.history")
    assert "layoffs" not in json.dumps([c.args for c in h.fake.calls]) + json.dumps(h.fake.responses)
    assert "layoffs" not in json.dumps(list(h.fake.views.values()))


def test_ft_add_of_a_private_channel_the_agent_is_not_in_is_refused(slack_bot: SlackHarness, private_thread):
    h = slack_bot
    h.command(f"add {private_thread}", user_id="U_AGENT", trigger_id=h.fake.new_trigger_id())
    h.wait()
    view = list(h.fake.views.values())[-1]
    assert "not a member of that channel" in json.dumps(view)
    assert not list_examples(h.db)
    _nothing_read_or_said(h)


def test_a_member_may_capture_from_the_private_channel(slack_bot: SlackHarness, private_thread):
    h = slack_bot
    h.command(f"add {private_thread}", user_id="U_LEAD", trigger_id=h.fake.new_trigger_id())
    h.wait()
    assert SECRET in json.dumps(list(h.fake.views.values())[-1])


def test_eval_add_of_a_private_channel_the_agent_is_not_in_is_refused(slack_bot: SlackHarness, private_thread):
    h = slack_bot
    h.command(f"eval add {private_thread}", user_id="U_AGENT")
    h.wait()
    assert "not a member of that channel" in h.fake.responses[-1]["text"]
    assert not eval_prompts.list_eval_prompts(h.db)
    _nothing_read_or_said(h)


def test_mention_add_with_a_link_to_a_private_channel_is_refused(slack_bot: SlackHarness, private_thread):
    h = slack_bot
    text = f"<@U0FTBOT> add <{private_thread}>"
    mention = h.fake.post_message("C_SUPPORT", "U_AGENT", text)
    h.event(app_mention(text, ts=mention["ts"], thread_ts=None), event_id="EvPriv")
    h.wait()
    told = h.fake.calls_to("chat.postEphemeral")[-1].args
    assert told["user"] == "U_AGENT" and "not a member of that channel" in told["text"]
    assert "ft_capture_open" not in json.dumps(told)
    _nothing_read_or_said(h)


def test_public_channels_need_no_membership_and_are_not_listed(fake_slack):
    fake_slack.add_channel("C_PUBLIC", "general")
    require_member(_client(fake_slack), "C_PUBLIC", "U_AGENT")
    assert not fake_slack.calls_to("conversations.members")


def test_membership_of_a_large_private_channel_is_read_page_by_page(fake_slack):
    crowd = [f"U{i:05d}" for i in range(450)]
    fake_slack.add_channel("G_BIG", "big", is_private=True, members=[*crowd, "U_AGENT"])
    require_member(_client(fake_slack), "G_BIG", "U_AGENT")
    assert len(fake_slack.calls_to("conversations.members")) == 3
    with pytest.raises(FtbotError, match="not a member of that channel"):
        require_member(_client(fake_slack), "G_BIG", "U_CUSTOMER")


def test_a_direct_message_is_readable_only_by_its_members(fake_slack):
    dm = fake_slack.add_channel("D_LEAD", "dm", is_im=True, members=["U_LEAD"])
    require_member(_client(fake_slack), dm["id"], "U_LEAD")
    with pytest.raises(FtbotError, match="not a member"):
        require_member(_client(fake_slack), dm["id"], "U_AGENT")


def test_a_channel_the_bot_cannot_see_asks_for_an_invite(fake_slack):
    fake_slack.add_channel("G_HIDDEN", "hidden", is_private=True, members=["U_AGENT"], bot_member=False)
    with pytest.raises(FtbotError, match="invite me"):
        require_member(_client(fake_slack), "G_HIDDEN", "U_AGENT")


def test_fake_slack_answers_like_slack(fake_slack):
    fake_slack.add_channel("G_LEADS", "leads", is_private=True, members=["U_LEAD"])
    info = _client(fake_slack).conversations_info(channel="G_LEADS")["channel"]
    assert info["is_private"] is True and info["is_channel"] is False and info["is_group"] is True
    assert info["is_member"] is True  # the bot was invited
    public = _client(fake_slack).conversations_info(channel="C_SUPPORT")["channel"]
    assert public["is_private"] is False and public["is_channel"] is True
    members = _client(fake_slack).conversations_members(channel="G_LEADS", limit=1)
    assert members["members"] and members["response_metadata"]["next_cursor"]

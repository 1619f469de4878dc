"""Asking for a draft: the mention, the *Draft a reply* shortcut, `/ft draft <link>`, `/ft drafts on|off`, and who may."""

from __future__ import annotations

import json

from bot.threads import NOT_A_MEMBER
from storage.drafts import channel_drafts_on, list_drafts
from tests.bot.drafts.conftest import CHANNEL, DRAFT_TEXT, Desk
from tests.fixtures.slack_api import app_mention, message_action


def _everything_said(desk: Desk) -> str:
    return json.dumps([c.args for c in desk.fake.calls]) + json.dumps(desk.fake.responses)


def test_the_shortcut_drafts_a_reply_to_that_message_in_its_thread(team: Desk):
    follow_up = team.say("Also: can I get a receipt?", user="U_CUSTOMER", deliver=False)
    team.h.interact(message_action(follow_up, callback_id="ft_draft_message", response_url=team.fake.response_url()))
    team.h.wait()
    [shown] = team.drafts_shown("U_AGENT")
    assert shown["thread_ts"] == team.thread_ts and DRAFT_TEXT in json.dumps(shown["blocks"])
    [draft] = list_drafts(team.h.db)
    assert draft.request_key == f"shortcut:{CHANNEL}:{follow_up['ts']}:U_AGENT" and draft.source_ts == follow_up["ts"]
    assert draft.prompt[-1]["content"].endswith("\n\nAlso: can I get a receipt?")  # one customer turn

    # Asking again for the same message shows the same draft (no second generation).
    team.h.interact(message_action(follow_up, callback_id="ft_draft_message", response_url=team.fake.response_url()))
    team.h.wait()
    assert len(team.drafts_shown("U_AGENT")) == 2 and len(list_drafts(team.h.db)) == 1


def test_the_shortcut_on_an_agents_message_explains_where_to_use_it(team: Desk):
    reply = team.say("We are looking into it.", user="U_AGENT2", deliver=False)
    team.h.interact(message_action(reply, callback_id="ft_draft_message", response_url=team.fake.response_url()))
    team.h.wait()
    assert "not by a customer" in team.fake.ephemerals[-1]["text"] and not list_drafts(team.h.db)


def test_the_command_drafts_a_reply_to_a_linked_message(team: Desk):
    link = team.fake.permalink(CHANNEL, team.thread_ts)
    team.h.command(f"draft {link}", user_id="U_AGENT")
    team.h.wait()
    [answer] = [r for r in team.fake.responses if "ft_draft_send" in json.dumps(r.get("blocks") or [])]
    assert DRAFT_TEXT in json.dumps(answer["blocks"]) and answer["response_type"] == "ephemeral"
    [draft] = list_drafts(team.h.db)
    assert draft.request_key == f"command:{CHANNEL}:{team.thread_ts}:U_AGENT" and draft.thread_ts == team.thread_ts

    team.h.command("draft not-a-link", user_id="U_AGENT")
    team.h.wait()
    assert "Usage: `/ft draft &lt;message link&gt;`" in team.fake.responses[-1]["text"]


def test_a_customer_can_neither_ask_for_nor_see_a_draft(team: Desk, openai_api):
    team.mention(user="U_CUSTOMER")
    assert "Only the support team" in team.fake.ephemerals[-1]["text"] and team.fake.ephemerals[-1]["user"] == "U_CUSTOMER"
    question = team.fake.find_message(CHANNEL, team.thread_ts)
    team.h.interact(message_action(question, user_id="U_CUSTOMER", callback_id="ft_draft_message",
                                   response_url=team.fake.response_url()))
    team.h.command(f"draft {team.fake.permalink(CHANNEL, team.thread_ts)}", user_id="U_CUSTOMER")
    team.h.wait()
    assert sum("Only the support team" in r["text"] for r in team.fake.responses) == 2
    assert not list_drafts(team.h.db) and not openai_api.requests_to("/chat/completions")
    assert DRAFT_TEXT not in _everything_said(team)

    team.mention(user="U_AGENT")  # an agent's draft is shown to the agent only
    assert [e["user"] for e in team.drafts_shown()] == ["U_AGENT"]


def test_a_non_member_cannot_draft_from_a_private_channel(team: Desk, openai_api):
    team.fake.add_channel("G_PRIVATE", "vip-support", is_private=True, members=["U_LEAD", "U_CUSTOMER"])
    secret = team.fake.post_message("G_PRIVATE", "U_CUSTOMER", "My contract number is 77-1234, please cancel it")
    team.h.command(f"draft {team.fake.permalink('G_PRIVATE', secret['ts'])}", user_id="U_AGENT")
    team.h.wait()
    assert NOT_A_MEMBER.split(",")[0] in team.fake.responses[-1]["text"]
    assert not list_drafts(team.h.db) and not openai_api.requests_to("/chat/completions")
    assert "77-1234" not in _everything_said(team)  # nothing read from the channel went anywhere


def test_a_mention_outside_a_thread_says_how_to_ask(team: Desk):
    message = team.fake.post_message(CHANNEL, "U_AGENT", "<@U0FTBOT> draft")
    team.h.event(app_mention("<@U0FTBOT> draft", ts=message["ts"], thread_ts=None), event_id="EvTopLevel")
    team.h.wait()
    assert "inside the customer's thread" in team.fake.ephemerals[-1]["text"] and not list_drafts(team.h.db)


def test_without_roles_anyone_may_ask_and_the_asker_is_the_agent(open_desk: Desk):
    open_desk.say("Which order?", user="U_LEAD", deliver=False)
    open_desk.mention(user="U_LEAD")
    [draft] = list_drafts(open_desk.h.db)
    # The customer is the person the draft answers; everyone else in the thread (here U_LEAD) is the team.
    assert [m["role"] for m in draft.prompt] == ["system", "user"] and draft.requested_by == "U_LEAD"


def test_auto_mode_is_switched_by_trainers_and_shown_to_the_team(team: Desk):
    team.h.command("drafts on", user_id="U_AGENT")
    team.h.wait()
    assert "Only trainers" in team.fake.responses[-1]["text"] and not channel_drafts_on(team.h.db, CHANNEL)
    team.h.command("drafts on", user_id="U_LEAD")
    team.h.wait()
    assert "Auto drafts are *on*" in team.fake.responses[-1]["text"] and channel_drafts_on(team.h.db, CHANNEL)
    team.h.command("drafts", user_id="U_AGENT")
    team.h.wait()
    assert "Auto drafts are *on*" in team.fake.responses[-1]["text"]
    team.h.command("drafts off", user_id="U_LEAD")
    team.h.wait()
    assert "*off*" in team.fake.responses[-1]["text"] and not channel_drafts_on(team.h.db, CHANNEL)
    team.h.command("drafts maybe", user_id="U_LEAD")
    team.h.wait()
    assert "Usage: `/ft drafts [on | off]`" in team.fake.responses[-1]["text"]

"""Message events: auto mode offers a customer's new question's draft to the channel's agents only; other messages
(bots', edits, the team's own, commands to ftbot) get none."""

from __future__ import annotations

import json

from storage.drafts import list_drafts, set_channel_drafts
from tests.bot.drafts.conftest import CHANNEL, DRAFT_TEXT, Desk, message_event


def _auto_on(desk: Desk) -> None:
    set_channel_drafts(desk.h.db, CHANNEL, True)


def _deliver(desk: Desk, event: dict) -> None:
    desk.h.event(event, event_id=desk.next_event_id())
    desk.h.wait()


def test_auto_mode_offers_a_new_question_to_the_channels_agents_only(team: Desk, openai_api):
    _auto_on(team)
    question = team.fake.post_message(CHANNEL, "U_CUSTOMER", "Where is my refund?")
    event = message_event(user="U_CUSTOMER", text="Where is my refund?", ts=question["ts"])
    _deliver(team, event)
    _deliver(team, event)  # delivered again (a retry under a new id): nothing new

    offered = team.drafts_shown()
    # The team in the channel (agents, and the trainer), never the customer or otto (no role).
    assert sorted(e["user"] for e in offered) == ["U_AGENT", "U_AGENT2", "U_LEAD"]
    assert all(e["thread_ts"] == question["ts"] and DRAFT_TEXT in json.dumps(e["blocks"]) for e in offered)
    assert len(openai_api.requests_to("/chat/completions")) == 1  # one generation for everyone
    drafts = list_drafts(team.h.db)
    assert sorted(d.request_key for d in drafts) == [f"auto:{CHANNEL}:{question['ts']}:{agent}"
                                                     for agent in ("U_AGENT", "U_AGENT2", "U_LEAD")]
    assert sum(d.prompt_tokens or 0 for d in drafts) == drafts[-1].prompt_tokens  # its cost is counted once
    everything = json.dumps([c.args for c in team.fake.calls if c.args.get("user") in ("U_CUSTOMER", "U_OTHER")])
    assert DRAFT_TEXT not in everything and not team.thread_posts_by_bot()

    # A customer's reply in the thread is a new question; an agent's is not.
    team.thread_ts = question["ts"]
    team.say("It has been two weeks.", user="U_CUSTOMER")
    team.say("Let me check.", user="U_AGENT")
    assert len(team.drafts_shown()) == 6 and len(openai_api.requests_to("/chat/completions")) == 2


def test_the_first_agent_to_send_answers_for_everyone(team: Desk):
    _auto_on(team)
    question = team.fake.post_message(CHANNEL, "U_CUSTOMER", "Where is my refund?")
    _deliver(team, message_event(user="U_CUSTOMER", text="Where is my refund?", ts=question["ts"]))
    team.thread_ts = question["ts"]
    team.click("ft_draft_send", team.draft_id("U_AGENT"))
    url = team.click("ft_draft_send", team.draft_id("U_AGENT2"), user="U_AGENT2")
    assert "<@U_AGENT> already answered this question" in team.answers(url)[0]["text"]
    assert len(team.thread_posts_by_bot()) == 1


def test_auto_mode_ignores_bots_edits_the_team_and_commands(team: Desk, openai_api):
    _auto_on(team)
    ts = team.fake.next_ts()
    for event in (
        message_event(user="U_CUSTOMER", text="edited", ts=ts, subtype="message_changed"),
        message_event(user="U_CUSTOMER", text="joined", ts=ts, subtype="channel_join"),
        message_event(user="U_SOMEBOT", text="Build passed", ts=ts, bot_id="B_CI"),
        message_event(user="U0FTBOT", text="ftbot's own", ts=ts, bot_id="B0FTBOT"),
        message_event(user="U_AGENT2", text="An agent's announcement", ts=ts),
        message_event(user="U_CUSTOMER", text="<@U0FTBOT> add", ts=ts),
    ):
        _deliver(team, event)
    assert not team.drafts_shown() and not list_drafts(team.h.db) and not openai_api.requests_to("/chat/completions")


def test_auto_mode_is_off_unless_turned_on(team: Desk, openai_api):
    question = team.fake.post_message(CHANNEL, "U_CUSTOMER", "Hello?")
    _deliver(team, message_event(user="U_CUSTOMER", text="Hello?", ts=question["ts"]))
    assert not team.drafts_shown() and not openai_api.requests_to("/chat/completions")


def test_without_roles_the_asker_is_never_offered_a_draft_for_their_question(open_desk: Desk):
    _auto_on(open_desk)
    question = open_desk.fake.post_message(CHANNEL, "U_CUSTOMER", "Can I pay by invoice?")
    _deliver(open_desk, message_event(user="U_CUSTOMER", text="Can I pay by invoice?", ts=question["ts"]))
    assert sorted(e["user"] for e in open_desk.drafts_shown()) == ["U_AGENT", "U_LEAD"]

    # In that thread, the customer is the one who started it: the agent's reply is not a question.
    open_desk.thread_ts = question["ts"]
    open_desk.say("Yes, for yearly plans.", user="U_AGENT")
    assert len(open_desk.drafts_shown()) == 2

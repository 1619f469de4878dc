"""Message events (``message.channels``, ``message.groups``): auto-mode drafts, and an agent's reply after a discard.

Every message event passes through the durable inbox like the others (``bot.inbox``). Messages with a subtype (edits,
joins, bots' posts), bots' messages and messages mentioning ftbot (commands to it, such as `@ftbot draft`) are
left alone. Of the others:

- A reply in a thread where its author discarded a draft recently becomes a preference pair, the reply over the draft
  (``storage.drafts.record_agent_reply`` within ``FTBOT_DRAFT_REPLY_WINDOW_MINUTES``).
- In a channel with auto mode on (``/ft drafts on``), a customer's new question gets one draft, offered privately to
  each of the channel's agents. With roles, customers are people outside the team; without roles, the person who
  started the thread is the customer and everyone else in the channel is offered the draft, never the asker.
"""

from __future__ import annotations

import logging
import time
from datetime import timedelta
from typing import TYPE_CHECKING, Any

from slack_bolt import App, BoltContext
from slack_sdk import WebClient
from slack_sdk.errors import SlackApiError

from bot.drafts.request import MAX_AUTO_AGENTS, DraftRequest, RequestSource, offer_draft
from bot.threads import UserNames, fetch_thread, find_message, slack_to_plain
from storage.drafts import channel_drafts_on, record_agent_reply
from storage.errors import FtbotError

if TYPE_CHECKING:  # bot.app imports every feature (so this module): a type-only import avoids the cycle
    from bot.app import BotContext

log = logging.getLogger(__name__)


def is_person_message(event: dict[str, Any], bot_user_id: str | None) -> bool:
    """A message a person wrote for the conversation: no subtype, not a bot's, not addressed to ftbot."""
    if event.get("subtype") or event.get("bot_id") or not event.get("user") or not event.get("ts"):
        return False
    if bot_user_id and (event["user"] == bot_user_id or f"<@{bot_user_id}>" in (event.get("text") or "")):
        return False
    return True


def _thread_starter(client: WebClient, event: dict[str, Any]) -> str | None:
    """Who started the thread of a reply (Slack sends ``parent_user_id``; else the thread is read)."""
    if event.get("parent_user_id"):
        return str(event["parent_user_id"])
    try:
        root = find_message(fetch_thread(client, event["channel"], event["thread_ts"]), event["thread_ts"])
    except (FtbotError, SlackApiError):
        return None
    return root.get("user") if root else None


def is_customer_question(bot: BotContext, client: WebClient, event: dict[str, Any]) -> bool:
    """Whether a person's message is a customer's question (see the module docstring)."""
    user = event["user"]
    if bot.roles.configured:
        return not bot.roles.is_team(user)
    thread_ts = event.get("thread_ts")
    return not thread_ts or thread_ts == event["ts"] or _thread_starter(client, event) == user


def channel_agents(bot: BotContext, client: WebClient, channel: str, *, asker: str, bot_user_id: str | None) -> list[str]:
    """The channel's members who are offered a draft: the team's (everyone's without roles), never the asker's."""
    agents: list[str] = []
    cursor = None
    while len(agents) < MAX_AUTO_AGENTS:
        kwargs: dict[str, Any] = dict(channel=channel, limit=200)
        if cursor:
            kwargs["cursor"] = cursor
        response = client.conversations_members(**kwargs)
        for member in response.get("members") or []:
            if member in (asker, bot_user_id) or member in agents:
                continue
            if not bot.roles.configured or bot.roles.is_team(member):
                agents.append(member)
        cursor = (response.get("response_metadata") or {}).get("next_cursor")
        if not cursor:
            break
    return agents[:MAX_AUTO_AGENTS]


def offer_auto_drafts(bot: BotContext, client: WebClient, event: dict[str, Any], *, bot_user_id: str | None,
                      received: float) -> None:
    """Auto mode: draft once for the question and offer it to the channel's agents (after the ack)."""
    try:
        agents = channel_agents(bot, client, event["channel"], asker=event["user"], bot_user_id=bot_user_id)
    except SlackApiError as error:
        log.warning("auto drafts in %s: cannot list the channel's members: %s", event["channel"], error.response.get("error"))
        return
    if not agents:
        log.info("auto drafts in %s: no agent in the channel to offer a draft to", event["channel"])
        return
    request = DraftRequest(RequestSource.AUTO, channel=event["channel"], ts=event["ts"], thread_ts=event.get("thread_ts"),
                           agents=tuple(agents), received=received, bot_user_id=bot_user_id)
    offer_draft(bot, client, request)


def register(app: App, bot: BotContext) -> None:
    @app.event("message")
    def on_message(event: dict[str, Any], client: WebClient, context: BoltContext) -> None:
        received = time.monotonic()
        bot_user_id = context.bot_user_id or bot.bot_user_id
        if not is_person_message(event, bot_user_id) or not event.get("channel"):
            return
        thread_ts = event.get("thread_ts")
        if thread_ts and thread_ts != event["ts"]:
            pairs = record_agent_reply(
                bot.db, channel=event["channel"], thread_ts=thread_ts, agent=event["user"],
                text=slack_to_plain(event.get("text") or "", UserNames(client)), ts=event["ts"],
                window=timedelta(minutes=bot.settings.draft_reply_window_minutes))
            if pairs:
                log.info("%s's reply after a discarded draft made %d preference pair(s)", event["user"], len(pairs))
        if channel_drafts_on(bot.db, event["channel"]) and is_customer_question(bot, client, event):
            bot.defer_event(context, offer_auto_drafts, bot, client, event, bot_user_id=bot_user_id, received=received)

"""Asking for a draft and generating it: one pipeline for `@ftbot draft`, the *Draft a reply* shortcut, `/ft draft <link>`
and auto mode.

A request names a Slack message; :func:`offer_draft` (run after the ack, on ``BotContext.work``) reads its thread, turns
it into chat turns exactly as a capture would (``bot.threads.conversation_turns`` and the channel's system prompt),
ending with the customer's question, has the model in use write a reply (``trainers.drafts.generate.DraftService``),
stores it under the request's key (``storage.drafts.create_draft``) and shows it privately to the agent.

Slack may deliver one request several times (an event retried under a new id, two clicks): the request key makes one
draft, and the drafts this process is writing now are remembered, so a second delivery neither generates again nor
shows a second draft. An agent asking again on purpose (the shortcut or the command a second time) sees the same draft.
"""

from __future__ import annotations

import logging
import threading
import time
from dataclasses import dataclass
from enum import StrEnum
from typing import TYPE_CHECKING, Any

from slack_bolt import Respond
from slack_sdk import WebClient
from slack_sdk.errors import SlackApiError

from bot import blocks as bk
from bot.capture import channel_system_prompt
from bot.drafts.models import drafting_model
from bot.drafts.views import decided_message, draft_message, sent_draft_id, what_happened
from bot.threads import (
    SlackMessage,
    UserNames,
    conversation_turns,
    fetch_thread,
    find_message,
    is_bot_message,
    require_member,
    ts_order,
)
from storage.drafts import create_draft, find_draft, get_draft, set_draft_timing
from storage.errors import DraftNotFound, FtbotError
from storage.models import ReplyDraft, stored_id
from trainers.drafts.generate import RUNS_ON_PREM

if TYPE_CHECKING:  # bot.app imports every feature (so this module): a type-only import avoids the cycle
    from bot.app import BotContext

log = logging.getLogger(__name__)

# Auto mode offers one question's draft to at most this many agents (one generation, one stored draft each).
MAX_AUTO_AGENTS = 20
_in_flight_lock = threading.Lock()


class RequestSource(StrEnum):
    """How a draft was asked for; the first part of its request key."""

    MENTION = "mention"  # `@ftbot draft` in the thread: answers the latest customer message above the mention
    SHORTCUT = "shortcut"  # *Draft a reply* on the customer's message
    COMMAND = "command"  # `/ft draft <link to the customer's message>`
    AUTO = "auto"  # auto mode: a new customer question, offered to the channel's agents


@dataclass(frozen=True)
class DraftRequest:
    """One request for a draft: where, for whom, and how to answer."""

    source: RequestSource
    channel: str
    ts: str  # the mention's ts, or the customer's message (shortcut, command, auto)
    thread_ts: str | None  # the thread's root when Slack said it
    agents: tuple[str, ...]
    received: float  # time.monotonic() when the request arrived: latency is measured from here
    bot_user_id: str | None = None
    respond: Respond | None = None  # the command's or shortcut's response_url

    def key(self, agent: str) -> str:
        """What makes the request idempotent (``ReplyDraft.request_key``)."""
        if self.source == RequestSource.MENTION:
            return f"mention:{self.channel}:{self.ts}"
        return f"{self.source}:{self.channel}:{self.ts}:{agent}"

    @property
    def asked_again_shows(self) -> bool:
        """A person repeating the shortcut or command sees their draft again; a retried event or question does not."""
        return self.source in (RequestSource.SHORTCUT, RequestSource.COMMAND)


# ---- the thread as the model sees it ---------------------------------------------------------------------------------
def _with_sent_drafts_as_agents(bot: BotContext, thread: list[SlackMessage]) -> list[SlackMessage]:
    """The thread, with each reply ftbot posted for an agent (Send / Edit…) read as that agent's own message."""
    out = []
    for message in thread:
        draft_id = sent_draft_id(message) if message.get("bot_id") else None
        if draft_id is not None:
            try:
                draft = get_draft(bot.db, draft_id)
            except DraftNotFound:
                draft = None
            if draft is not None and draft.final_text:
                message = {key: value for key, value in message.items() if key not in ("bot_id", "subtype", "app_id")}
                # Escaped as Slack stores text: conversation_turns reads it back to exactly what was posted.
                message.update(user=draft.decided_by or draft.requested_by, text=bk.escape(draft.final_text))
        out.append(message)
    return out


def _mentions_bot(message: SlackMessage, bot_user_id: str | None) -> bool:
    return bool(bot_user_id) and f"<@{bot_user_id}>" in (message.get("text") or "")


def _is_customer(bot: BotContext, user: str | None, agents: tuple[str, ...]) -> bool:
    """With roles, anyone outside the team; without, anyone but the agents asking."""
    if not user:
        return False
    return not bot.roles.is_team(user) if bot.roles.configured else user not in agents


def _source_message(bot: BotContext, request: DraftRequest, thread: list[SlackMessage]) -> SlackMessage:
    """The customer's message the draft answers."""
    if request.source == RequestSource.MENTION:
        before = [m for m in thread if ts_order(m["ts"]) < ts_order(request.ts) and not is_bot_message(m, request.bot_user_id)
                  and not _mentions_bot(m, request.bot_user_id) and (m.get("text") or "").strip()]
        found = next((m for m in reversed(before) if _is_customer(bot, m.get("user"), request.agents)), None)
        if found is None:
            raise FtbotError("I found no customer message above your mention in this thread, so there is nothing to answer.")
        return found
    message = find_message(thread, request.ts)
    if message is None:
        raise FtbotError("I could not find that message in its thread (deleted?), so there is nothing to answer.")
    if is_bot_message(message, request.bot_user_id) or not _is_customer(bot, message.get("user"), request.agents):
        raise FtbotError("That message is not by a customer (it is by your team, by you or by a bot). Ask for a draft "
                         "on the customer's message (*Draft a reply*), or mention `@ftbot draft` in the thread.")
    if not (message.get("text") or "").strip():
        raise FtbotError("That message has no text to answer.")
    return message


def _read_thread(client: WebClient, request: DraftRequest) -> tuple[list[SlackMessage], str]:
    """The request's thread and its root ts (a link to a reply without ?thread_ts= is followed to its parent)."""
    root = request.thread_ts or request.ts
    thread = fetch_thread(client, request.channel, root)
    named = find_message(thread, request.ts)
    if named is not None and named.get("thread_ts") not in (None, root):
        root = named["thread_ts"]
        thread = fetch_thread(client, request.channel, root)
    return thread, root


def draft_prompt(bot: BotContext, client: WebClient, request: DraftRequest,
                 thread: list[SlackMessage]) -> tuple[SlackMessage, list[dict[str, str]]]:
    """(the customer's message, the messages for the model): the system prompt, then the thread up to that message."""
    thread = _with_sent_drafts_as_agents(bot, thread)
    source = _source_message(bot, request, thread)
    customer = source.get("user")
    roles = bot.roles
    turns = conversation_turns(
        thread, until_ts=source["ts"], names=UserNames(client), bot_user_id=request.bot_user_id,
        is_team=(roles.is_team if roles.configured else lambda user: user != customer),
        skip=lambda message: _mentions_bot(message, request.bot_user_id),
    )
    if not turns or turns[-1]["role"] != "user":
        raise FtbotError("That message has no text to answer.")
    return source, [{"role": "system", "content": channel_system_prompt(bot, request.channel)}, *turns]


# ---- the pipeline ---------------------------------------------------------------------------------------------------
def _enter(bot: BotContext, key: str) -> bool:
    with _in_flight_lock:
        if key in bot.drafts_in_flight:
            return False
        bot.drafts_in_flight.add(key)
        return True


def _leave(bot: BotContext, key: str) -> None:
    with _in_flight_lock:
        bot.drafts_in_flight.discard(key)


def offer_draft(bot: BotContext, client: WebClient, request: DraftRequest) -> None:
    """Draft a reply for the request and show it to its agent(s); run after the ack (``bot.defer``)."""
    flight = f"{request.source}:{request.channel}:{request.ts}:{','.join(request.agents)}"
    if not _enter(bot, flight):
        log.info("a draft for %s is being written already; this delivery adds nothing", flight)
        return
    try:
        _offer(bot, client, request)
    except FtbotError as error:
        _tell_failure(bot, client, request, f":warning: {bk.escape(str(error))}")
    except Exception as error:
        log.exception("drafting for %s failed", flight)
        _tell_failure(bot, client, request, f":x: The model could not draft a reply ({bk.escape(type(error).__name__)}). "
                      "Try again in a moment; if it keeps failing, ftbot's log says why (tell your ftbot admin).")
    finally:
        _leave(bot, flight)


def _offer(bot: BotContext, client: WebClient, request: DraftRequest) -> None:
    waiting: list[str] = []
    for agent in request.agents:
        existing = find_draft(bot.db, request.key(agent))
        if existing is None:
            waiting.append(agent)
        elif existing.latency_ms is None or request.asked_again_shows:
            # Shown again: asked again on purpose, or never shown (the process stopped between storing and showing).
            _show(bot, client, request, agent, existing, note=None)
    if not waiting:
        return
    if request.source in (RequestSource.SHORTCUT, RequestSource.COMMAND):
        # A mention was posted in the conversation by its author, and auto mode offers to its members: both are members.
        require_member(client, request.channel, waiting[0])
    model, note = drafting_model(bot)
    thread, root = _read_thread(client, request)
    source, messages = draft_prompt(bot, client, request, thread)
    if model.backend in RUNS_ON_PREM and request.source != RequestSource.AUTO:
        # A local model may take seconds (the first draft loads it): say something is happening.
        _tell(client, request, waiting[0], f":hourglass_flowing_sand: Drafting a reply with *{bk.escape(model.name)}*…",
              thread_ts=root)
    written = bot.draft_service().generate(model, messages)
    if not written.text.strip():
        raise FtbotError(f"{model.name} wrote an empty draft for this thread; nothing to show.")
    for index, agent in enumerate(waiting):
        first = index == 0  # the generation's tokens and cost are counted once, on the first agent's draft
        saved = create_draft(
            bot.db, request_key=request.key(agent), channel=request.channel, thread_ts=root, source_ts=source["ts"],
            requested_by=agent, model=model.name, backend=model.backend, prompt=written.prompt, draft=written.text,
            generation_ms=written.generation_ms, prompt_tokens=written.prompt_tokens if first else None,
            completion_tokens=written.completion_tokens if first else None, cost_usd=written.cost_usd if first else None)
        draft = saved.example
        if not saved.created and draft.latency_ms is not None and not request.asked_again_shows:
            continue  # another delivery (or bot) stored and showed it meanwhile
        if _show(bot, client, request, agent, draft, note=note):
            set_draft_timing(bot.db, stored_id(draft), latency_ms=int((time.monotonic() - request.received) * 1000))


def _show(bot: BotContext, client: WebClient, request: DraftRequest, agent: str, draft: ReplyDraft, *,
          note: str | None) -> bool:
    """Show the draft privately to ``agent`` (a decided one says what became of it); False when Slack refused."""
    if draft.outcome is None:
        text, blocks = draft_message(draft, note=note)
    else:
        _text, decided = decided_message(draft, reply_window_minutes=bot.settings.draft_reply_window_minutes)
        text = what_happened(draft, expire_hours=bot.settings.draft_expire_hours)
        blocks = [bk.section(text), *decided[1:]]
    return _tell(client, request, agent, text, blocks=blocks, thread_ts=draft.thread_ts)


def _tell(client: WebClient, request: DraftRequest, agent: str, text: str, *, blocks: list[bk.Block] | None = None,
          thread_ts: str | None = None) -> bool:
    """Say something to ``agent`` only: where the command was typed, else as an ephemeral message in the thread."""
    if request.source == RequestSource.COMMAND and request.respond is not None:
        try:
            request.respond(text=bk.fallback(text), blocks=blocks or [bk.section(text)], response_type="ephemeral",
                            replace_original=False)
            return True
        except Exception as error:  # the response_url expired (30 min) or was used up (5 answers): the thread then
            log.info("the command's response_url refused the draft (%s); posting it in the thread", error)
    try:
        client.chat_postEphemeral(channel=request.channel, user=agent, text=bk.fallback(text), blocks=blocks,
                                  thread_ts=thread_ts or request.thread_ts or request.ts)
        return True
    except SlackApiError as error:
        log.warning("cannot show %s a draft in %s: %s", agent, request.channel, error.response.get("error"))
    if request.respond is not None:  # e.g. user_not_in_channel: a public channel they never joined
        try:
            request.respond(text=bk.fallback(text), blocks=blocks, response_type="ephemeral", replace_original=False)
            return True
        except Exception as error:
            log.warning("cannot answer %s through the response_url either: %s", agent, error)
    return False


def _tell_failure(bot: BotContext, client: WebClient, request: DraftRequest, text: str) -> None:
    """Tell the agent who asked why there is no draft (auto mode fails quietly: nobody asked)."""
    if request.source == RequestSource.AUTO:
        log.warning("auto draft in %s for %s failed: %s", request.channel, request.ts, text)
        return
    _tell(client, request, request.agents[0], text)


def mention_request(event: dict[str, Any], *, bot_user_id: str | None, received: float) -> DraftRequest:
    """The request of an `@ftbot draft` mention (in a thread: checked by the caller)."""
    return DraftRequest(RequestSource.MENTION, channel=event["channel"], ts=event["ts"], thread_ts=event.get("thread_ts"),
                        agents=(event["user"],), received=received, bot_user_id=bot_user_id)

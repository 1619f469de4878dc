"""Reading Slack threads as conversations: message links, the thread's messages in order, and their turns.

Capturing a reply (``bot.capture``) and adding an evaluation question (``bot.evaluation.questions``) both read
a thread up to one message and turn it into chat turns; the rules for that live here once: messages oldest
first, bots' messages skipped, Slack markup turned into plain text with people's names, and consecutive
messages by one side joined into one turn.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from decimal import Decimal
from typing import TYPE_CHECKING, Any
from urllib.parse import parse_qs, urlsplit

from slack_sdk import WebClient
from slack_sdk.errors import SlackApiError

from storage.errors import FtbotError

if TYPE_CHECKING:  # bot.app imports every feature (so this module): a type-only import avoids the cycle
    from bot.app import BotContext

# A message as the Web API returns it, and a chat turn ({"role", "content"}).
SlackMessage = dict[str, Any]
Turn = dict[str, str]

_PERMALINK = re.compile(r"https?://[\w.-]+\.slack\.com/archives/(?P<channel>[CDG][A-Z0-9_]+)/p(?P<ts>\d{16})(?P<rest>\S*)")
_MARKUP = re.compile(r"<([^<>]+)>")
# Subtypes of messages no person wrote for the conversation.
_BOT_SUBTYPES = {"bot_message", "channel_join", "channel_leave", "thread_broadcast_bot"}


def _link_text(text: str) -> str:
    """The URL inside a link as Slack shows it (``<https://…|label>``)."""
    return text.strip().strip("<>").split("|")[0]


def is_permalink(text: str) -> bool:
    """Whether `text` is (or starts with) a Slack message link."""
    return _PERMALINK.search(_link_text(text)) is not None


def parse_permalink(text: str) -> tuple[str, str, str | None]:
    """``(channel, ts, thread_ts)`` from a message link as Slack shows it (``<https://…|label>`` accepted)."""
    match = _PERMALINK.search(_link_text(text).replace("&amp;", "&"))
    if not match:
        raise FtbotError(
            "That is not a Slack message link. Use ⋮ → *Copy link* on the reply and run `/ft add <link>` "
            "(for thread replies the link ends with `?thread_ts=…`)"
        )
    digits = match["ts"]
    ts = f"{digits[:10]}.{digits[10:]}"
    query = parse_qs(urlsplit(match["rest"] or "").query) if "?" in match["rest"] else {}
    thread_ts = query["thread_ts"][0] if query.get("thread_ts") else None
    return match["channel"], ts, thread_ts


def ts_order(ts: str) -> Decimal:
    """A message ts as a number, to order and compare messages (as text, "9.1" would sort after "10.0")."""
    return Decimal(ts)


class UserNames:
    """User ID → display name, from users.info, cached for one conversation (the ID itself when Slack cannot say)."""

    def __init__(self, client: WebClient):
        self.client = client
        self._cache: dict[str, str] = {}

    def __call__(self, user_id: str) -> str:
        if user_id not in self._cache:
            name = user_id
            try:
                user = self.client.users_info(user=user_id).get("user") or {}
                profile = user.get("profile") or {}
                name = profile.get("display_name") or user.get("real_name") or user.get("name") or user_id
            except SlackApiError:
                pass
            self._cache[user_id] = name
        return self._cache[user_id]


def slack_to_plain(text: str, name_of: Callable[[str], str] = lambda user_id: user_id) -> str:
    """Slack's message markup → the plain text a model should learn from."""

    def replace(match: re.Match[str]) -> str:
        inner = match.group(1)
        target, _, label = inner.partition("|")
        if target.startswith("@"):
            return "@" + (label or name_of(target[1:]))
        if target.startswith("#"):
            return "#" + (label or target[1:])
        if target.startswith("!subteam^"):
            return label or "@team"
        if target.startswith("!"):
            return "@" + (label or target[1:].split("^")[0])
        if target.startswith("mailto:"):
            return label or target[7:]
        if label and label != target:
            return f"{label} ({target})"
        return target

    plain = _MARKUP.sub(replace, text or "")
    return plain.replace("&lt;", "<").replace("&gt;", ">").replace("&amp;", "&").strip()


def without_user_mentions(text: str) -> str:
    """The text with its ``<@U…>`` mentions removed (the rest of Slack's markup kept)."""
    return _MARKUP.sub(lambda match: "" if match.group(1).startswith("@") else match.group(0), text or "")


def is_bot_message(message: SlackMessage, bot_user_id: str | None) -> bool:
    """Written by a bot (ftbot included) or by Slack itself (joins, leaves): never a turn of the conversation."""
    return bool(message.get("bot_id") or message.get("subtype") in _BOT_SUBTYPES
                or (bot_user_id and message.get("user") == bot_user_id))


def resolve_bot_user_id(client: WebClient, bot: BotContext) -> str | None:
    """ftbot's own user ID (auth.test, asked once per process), to recognise its messages and reactions."""
    if bot.bot_user_id is None:
        try:
            bot.bot_user_id = client.auth_test().get("user_id")
        except SlackApiError:
            pass  # asked again next time
    return bot.bot_user_id


def fetch_thread(client: WebClient, channel: str, root_ts: str) -> list[SlackMessage]:
    """Every message of a thread, oldest first (follows pagination)."""
    messages: list[SlackMessage] = []
    cursor = None
    while True:
        kwargs: dict[str, Any] = dict(channel=channel, ts=root_ts, limit=200)
        if cursor:
            kwargs["cursor"] = cursor
        try:
            response = client.conversations_replies(**kwargs)
        except SlackApiError as exc:
            error = exc.response.get("error")
            if error in ("not_in_channel", "channel_not_found"):
                raise FtbotError("I cannot read that channel: invite me first with `/invite @ftbot`, then try again") from None
            if error == "thread_not_found":
                raise FtbotError("That message no longer exists (deleted?), so there is nothing to capture") from None
            raise
        messages.extend(response.get("messages") or [])
        cursor = (response.get("response_metadata") or {}).get("next_cursor")
        if not cursor or not response.get("has_more"):
            break
    messages.sort(key=lambda m: ts_order(m["ts"]))
    return messages


NOT_A_MEMBER = ("You are not a member of that channel, so I will not read it for you. Ask someone in it to capture "
                "the reply, or ask to join the channel")


def require_member(client: WebClient, channel: str, user: str) -> None:
    """Refuse (``FtbotError``) unless `user` may read `channel`: any workspace member reads a public channel;
    a private channel, group or direct message only its members (``conversations.members``, every page).

    The bot can read every conversation it was invited to; this keeps it from reading one for someone who cannot.
    Call it before reading a conversation a user named by link. When Slack cannot say, the answer is no.
    """
    try:
        info = client.conversations_info(channel=channel).get("channel") or {}
        if info.get("is_channel") and not info.get("is_private") and not info.get("is_im") and not info.get("is_mpim"):
            return
        cursor = None
        while True:
            kwargs: dict[str, Any] = dict(channel=channel, limit=200)
            if cursor:
                kwargs["cursor"] = cursor
            response = client.conversations_members(**kwargs)
            if user in (response.get("members") or []):
                return
            cursor = (response.get("response_metadata") or {}).get("next_cursor")
            if not cursor:
                break
    except SlackApiError as exc:
        error = exc.response.get("error")
        if error in ("not_in_channel", "channel_not_found"):
            raise FtbotError("I cannot read that channel: invite me first with `/invite @ftbot`, then try again") from None
        raise FtbotError(f"I could not check that you are a member of that channel (Slack said `{error}`), "
                         "so I will not read it") from None
    raise FtbotError(NOT_A_MEMBER)


def find_message(thread: list[SlackMessage], ts: str) -> SlackMessage | None:
    return next((message for message in thread if message["ts"] == ts), None)


def conversation_turns(thread: list[SlackMessage], *, until_ts: str, include_until: bool = True,
                       is_team: Callable[[str | None], bool], names: Callable[[str], str], bot_user_id: str | None,
                       skip: Callable[[SlackMessage], bool] = lambda message: False) -> list[Turn]:
    """The thread's chat turns up to the message `until_ts` (included unless `include_until` is False).

    Messages by the team (`is_team` of their author) are assistant turns, the others user turns; bots' messages,
    messages `skip` names and messages without text are left out, and consecutive messages by one side are one turn.
    """
    turns: list[Turn] = []
    until = ts_order(until_ts)
    for message in thread:
        position = ts_order(message["ts"])
        if position > until or (not include_until and position == until):
            break
        if is_bot_message(message, bot_user_id) or skip(message):
            continue
        role = "assistant" if is_team(message.get("user")) else "user"
        text = slack_to_plain(message.get("text") or "", names)
        if not text:
            continue
        if turns and turns[-1]["role"] == role:
            turns[-1]["content"] += "\n\n" + text  # consecutive messages by one side are one turn
        else:
            turns.append({"role": role, "content": text})
    return turns

"""The in-memory Slack workspace behind the fake Web API (``bot.console.fake_slack.FakeSlack``).

Just enough state for the real ``slack_sdk`` client and the real Bolt app: users and user groups, channels with
their messages and threads, modal and App Home views, reactions, uploaded files, ephemeral messages and
``response_url`` replies. Tests and the console arrange a workspace with ``add_user``/``add_channel``/``post_message``
and read what the bot did from these attributes.
"""

from __future__ import annotations

import itertools
import secrets
import threading
import time
from typing import Any


class SlackWorkspace:
    """One fake workspace: its team, its bot user, and what Slack would store for them."""

    def __init__(
        self,
        *,
        team_id: str = "T0FTBOT",
        team_domain: str = "ftbot-demo",
        bot_user_id: str = "U0FTBOT",
        bot_id: str = "B0FTBOT",
    ):
        self.team_id = team_id
        self.team_domain = team_domain
        self.bot_user_id = bot_user_id
        self.bot_id = bot_id
        self.users: dict[str, dict[str, Any]] = {}
        self.usergroups: dict[str, list[str]] = {}
        self.channels: dict[str, dict[str, Any]] = {}
        self.views: dict[str, dict[str, Any]] = {}
        self.home_views: dict[str, dict[str, Any]] = {}
        self.files: dict[str, dict[str, Any]] = {}
        self.ephemerals: list[dict[str, Any]] = []
        self.responses: list[dict[str, Any]] = []
        self.reactions: dict[tuple[str, str], list[dict[str, Any]]] = {}
        self._used_triggers: set[str] = set()
        self._lock = threading.RLock()
        self._ids = itertools.count(1)
        self._last_ts = 0.0
        self.add_user(bot_user_id, "ftbot", is_bot=True)

    def add_user(self, user_id: str, name: str, *, is_bot: bool = False, real_name: str | None = None) -> dict[str, Any]:
        user = {"id": user_id, "team_id": self.team_id, "name": name, "real_name": real_name or name, "is_bot": is_bot,
                "profile": {"display_name": name, "real_name": real_name or name}}
        with self._lock:
            self.users[user_id] = user
        return user

    def add_usergroup(self, group_id: str, members: list[str]) -> None:
        with self._lock:
            self.usergroups[group_id] = list(members)

    def add_channel(self, channel_id: str, name: str, *, is_private: bool = False, is_im: bool | None = None,
                    members: list[str] | None = None, bot_member: bool = True) -> dict[str, Any]:
        """A channel (public unless `is_private`; a ``D…`` id is a direct message) with its `members`, the bot
        among them unless `bot_member` is False (then, as in Slack, the bot cannot see a private one at all)."""
        is_im = channel_id.startswith("D") if is_im is None else is_im
        with self._lock:
            return self.channels.setdefault(channel_id, {
                "id": channel_id, "name": name, "messages": [], "is_private": is_private or is_im, "is_im": is_im,
                "members": [*(members or []), *([self.bot_user_id] if bot_member else [])],
            })

    def channel_info(self, channel_id: str) -> dict[str, Any]:
        """The channel object of ``conversations.info``: its kind as Slack describes it, and whether the bot is in it.

        Slack: private channels made before March 2021 (ids ``G…``) say ``is_group`` instead of ``is_channel``.
        """
        with self._lock:
            chan = self.channels[channel_id]
            private, im = chan.get("is_private", False), chan.get("is_im", False)
            group = private and not im and channel_id.startswith("G")
            return {"id": channel_id, "name": chan["name"], "is_channel": not im and not group, "is_group": group,
                    "is_im": im, "is_mpim": False, "is_private": private,
                    "is_member": self.bot_user_id in chan.get("members", [self.bot_user_id])}

    def next_ts(self) -> str:
        with self._lock:
            self._last_ts = max(time.time(), self._last_ts + 0.000001)
            return f"{self._last_ts:.6f}"

    def post_message(self, channel: str, user: str | None, text: str, *, thread_ts: str | None = None,
                     blocks: list[Any] | None = None, bot: bool = False) -> dict[str, Any]:
        """Add a message to a channel as a person (the console's customer/agent) or as the bot."""
        with self._lock:
            chan = self.channels.get(channel) or self.add_channel(channel, channel.lower())
            ts = self.next_ts()
            message: dict[str, Any] = {"type": "message", "ts": ts, "text": text, "team": self.team_id}
            if bot:
                message.update(user=self.bot_user_id, bot_id=self.bot_id, app_id="A0FTBOT")
            elif user:
                message["user"] = user
            if blocks:
                message["blocks"] = blocks
            if thread_ts:
                message["thread_ts"] = thread_ts
                parent = self.find_message(channel, thread_ts)
                if parent is not None:
                    parent["thread_ts"] = thread_ts
                    parent["reply_count"] = parent.get("reply_count", 0) + 1
            chan["messages"].append(message)
            return message

    def find_message(self, channel: str, ts: str) -> dict[str, Any] | None:
        with self._lock:
            for message in self.channels.get(channel, {}).get("messages", []):
                if message["ts"] == ts:
                    return message
        return None

    def thread(self, channel: str, thread_ts: str) -> list[dict[str, Any]]:
        """The parent and its replies, oldest first (what ``conversations.replies`` returns)."""
        with self._lock:
            messages = self.channels.get(channel, {}).get("messages", [])
            return [m for m in messages if m["ts"] == thread_ts or m.get("thread_ts") == thread_ts]

    def add_reaction(self, channel: str, ts: str, name: str, user: str) -> bool:
        """`user` reacts with :`name`: on a message; False when they already had that reaction (Slack keeps one)."""
        with self._lock:
            entries = self.reactions.setdefault((channel, ts), [])
            if any(e["name"] == name and e["user"] == user for e in entries):
                return False
            entries.append({"name": name, "user": user})
            return True

    def remove_reaction(self, channel: str, ts: str, name: str, user: str) -> bool:
        """Remove only `user`'s :`name`: (their other reactions and other people's stay); False when there was none."""
        with self._lock:
            entries = self.reactions.get((channel, ts), [])
            kept = [e for e in entries if not (e["name"] == name and e["user"] == user)]
            if len(kept) == len(entries):
                return False
            self.reactions[(channel, ts)] = kept
            return True

    def permalink(self, channel: str, ts: str, thread_ts: str | None = None) -> str:
        link = f"https://{self.team_domain}.slack.com/archives/{channel}/p{ts.replace('.', '')}"
        if thread_ts and thread_ts != ts:
            link += f"?thread_ts={thread_ts}&cid={channel}"
        return link

    def new_trigger_id(self) -> str:
        return f"{next(self._ids)}.{secrets.token_hex(6)}"

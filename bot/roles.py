"""Who may do what, from the role settings (user IDs or user-group IDs).

With no role configured at all, everyone may do everything and every capture is approved at once:
a small team can start without setup. User groups (``S…``) are expanded with ``usergroups.users.list``
and cached for a few minutes (the API is rate limited and membership changes rarely).
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Iterable

from slack_sdk import WebClient
from slack_sdk.errors import SlackApiError

from storage.config import Settings

log = logging.getLogger(__name__)

GROUP_CACHE_SECONDS = 300.0


def _is_group(entry: str) -> bool:
    return entry.startswith("S")


class Roles:
    """Role checks. ``client`` is needed only when a role names a user group."""

    def __init__(self, settings: Settings, client: WebClient | None = None, *, cache_seconds: float = GROUP_CACHE_SECONDS):
        self.settings = settings
        self.client = client
        self._cache_seconds = cache_seconds
        self._groups: dict[str, tuple[float, frozenset[str]]] = {}
        self._lock = threading.Lock()

    @property
    def configured(self) -> bool:
        """True when any capture/review/train role is set (voters alone do not gate capture)."""
        s = self.settings
        return bool(s.agents or s.reviewers or s.trainers or s.admins)

    def _group_members(self, group_id: str) -> frozenset[str]:
        now = time.monotonic()
        with self._lock:
            cached = self._groups.get(group_id)
            if cached and now - cached[0] < self._cache_seconds:
                return cached[1]
        members: frozenset[str] = frozenset()
        if self.client is not None:
            try:
                members = frozenset(self.client.usergroups_users_list(usergroup=group_id).get("users") or [])
            except SlackApiError as exc:
                # Fail closed: an unreadable group grants nothing (usergroups:read missing, group deleted).
                log.warning("cannot read user group %s: %s", group_id, exc.response.get("error"))
        with self._lock:
            self._groups[group_id] = (now, members)
        return members

    def _in(self, user: str | None, entries: Iterable[str]) -> bool:
        if not user:
            return False
        for entry in entries:
            if entry == user:
                return True
            if _is_group(entry) and user in self._group_members(entry):
                return True
        return False

    def members(self, entries: Iterable[str]) -> list[str]:
        """Expand a role list to user IDs (groups resolved), in order, without duplicates."""
        seen: list[str] = []
        for entry in entries:
            for user in sorted(self._group_members(entry)) if _is_group(entry) else [entry]:
                if user not in seen:
                    seen.append(user)
        return seen

    # The checks. Admins may do everything.
    def is_admin(self, user: str | None) -> bool:
        if not self.configured:
            return bool(user)
        return self._in(user, self.settings.admins)

    def is_team(self, user: str | None) -> bool:
        """On the support team (agents, reviewers, trainers, admins): their messages are ``assistant`` turns."""
        s = self.settings
        return self._in(user, (*s.agents, *s.reviewers, *s.trainers, *s.admins))

    def may_capture(self, user: str | None) -> bool:
        return (not self.configured and bool(user)) or self.is_team(user)

    def may_review(self, user: str | None) -> bool:
        if not self.configured:
            return bool(user)
        return self._in(user, (*self.settings.reviewers, *self.settings.admins))

    def may_train(self, user: str | None) -> bool:
        if not self.configured:
            return bool(user)
        return self._in(user, (*self.settings.trainers, *self.settings.admins))

    def may_vote(self, user: str | None) -> bool:
        if not self.settings.voters:
            return bool(user)
        return self._in(user, (*self.settings.voters, *self.settings.admins))

    def capture_status(self, user: str | None) -> str:
        """Status of a new capture: approved when no roles are configured, else pending review."""
        return "approved" if not self.configured else "pending"

    def reviewers_text(self) -> str:
        """``<@U1>, <!subteam^S2>`` for the home tab; "everyone" when no roles are configured."""
        s = self.settings
        entries = (*s.reviewers, *s.admins)
        if not self.configured:
            return "everyone (no roles configured: captures are approved at once)"
        if not entries:
            return "nobody yet: set FTBOT_REVIEWERS"
        return ", ".join(f"<!subteam^{e}>" if _is_group(e) else f"<@{e}>" for e in dict.fromkeys(entries))

"""The Web API methods of the fake Slack: each answers with Slack's documented response shape.

``WebApiMethods.call_method("chat.postMessage", args)`` runs ``_api_chat_postMessage(args)`` against the in-memory
workspace (``bot.console.workspace``); an unknown method or a Slack error is ``{"ok": False, "error": ...}``.
The HTTP server that receives the requests is ``bot.console.fake_slack.FakeSlack``.
"""

from __future__ import annotations

import secrets
from typing import Any

from bot.console.workspace import SlackWorkspace


class WebApiMethods(SlackWorkspace):
    """Slack's Web API methods over the workspace state (only those the bot and its tests use)."""

    @property
    def url(self) -> str:
        """Where the API is served (upload URLs point there): the server says (``FakeSlack.url``)."""
        raise NotImplementedError

    def call_method(self, method: str, args: dict[str, Any]) -> dict[str, Any]:
        """Slack's answer to the Web API ``method`` called with ``args``."""
        handler = getattr(self, "_api_" + method.replace(".", "_"), None)
        if handler is None:
            return {"ok": False, "error": "unknown_method"}
        try:
            answer: dict[str, Any] = handler(args)
        except _ApiError as exc:
            return {"ok": False, "error": exc.error}
        return answer

    def _api_api_test(self, args: dict[str, Any]) -> dict[str, Any]:
        return {"ok": True, "args": args}

    def _api_auth_test(self, args: dict[str, Any]) -> dict[str, Any]:
        return {"ok": True, "url": f"https://{self.team_domain}.slack.com/", "team": self.team_domain, "user": "ftbot",
                "team_id": self.team_id, "user_id": self.bot_user_id, "bot_id": self.bot_id, "is_enterprise_install": False}

    def _channel(self, args: dict[str, Any], key: str = "channel") -> dict[str, Any]:
        channel = args.get(key)
        if not channel:
            raise _ApiError("channel_not_found")
        with self._lock:
            chan = self.channels.get(channel)
            if chan is None:
                if channel.startswith(("C", "G", "D")):
                    chan = self.add_channel(channel, channel.lower())
                else:
                    raise _ApiError("channel_not_found")
        return chan

    def _api_chat_postMessage(self, args: dict[str, Any]) -> dict[str, Any]:
        chan = self._channel(args)
        if not args.get("text") and not args.get("blocks"):
            raise _ApiError("no_text")
        message = self.post_message(chan["id"], None, args.get("text") or "", thread_ts=args.get("thread_ts"),
                                    blocks=args.get("blocks"), bot=True)
        return {"ok": True, "channel": chan["id"], "ts": message["ts"], "message": message}

    def _api_chat_postEphemeral(self, args: dict[str, Any]) -> dict[str, Any]:
        chan = self._channel(args)
        if not args.get("user"):
            raise _ApiError("user_not_found")
        with self._lock:
            self.ephemerals.append(dict(args))
        return {"ok": True, "message_ts": self.next_ts(), "channel": chan["id"]}

    def _api_chat_update(self, args: dict[str, Any]) -> dict[str, Any]:
        chan = self._channel(args)
        message = self.find_message(chan["id"], args.get("ts") or "")
        if message is None:
            raise _ApiError("message_not_found")
        with self._lock:
            message["text"] = args.get("text", message.get("text", ""))
            if "blocks" in args:
                message["blocks"] = args["blocks"]
            message["edited"] = {"user": self.bot_user_id, "ts": self.next_ts()}
        return {"ok": True, "channel": chan["id"], "ts": message["ts"], "text": message["text"], "message": message}

    def _api_chat_delete(self, args: dict[str, Any]) -> dict[str, Any]:
        chan = self._channel(args)
        with self._lock:
            before = len(chan["messages"])
            chan["messages"] = [m for m in chan["messages"] if m["ts"] != args.get("ts")]
            if len(chan["messages"]) == before:
                raise _ApiError("message_not_found")
        return {"ok": True, "channel": chan["id"], "ts": args.get("ts")}

    def _api_chat_getPermalink(self, args: dict[str, Any]) -> dict[str, Any]:
        chan = self._channel(args)
        message = self.find_message(chan["id"], args.get("message_ts") or "")
        if message is None:
            raise _ApiError("message_not_found")
        thread_ts = message.get("thread_ts")
        return {"ok": True, "channel": chan["id"], "permalink": self.permalink(chan["id"], message["ts"], thread_ts)}

    def _api_conversations_replies(self, args: dict[str, Any]) -> dict[str, Any]:
        chan = self._visible_channel(args)
        ts = args.get("ts") or ""
        parent = self.find_message(chan["id"], ts)
        if parent is None:
            raise _ApiError("thread_not_found")
        root = parent.get("thread_ts") or ts
        messages = self.thread(chan["id"], root) if root == ts else [parent]
        return {"ok": True, "messages": [dict(m) for m in messages], "has_more": False,
                "response_metadata": {"next_cursor": ""}}

    def _api_conversations_history(self, args: dict[str, Any]) -> dict[str, Any]:
        chan = self._visible_channel(args)
        with self._lock:
            top = [dict(m) for m in chan["messages"] if m.get("thread_ts") in (None, m["ts"])]
        return {"ok": True, "messages": list(reversed(top)), "has_more": False, "response_metadata": {"next_cursor": ""}}

    def _visible_channel(self, args: dict[str, Any]) -> dict[str, Any]:
        """The channel, unless it is private and the bot is not in it: Slack then says it does not exist."""
        chan = self._channel(args)
        info = self.channel_info(chan["id"])
        if info["is_private"] and not info["is_member"]:
            raise _ApiError("channel_not_found")
        return chan

    def _api_conversations_info(self, args: dict[str, Any]) -> dict[str, Any]:
        chan = self._visible_channel(args)
        return {"ok": True, "channel": self.channel_info(chan["id"])}

    def _api_conversations_members(self, args: dict[str, Any]) -> dict[str, Any]:
        """User IDs in the conversation, ``limit`` at a time (Slack's default 100), with an opaque ``next_cursor``."""
        chan = self._visible_channel(args)
        limit = int(args.get("limit") or 100)
        start = int(args.get("cursor") or 0)
        with self._lock:
            members = list(chan.get("members", []))
        page = members[start:start + limit]
        after = start + limit if start + limit < len(members) else None
        return {"ok": True, "members": page, "response_metadata": {"next_cursor": str(after) if after else ""}}

    def _api_conversations_join(self, args: dict[str, Any]) -> dict[str, Any]:
        chan = self._channel(args)
        with self._lock:
            if self.bot_user_id not in chan.setdefault("members", []):
                chan["members"].append(self.bot_user_id)
        return self._api_conversations_info(args)

    def _api_conversations_open(self, args: dict[str, Any]) -> dict[str, Any]:
        users = str(args.get("users") or "")
        if not users:
            raise _ApiError("users_list_not_supplied")
        user = users.split(",")[0]
        chan = self.add_channel("D" + user.lstrip("UW"), "dm", is_im=True, members=[user])
        return {"ok": True, "channel": {"id": chan["id"]}}

    def _new_view(self, view: object, extra: dict[str, Any]) -> dict[str, Any]:
        if not isinstance(view, dict) or "type" not in view:
            raise _ApiError("invalid_arguments")
        blocks = view.get("blocks") or []
        if len(blocks) > 100:
            raise _ApiError("invalid_arguments")
        if len(view.get("private_metadata") or "") > 3000:
            raise _ApiError("invalid_arguments")
        stored = {**view, "id": "V" + secrets.token_hex(5).upper(), "team_id": self.team_id, "hash": secrets.token_hex(8),
                  "state": {"values": {}}, "app_id": "A0FTBOT", "bot_id": self.bot_id, **extra}
        return stored

    def _api_views_open(self, args: dict[str, Any]) -> dict[str, Any]:
        trigger = args.get("trigger_id") or ""
        with self._lock:
            if not trigger or trigger in self._used_triggers:
                raise _ApiError("invalid_trigger_id" if not trigger else "expired_trigger_id")
            self._used_triggers.add(trigger)
            view = self._new_view(args.get("view"), {"root_view_id": None, "previous_view_id": None})
            view["root_view_id"] = view["id"]
            self.views[view["id"]] = view
        return {"ok": True, "view": view}

    def _api_views_push(self, args: dict[str, Any]) -> dict[str, Any]:
        return self._api_views_open(args)

    def _api_views_update(self, args: dict[str, Any]) -> dict[str, Any]:
        with self._lock:
            current = self.views.get(args.get("view_id") or "")
            if current is None and args.get("external_id"):
                current = next((v for v in self.views.values() if v.get("external_id") == args["external_id"]), None)
            if current is None:
                raise _ApiError("not_found")
            if args.get("hash") and args["hash"] != current["hash"]:
                raise _ApiError("hash_conflict")
            view = self._new_view(args.get("view"), {})
            view.update(id=current["id"], root_view_id=current.get("root_view_id"))
            self.views[current["id"]] = view
        return {"ok": True, "view": view}

    def _api_views_publish(self, args: dict[str, Any]) -> dict[str, Any]:
        user = args.get("user_id")
        if not user:
            raise _ApiError("invalid_arguments")
        view = self._new_view(args.get("view"), {})
        with self._lock:
            self.home_views[user] = view
        return {"ok": True, "view": view}

    def _api_reactions_add(self, args: dict[str, Any]) -> dict[str, Any]:
        channel, ts = args.get("channel") or "", args.get("timestamp") or ""
        if self.find_message(channel, ts) is None:
            raise _ApiError("message_not_found")
        if not self.add_reaction(channel, ts, args.get("name") or "", self.bot_user_id):
            raise _ApiError("already_reacted")
        return {"ok": True}

    def _api_reactions_remove(self, args: dict[str, Any]) -> dict[str, Any]:
        channel, ts = args.get("channel") or "", args.get("timestamp") or ""
        if not self.remove_reaction(channel, ts, args.get("name") or "", self.bot_user_id):
            raise _ApiError("no_reaction")
        return {"ok": True}

    def _api_reactions_get(self, args: dict[str, Any]) -> dict[str, Any]:
        key = (args.get("channel") or "", args.get("timestamp") or "")
        message = self.find_message(*key)
        if message is None:
            raise _ApiError("message_not_found")
        grouped: dict[str, list[str]] = {}
        for entry in self.reactions.get(key, []):
            grouped.setdefault(entry["name"], []).append(entry["user"])
        reactions = [{"name": n, "users": u, "count": len(u)} for n, u in grouped.items()]
        return {"ok": True, "type": "message", "channel": key[0], "message": {**message, "reactions": reactions}}

    def _api_users_info(self, args: dict[str, Any]) -> dict[str, Any]:
        user = self.users.get(args.get("user") or "")
        if user is None:
            raise _ApiError("user_not_found")
        return {"ok": True, "user": user}

    def _api_users_list(self, args: dict[str, Any]) -> dict[str, Any]:
        return {"ok": True, "members": list(self.users.values()), "response_metadata": {"next_cursor": ""}}

    def _api_usergroups_users_list(self, args: dict[str, Any]) -> dict[str, Any]:
        group = self.usergroups.get(args.get("usergroup") or "")
        if group is None:
            raise _ApiError("no_such_subteam")
        return {"ok": True, "users": list(group)}

    def _api_files_getUploadURLExternal(self, args: dict[str, Any]) -> dict[str, Any]:
        if not args.get("filename") or not str(args.get("length") or "").isdigit():
            raise _ApiError("invalid_arguments")
        file_id = "F" + secrets.token_hex(5).upper()
        with self._lock:
            self.files[file_id] = {"id": file_id, "name": args["filename"], "length": int(args["length"]),
                                   "content": None, "completed": False}
        return {"ok": True, "upload_url": f"{self.url}upload/{file_id}", "file_id": file_id}

    def store_upload(self, file_id: str, raw: bytes) -> bytes:
        """The file's bytes, sent to the upload URL ``files.getUploadURLExternal`` gave; the upload server's answer."""
        with self._lock:
            entry = self.files.get(file_id)
            if entry is None:
                return b"unknown file"
            entry["content"] = raw
        return b"OK - " + str(len(raw)).encode()

    def _api_files_completeUploadExternal(self, args: dict[str, Any]) -> dict[str, Any]:
        requested = args.get("files")
        if not isinstance(requested, list) or not requested:
            raise _ApiError("invalid_arguments")
        done = []
        with self._lock:
            for item in requested:
                entry = self.files.get(item.get("id", ""))
                if entry is None or entry["content"] is None:
                    raise _ApiError("file_not_found")
                entry.update(title=item.get("title") or entry["name"], completed=True, channel=args.get("channel_id"),
                             thread_ts=args.get("thread_ts"), initial_comment=args.get("initial_comment"))
                done.append({"id": entry["id"], "name": entry["name"], "title": entry["title"], "size": len(entry["content"]),
                             "permalink": f"https://{self.team_domain}.slack.com/files/{self.bot_user_id}/{entry['id']}"})
        return {"ok": True, "files": done}

    def _api_files_info(self, args: dict[str, Any]) -> dict[str, Any]:
        entry = self.files.get(args.get("file") or "")
        if entry is None:
            raise _ApiError("file_not_found")
        return {"ok": True, "file": {k: v for k, v in entry.items() if k != "content"}}


class _ApiError(Exception):
    def __init__(self, error: str):
        super().__init__(error)
        self.error = error

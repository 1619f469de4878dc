"""An in-process fake of Slack's Web API on 127.0.0.1, for the local console and the tests.

In the style of bolt-python's own mock server: a stdlib HTTP server in a thread that records every call
and answers with Slack's documented response shapes. It keeps just enough workspace state (users, user
groups, channels with threads, views, reactions, files, ephemerals and ``response_url`` replies) for the
real ``slack_sdk`` client and the real Bolt app to run unchanged against it through ``base_url``.

``fail_next("chat.postMessage", status=429, retry_after=1)`` makes the next call(s) answer like a rate limit.
"""

from __future__ import annotations

import itertools
import json
import secrets
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qs, urlsplit

# Request fields that slack_sdk sends as JSON text inside form posts.
_JSON_FIELDS = {"blocks", "attachments", "view", "files", "metadata", "unfurl_link"}


@dataclass
class Call:
    """One recorded request: the API method (or ``response_url`` / ``upload``) and its decoded arguments."""

    method: str
    args: dict[str, Any]
    token: str | None
    at: float = field(default_factory=time.time)


@dataclass
class _Failure:
    status: int
    error: str
    retry_after: int | None
    times: int


class FakeSlack:
    """A fake Slack workspace served over HTTP. Use as a context manager or call ``start()``/``stop()``."""

    def __init__(
        self,
        *,
        team_id: str = "T0FTBOT",
        team_domain: str = "ftbot-demo",
        bot_user_id: str = "U0FTBOT",
        bot_id: str = "B0FTBOT",
        token: str | None = None,
        host: str = "127.0.0.1",
        port: int = 0,
    ):
        self.team_id = team_id
        self.team_domain = team_domain
        self.bot_user_id = bot_user_id
        self.bot_id = bot_id
        # When set, calls with another bearer token answer invalid_auth (the token itself is never stored in calls).
        self.token = token
        self.calls: list[Call] = []
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
        self._failures: dict[str, _Failure] = {}
        self._listeners: list[Callable[[Call, dict[str, Any]], None]] = []
        self._lock = threading.RLock()
        self._ids = itertools.count(1)
        self._last_ts = 0.0
        self.add_user(bot_user_id, "ftbot", is_bot=True)
        fake = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args: Any) -> None:  # keep test output (and tokens in URLs) quiet
                pass

            def do_POST(self) -> None:
                length = int(self.headers.get("Content-Length") or 0)
                raw = self.rfile.read(length) if length else b""
                status, headers, body = fake._handle(self.path, self.headers, raw)
                payload = body if isinstance(body, bytes) else json.dumps(body).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json; charset=utf-8")
                for key, value in headers.items():
                    self.send_header(key, value)
                self.send_header("Content-Length", str(len(payload)))
                self.end_headers()
                self.wfile.write(payload)

            do_GET = do_POST

        self._server = ThreadingHTTPServer((host, port), Handler)
        self._server.daemon_threads = True
        self._thread: threading.Thread | None = None

    # ---- life cycle -------------------------------------------------------------------------------------------
    @property
    def port(self) -> int:
        return self._server.server_address[1]

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/"

    @property
    def base_url(self) -> str:
        """What ``WebClient(base_url=...)`` and ``FTBOT_SLACK_API_URL`` take (with the trailing slash)."""
        return f"{self.url}api/"

    def start(self) -> "FakeSlack":
        if self._thread is None:
            self._thread = threading.Thread(target=self._server.serve_forever, name="fake-slack", daemon=True)
            self._thread.start()
        return self

    def stop(self) -> None:
        if self._thread is not None:
            self._server.shutdown()
            self._thread = None
        self._server.server_close()

    def __enter__(self) -> "FakeSlack":
        return self.start()

    def __exit__(self, *exc: Any) -> None:
        self.stop()

    # ---- workspace state ----------------------------------------------------------------------------------------
    def add_user(self, user_id: str, name: str, *, is_bot: bool = False, real_name: str | None = None) -> dict[str, Any]:
        user = {"id": user_id, "team_id": self.team_id, "name": name, "real_name": real_name or name, "is_bot": is_bot,
                "profile": {"display_name": name, "real_name": real_name or name}}
        with self._lock:
            self.users[user_id] = user
        return user

    def add_usergroup(self, group_id: str, members: list[str]) -> None:
        with self._lock:
            self.usergroups[group_id] = list(members)

    def add_channel(self, channel_id: str, name: str) -> dict[str, Any]:
        with self._lock:
            return self.channels.setdefault(channel_id, {"id": channel_id, "name": name, "messages": []})

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

    def permalink(self, channel: str, ts: str, thread_ts: str | None = None) -> str:
        link = f"https://{self.team_domain}.slack.com/archives/{channel}/p{ts.replace('.', '')}"
        if thread_ts and thread_ts != ts:
            link += f"?thread_ts={thread_ts}&cid={channel}"
        return link

    def new_trigger_id(self) -> str:
        return f"{next(self._ids)}.{secrets.token_hex(6)}"

    def response_url(self, key: str | None = None) -> str:
        return f"{self.url}response/{key or secrets.token_hex(8)}"

    def fail_next(self, method: str, *, status: int = 429, error: str = "ratelimited", retry_after: int | None = 1,
                  times: int = 1) -> None:
        """Make the next ``times`` calls of ``method`` fail (429 with Retry-After by default)."""
        with self._lock:
            self._failures[method] = _Failure(status, error, retry_after, times)

    def subscribe(self, listener: Callable[[Call, dict[str, Any]], None]) -> None:
        """Call ``listener(call, response_body)`` after each handled request (the console renders from it)."""
        self._listeners.append(listener)

    # ---- recorded calls -------------------------------------------------------------------------------------------
    def calls_to(self, method: str) -> list[Call]:
        with self._lock:
            return [c for c in self.calls if c.method == method]

    def methods(self) -> list[str]:
        with self._lock:
            return [c.method for c in self.calls]

    def reset_calls(self) -> None:
        with self._lock:
            self.calls.clear()

    def wait_for(self, method: str, count: int = 1, timeout: float = 5.0) -> list[Call]:
        """Wait until ``method`` was called ``count`` times (work after ack runs on another thread)."""
        deadline = time.monotonic() + timeout
        while True:
            found = self.calls_to(method)
            if len(found) >= count:
                return found
            if time.monotonic() > deadline:
                raise AssertionError(f"{method} called {len(found)} times, expected {count}; calls: {self.methods()}")
            time.sleep(0.01)

    # ---- request handling -----------------------------------------------------------------------------------------
    def _handle(self, path: str, headers: Any, raw: bytes) -> tuple[int, dict[str, str], Any]:
        parts = urlsplit(path)
        route = parts.path.strip("/")
        if route.startswith("upload/"):
            call = Call("upload", {"file_id": route.split("/", 1)[1], "size": len(raw)}, None)
            body: Any = self._upload(call.args["file_id"], raw)
            return self._finish(call, 200, {}, body)
        if route.startswith("response/"):
            args = json.loads(raw or b"{}")
            call = Call("response_url", {**args, "key": route.split("/", 1)[1]}, None)
            with self._lock:
                self.responses.append(call.args)
            return self._finish(call, 200, {}, b"ok")
        if not route.startswith("api/"):
            return 404, {}, {"ok": False, "error": "not_found"}
        method = route[4:]
        args = self._decode(headers, raw, parts.query)
        auth = headers.get("Authorization") or ""
        token = auth[7:] if auth.startswith("Bearer ") else args.pop("token", None)
        args.pop("token", None)
        call = Call(method, args, "set" if token else None)
        with self._lock:
            failure = self._failures.get(method)
            if failure is not None:
                failure.times -= 1
                if failure.times <= 0:
                    del self._failures[method]
        if failure is not None:
            extra = {"Retry-After": str(failure.retry_after)} if failure.retry_after is not None else {}
            return self._finish(call, failure.status, extra, {"ok": False, "error": failure.error})
        if method == "apps.connections.open":
            # Socket Mode asks for its WebSocket URL with the app-level token; nothing listens there in tests.
            ok = bool(token and token.startswith("xapp-"))
            body = {"ok": True, "url": "ws://127.0.0.1:9/link/?ticket=fake"} if ok else {"ok": False, "error": "not_allowed_token_type"}
            return self._finish(call, 200, {}, body)
        if self.token is not None and token != self.token:
            return self._finish(call, 200, {}, {"ok": False, "error": "invalid_auth"})
        handler = getattr(self, "_api_" + method.replace(".", "_"), None)
        if handler is None:
            return self._finish(call, 200, {}, {"ok": False, "error": "unknown_method"})
        try:
            body = handler(args)
        except _ApiError as exc:
            body = {"ok": False, "error": exc.error}
        return self._finish(call, 200, {}, body)

    def _finish(self, call: Call, status: int, headers: dict[str, str], body: Any) -> tuple[int, dict[str, str], Any]:
        with self._lock:
            self.calls.append(call)
        for listener in list(self._listeners):
            try:
                listener(call, body if isinstance(body, dict) else {})
            except Exception:  # a broken renderer must not break the API
                pass
        return status, headers, body

    @staticmethod
    def _decode(headers: Any, raw: bytes, query: str) -> dict[str, Any]:
        args: dict[str, Any] = {k: v[-1] for k, v in parse_qs(query).items()}
        content_type = headers.get("Content-Type") or ""
        if "json" in content_type:
            args.update(json.loads(raw or b"{}"))
        elif raw:
            args.update({k: v[-1] for k, v in parse_qs(raw.decode("utf-8"), keep_blank_values=True).items()})
        for key in _JSON_FIELDS & set(args):
            if isinstance(args[key], str) and args[key][:1] in "[{":
                args[key] = json.loads(args[key])
        return args

    # ---- API methods ----------------------------------------------------------------------------------------------
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
        chan = self._channel(args)
        ts = args.get("ts") or ""
        parent = self.find_message(chan["id"], ts)
        if parent is None:
            raise _ApiError("thread_not_found")
        root = parent.get("thread_ts") or ts
        messages = self.thread(chan["id"], root) if root == ts else [parent]
        return {"ok": True, "messages": [dict(m) for m in messages], "has_more": False,
                "response_metadata": {"next_cursor": ""}}

    def _api_conversations_history(self, args: dict[str, Any]) -> dict[str, Any]:
        chan = self._channel(args)
        with self._lock:
            top = [dict(m) for m in chan["messages"] if m.get("thread_ts") in (None, m["ts"])]
        return {"ok": True, "messages": list(reversed(top)), "has_more": False, "response_metadata": {"next_cursor": ""}}

    def _api_conversations_info(self, args: dict[str, Any]) -> dict[str, Any]:
        chan = self._channel(args)
        return {"ok": True, "channel": {"id": chan["id"], "name": chan["name"], "is_member": True}}

    def _api_conversations_join(self, args: dict[str, Any]) -> dict[str, Any]:
        return self._api_conversations_info(args)

    def _api_conversations_open(self, args: dict[str, Any]) -> dict[str, Any]:
        users = str(args.get("users") or "")
        if not users:
            raise _ApiError("users_list_not_supplied")
        chan = self.add_channel("D" + users.split(",")[0].lstrip("UW"), "dm")
        return {"ok": True, "channel": {"id": chan["id"]}}

    def _new_view(self, view: Any, extra: dict[str, Any]) -> dict[str, Any]:
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
        key = (args.get("channel") or "", args.get("timestamp") or "")
        if self.find_message(*key) is None:
            raise _ApiError("message_not_found")
        with self._lock:
            entries = self.reactions.setdefault(key, [])
            if any(e["name"] == args.get("name") and e["user"] == self.bot_user_id for e in entries):
                raise _ApiError("already_reacted")
            entries.append({"name": args.get("name"), "user": self.bot_user_id})
        return {"ok": True}

    def _api_reactions_remove(self, args: dict[str, Any]) -> dict[str, Any]:
        key = (args.get("channel") or "", args.get("timestamp") or "")
        with self._lock:
            entries = self.reactions.get(key, [])
            kept = [e for e in entries if not (e["name"] == args.get("name") and e["user"] == self.bot_user_id)]
            if len(kept) == len(entries):
                raise _ApiError("no_reaction")
            self.reactions[key] = kept
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

    def _upload(self, file_id: str, raw: bytes) -> bytes:
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

"""An in-process fake of Slack's Web API on 127.0.0.1, for the local console and the tests.

In the style of bolt-python's own mock server: a stdlib HTTP server in a thread that records every call
and answers with Slack's documented response shapes. It keeps just enough workspace state (users, user
groups, channels with threads, views, reactions, files, ephemerals and ``response_url`` replies) for the
real ``slack_sdk`` client and the real Bolt app to run unchanged against it through ``base_url``.
This module is the server (requests, recorded calls, injected failures); the methods' answers are
``bot.console.web_api`` and the state they keep is ``bot.console.workspace``.

``fail_next("chat.postMessage", status=429, retry_after=1)`` makes the next call(s) answer like a rate limit.
"""

from __future__ import annotations

import json
import secrets
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from email.message import Message
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qs, urlsplit

from bot.console.web_api import WebApiMethods

# Request fields that slack_sdk sends as JSON text inside form posts.
_JSON_FIELDS = {"blocks", "attachments", "view", "files", "metadata", "unfurl_link"}

# What the server answers: a JSON object (the Web API), or raw bytes (the upload server, ``response_url``).
ResponseBody = dict[str, Any] | bytes


class _Server(ThreadingHTTPServer):
    # socketserver's default listen backlog is 5: with more clients connecting at once (a bot answering 20 requests),
    # the kernel drops their SYNs and each retries a second later, which Slack itself never makes anyone wait.
    request_queue_size = 128


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


class FakeSlack(WebApiMethods):
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
        super().__init__(team_id=team_id, team_domain=team_domain, bot_user_id=bot_user_id, bot_id=bot_id)
        # When set, calls with another bearer token answer invalid_auth (the token itself is never stored in calls).
        self.token = token
        self.calls: list[Call] = []
        self._failures: dict[str, _Failure] = {}
        self._listeners: list[Callable[[Call, dict[str, Any]], None]] = []
        fake = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"
            # Headers and body go out in two writes: with Nagle's algorithm the body would wait for the client's
            # delayed ACK (up to 40 ms a call), a delay Slack does not have.
            disable_nagle_algorithm = True

            def log_message(self, format: str, *args: object) -> None:  # keep test output (and tokens in URLs) quiet
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

        self._server = _Server((host, port), Handler)
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

    def start(self) -> FakeSlack:
        if self._thread is None:
            self._thread = threading.Thread(target=self._server.serve_forever, name="fake-slack", daemon=True)
            self._thread.start()
        return self

    def stop(self) -> None:
        if self._thread is not None:
            self._server.shutdown()
            self._thread = None
        self._server.server_close()

    def __enter__(self) -> FakeSlack:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # ---- hooks for the console and the tests --------------------------------------------------------------------
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
    def _handle(self, path: str, headers: Message, raw: bytes) -> tuple[int, dict[str, str], ResponseBody]:
        parts = urlsplit(path)
        route = parts.path.strip("/")
        if route.startswith("upload/"):
            call = Call("upload", {"file_id": route.split("/", 1)[1], "size": len(raw)}, None)
            return self._finish(call, 200, {}, self.store_upload(call.args["file_id"], raw))
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
        return self._finish(call, 200, {}, self.call_method(method, args))

    def _finish(self, call: Call, status: int, headers: dict[str, str],
                body: ResponseBody) -> tuple[int, dict[str, str], ResponseBody]:
        with self._lock:
            self.calls.append(call)
        for listener in list(self._listeners):
            try:
                listener(call, body if isinstance(body, dict) else {})
            except Exception:  # a broken renderer must not break the API
                pass
        return status, headers, body

    @staticmethod
    def _decode(headers: Message, raw: bytes, query: str) -> dict[str, Any]:
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

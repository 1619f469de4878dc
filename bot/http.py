"""HTTP mode: Slack's requests at ``POST /slack/events``, served by uvicorn through a Starlette ASGI app.

Bolt's own ``app.start()`` server is for development only. Here Starlette receives the raw body (at most
``MAX_BODY_BYTES``: 413 beyond), checks the signature (``X-Slack-Signature`` / ``X-Slack-Request-Timestamp``,
5-minute window: 401 otherwise) before anything parses or logs the body, and hands it to Bolt, which dispatches. Bolt's
sync ``dispatch`` blocks until ``ack()``, so it runs in Starlette's thread pool to keep the event loop free.
"""

from __future__ import annotations

import hashlib
import hmac
import logging
import socket
import threading
import time

import uvicorn
from slack_bolt import App, BoltRequest
from slack_bolt.adapter.starlette.handler import to_starlette_response
from starlette.applications import Starlette
from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import PlainTextResponse, Response
from starlette.routing import Route

from bot.app import bot_context

log = logging.getLogger(__name__)

EVENTS_PATH = "/slack/events"
# Slack's own requests are a few KiB (a view submission with every field full stays far below this); anything
# larger is not from Slack and is refused with 413 before it is read into memory.
MAX_BODY_BYTES = 1024 * 1024
# Slack's replay window: a signature older (or newer) than this is refused, as Bolt and Slack's docs do.
SIGNATURE_MAX_AGE_S = 5 * 60


class BodyTooLarge(Exception):
    """The request body is over ``MAX_BODY_BYTES``."""


async def read_body(request: Request, limit: int = MAX_BODY_BYTES) -> bytes:
    """The body, read chunk by chunk so an oversized one is refused at the limit, not after it is all in memory."""
    declared = request.headers.get("content-length", "")
    if declared.isascii() and declared.isdigit() and int(declared) > limit:
        raise BodyTooLarge
    chunks: list[bytes] = []
    size = 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise BodyTooLarge
        chunks.append(chunk)
    return b"".join(chunks)


def signature_is_valid(signing_secret: str, body: bytes, timestamp: str, signature: str, *, now: float | None = None) -> bool:
    """Slack's v0 signature: ``v0=`` HMAC-SHA256 of ``v0:{timestamp}:{body}``, with the timestamp in whole seconds.

    Checked here on the raw bytes, before Bolt: Bolt's own check raises on a timestamp that is not an integer
    (a 500) and logs the whole body of every rejected request at INFO.
    """
    if not (timestamp.isascii() and timestamp.isdigit()) or not signature:
        return False
    now = time.time() if now is None else now
    if abs(now - int(timestamp)) > SIGNATURE_MAX_AGE_S:
        return False
    digest = hmac.new(signing_secret.encode(), b"v0:" + timestamp.encode() + b":" + body, hashlib.sha256).hexdigest()
    return hmac.compare_digest(f"v0={digest}", signature)


def build_asgi(app: App, *, path: str = EVENTS_PATH) -> Starlette:
    """The ASGI application serving ``app`` at ``path`` (plus ``GET /healthz`` for load balancers)."""

    # Without a signing secret Bolt verifies nothing either (a local session); Slack always sends one.
    signing_secret = bot_context(app).settings.slack_signing_secret

    async def slack_events(request: Request) -> Response:
        try:
            body = await read_body(request)
        except BodyTooLarge:
            log.warning("refused a request body over %d bytes", MAX_BODY_BYTES)
            return PlainTextResponse("request body too large", status_code=413)
        if signing_secret and not signature_is_valid(signing_secret, body, request.headers.get("x-slack-request-timestamp", ""),
                                                     request.headers.get("x-slack-signature", "")):
            # Never the body: it is not from Slack and may be anything, of any size.
            log.info("refused a request without a valid Slack signature (%d bytes)", len(body))
            return PlainTextResponse("invalid request", status_code=401)
        try:
            bolt_request = BoltRequest(
                body=body.decode("utf-8"),
                query=request.url.query,
                headers={k: v for k, v in request.headers.items()},
            )
        except ValueError as error:  # JSON or UTF-8 that does not parse: signed, yet not a payload we can read
            log.warning("ignored a signed request whose body does not parse (%s, %d bytes)", type(error).__name__, len(body))
            return Response(status_code=200)
        bolt_response = await run_in_threadpool(app.dispatch, bolt_request)
        return to_starlette_response(bolt_response)

    async def healthz(_request: Request) -> Response:
        return PlainTextResponse("ok")

    return Starlette(routes=[Route(path, slack_events, methods=["POST"]), Route("/healthz", healthz, methods=["GET"])])


def serve(app: App, *, host: str = "0.0.0.0", port: int = 3000) -> None:
    """Serve until interrupted (``ftbot run --http``)."""
    log.info("ftbot listening on http://%s:%d%s", host, port, EVENTS_PATH)
    uvicorn.run(build_asgi(app), host=host, port=port, log_level="info", access_log=False)


class BackgroundServer:
    """uvicorn serving an app on 127.0.0.1 in a thread, on a free port: for tests, the benchmark and the console."""

    def __init__(self, asgi: Starlette, *, host: str = "127.0.0.1", port: int = 0):
        self._socket = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self._socket.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self._socket.bind((host, port))
        self.host, self.port = self._socket.getsockname()[:2]
        config = uvicorn.Config(asgi, log_level="warning", access_log=False, lifespan="off", backlog=2048)
        self._server = uvicorn.Server(config)
        self._thread = threading.Thread(target=self._server.run, kwargs={"sockets": [self._socket]},
                                        name="ftbot-http", daemon=True)

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"

    def start(self, timeout: float = 10.0) -> BackgroundServer:
        self._thread.start()
        deadline = time.monotonic() + timeout
        while not self._server.started:
            if time.monotonic() > deadline or not self._thread.is_alive():
                raise RuntimeError("the HTTP server did not start")
            time.sleep(0.01)
        return self

    def stop(self) -> None:
        self._server.should_exit = True
        self._thread.join(timeout=10)
        self._socket.close()

    def __enter__(self) -> BackgroundServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

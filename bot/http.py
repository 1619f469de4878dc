"""HTTP mode: Slack's requests at ``POST /slack/events``, served by uvicorn through a Starlette ASGI app.

Bolt's own ``app.start()`` server is for development only. Here Starlette receives the raw body, Bolt verifies
the signature (``X-Slack-Signature`` / ``X-Slack-Request-Timestamp``, 5-minute window) and dispatches. Bolt's
sync ``dispatch`` blocks until ``ack()``, so it runs in Starlette's thread pool to keep the event loop free.
"""

from __future__ import annotations

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

log = logging.getLogger(__name__)

EVENTS_PATH = "/slack/events"


def build_asgi(app: App, *, path: str = EVENTS_PATH) -> Starlette:
    """The ASGI application serving ``app`` at ``path`` (plus ``GET /healthz`` for load balancers)."""

    async def slack_events(request: Request) -> Response:
        body = await request.body()
        bolt_request = BoltRequest(
            body=body.decode("utf-8", errors="replace"),
            query=request.url.query,
            headers={k: v for k, v in request.headers.items()},
        )
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

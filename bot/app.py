"""Building the Bolt app: one ``BotContext`` shared by every feature, each feature registered by ``register(app, bot)``.

The app is synchronous (Bolt ``App``) with ``process_before_response=False``: listeners ``ack()`` first and
do slow work afterwards on Bolt's thread pool. Slack delivers events at least once and a process may die after an
ack, so every event goes through a durable inbox (``bot.inbox``): stored before the ack, processed from the store,
marked done after its listener; later deliveries of a done event get a bare 200.
"""

from __future__ import annotations

import atexit
import logging
import re
import threading
from collections.abc import Callable
from concurrent.futures import Executor, Future
from dataclasses import dataclass, field
from typing import Any, ParamSpec, TypeVar

from apscheduler.schedulers.background import BackgroundScheduler
from openai import OpenAI
from slack_bolt import Ack, App, BoltContext, BoltResponse, Respond
from slack_sdk import WebClient
from slack_sdk.http_retry.builtin_handlers import ConnectionErrorRetryHandler, RateLimitErrorRetryHandler

from bot import capture, checks, commands, deploy, drafts, evaluation, home, review, training
from bot.access import access_middleware
from bot.blocks import escape
from bot.commands import Router
from bot.executor import TrackingExecutor
from bot.inbox import EventInbox
from bot.payloads import tell_stale
from bot.roles import Roles
from storage.config import Settings
from storage.db import Database
from storage.errors import FtbotError, StaleAction
from storage.events import inbox_database
from trainers.drafts.generate import DraftService

log = logging.getLogger(__name__)

SLACK_API_DEFAULT = "https://slack.com/api/"

P = ParamSpec("P")
T = TypeVar("T")

# What `@ftbot <word> …` runs, for words other than `add` (bot.capture's own): the event, the client, Bolt's context.
MentionHandler = Callable[[dict[str, Any], WebClient, BoltContext], None]


@dataclass
class BotContext:
    """Everything a listener needs besides Bolt's own arguments."""

    settings: Settings
    db: Database
    router: Router
    roles: Roles
    client: WebClient
    # Slack events stored before their ack and processed from the store (bot.inbox); redelivered after a crash.
    # On SQLite its database is a file of its own (storage.events.inbox_database): acks never wait for bulk writes.
    inbox: EventInbox
    # Where slow work after an ack runs (see ``defer``); a TrackingExecutor so a caller can wait until it is idle.
    # Most of it waits on the network (Slack, OpenAI, a model server): 20 drafts asked at once must not queue behind
    # each other's generations (bench/bench_drafts.py), hence more threads than cores.
    work: TrackingExecutor = field(default_factory=lambda: TrackingExecutor(max_workers=32, thread_name_prefix="ftbot-work"))
    # An OpenAI client to use instead of one built from the environment (None: build one when needed).
    openai_client: OpenAI | None = None
    # This process's scheduler (bot.scheduler starts it once; stored jobs live in the database).
    scheduler: BackgroundScheduler | None = None
    # The bot's own user id, looked up with auth.test until Slack has answered once.
    bot_user_id: str | None = None
    # Evaluation rounds this process is generating or posting now (the database status guards other processes).
    rounds_in_flight: set[int] = field(default_factory=set)
    # `@ftbot <word>` handlers other features add (bot.drafts: `draft`); bot.capture's app_mention listener routes to them.
    mention_handlers: dict[str, MentionHandler] = field(default_factory=dict)
    # Draft requests this process is writing now (bot.drafts.request): a second delivery of one adds nothing.
    drafts_in_flight: set[str] = field(default_factory=set)
    # Writes drafts with the model in use (created at the first draft or `/ft use`; see ``draft_service``).
    drafter: DraftService | None = field(default=None, repr=False)
    _drafts_lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    def defer(self, fn: Callable[P, T], /, *args: P.args, **kwargs: P.kwargs) -> Future[T]:
        """Run ``fn`` after the ack on the work pool, not on Bolt's listener pool.

        Bolt runs slash-command and interaction listeners on its listener pool and waits there for ``ack()``.
        Slow work kept on that pool delays the acks of the requests queued behind it; moving it here keeps
        every ack fast under load. Errors are logged (the user is told by the function itself).
        """

        def run() -> T:
            try:
                return fn(*args, **kwargs)
            except Exception:
                log.exception("deferred %s failed", getattr(fn, "__name__", fn))
                raise

        return self.work.submit(run)

    def draft_service(self) -> DraftService:
        """The draft service, created at first use: it may start ftbot's drafting process, which ``close`` (or the
        process's exit) stops."""
        with self._drafts_lock:
            if self.drafter is None:
                self.drafter = DraftService(self.settings, openai_client=self.openai_client)
                atexit.register(self.drafter.close)  # close() is idempotent: an explicit close first is fine
            return self.drafter

    def close(self) -> None:
        """Release what the bot started besides its thread pools: the draft service (and its drafting process)."""
        with self._drafts_lock:
            service, self.drafter = self.drafter, None
        if service is not None:
            service.close()

    def defer_event(self, context: dict[str, Any], fn: Callable[P, T], /, *args: P.args, **kwargs: P.kwargs) -> Future[T]:
        """:meth:`defer` for the work of a stored Slack event: the event stays pending in the inbox until ``fn``
        returns, so a process killed while ``fn`` runs leaves it to be redelivered (and ``fn`` must be idempotent)."""
        event_id = self.inbox.hand_off(context)

        def run() -> T:
            try:
                result = fn(*args, **kwargs)
            except Exception as error:
                if event_id:  # a user's mistake (FtbotError) would fail again: done; anything else: retried
                    self.inbox.work_finished(event_id, failed=not isinstance(error, FtbotError))
                raise
            if event_id:
                self.inbox.work_finished(event_id)
            return result

        return self.defer(run)

    def wait_idle(self, timeout: float = 30.0) -> bool:
        """Wait until the deferred work is done (a caller that drives the bot synchronously: tests, a local session)."""
        return self.work.wait_idle(timeout)


def build_client(settings: Settings, *, rate_limit_retries: int = 2) -> WebClient:
    """A Web API client pointed at Slack (or ``FTBOT_SLACK_API_URL``), retrying 429s and dropped connections."""
    client = WebClient(
        token=settings.slack_bot_token,
        base_url=settings.slack_api_url or SLACK_API_DEFAULT,
        timeout=30,
    )
    # slack_sdk honours Retry-After in RateLimitErrorRetryHandler, but it is not on by default.
    client.retry_handlers = [
        ConnectionErrorRetryHandler(max_retry_count=1),
        RateLimitErrorRetryHandler(max_retry_count=rate_limit_retries),
    ]
    return client


class KeptAck(Ack):
    """An ``ack`` whose response, once given, stays given.

    When a listener that already acknowledged then raises (a stale button: ftbot acks first, then parses, and the error
    handler answers privately), Bolt's thread runner sets ``ack.response`` back to None. If the request thread had not
    yet seen the acknowledgement, it waits out the 3 s and answers Slack 404 ("didn't call ack()"), and the user sees an
    error for a click that was answered. Seen under load in CI; ``tests/bot/test_payloads.py`` covers it.
    """

    def __init__(self) -> None:
        self._given: BoltResponse | None = None
        super().__init__()

    @property
    def response(self) -> BoltResponse | None:
        return self._given

    @response.setter
    def response(self, value: BoltResponse | None) -> None:
        if value is not None or self._given is None:
            self._given = value


def keep_acknowledgements(context: BoltContext, next: Callable[[], None]) -> None:  # noqa: A002 - Bolt's name
    """First middleware: every request's ``ack`` is a :class:`KeptAck`."""
    if "ack" not in context or context.ack.response is None:
        context["ack"] = KeptAck()
    next()


def build_app(
    settings: Settings,
    db: Database,
    *,
    client: WebClient | None = None,
    listener_executor: Executor | None = None,
) -> App:
    """The Bolt app with every feature registered. ``app.ftbot`` is its ``BotContext``."""
    client = client or build_client(settings)
    app = App(
        client=client,
        signing_secret=settings.slack_signing_secret or "",
        # Socket Mode has no signatures; HTTP mode and the tests always verify them.
        request_verification_enabled=bool(settings.slack_signing_secret),
        # auth.test runs on the first request instead of at start-up, so building the app never needs the network.
        token_verification_enabled=False,
        process_before_response=False,
        listener_executor=listener_executor,
        name="ftbot",
    )
    bot = BotContext(settings=settings, db=db, router=Router(), roles=Roles(settings, client), client=client,
                     inbox=EventInbox(inbox_database(db)))
    app.ftbot = bot  # type: ignore[attr-defined]
    app.middleware(keep_acknowledgements)
    # Before any listener runs: the request's rule in bot.access.POLICY admits its user, or it is refused privately.
    app.middleware(access_middleware(bot))

    @app.error
    def on_listener_error(error: Exception, body: dict[str, Any], respond: Respond | None) -> None:
        if isinstance(error, StaleAction):  # a button or form the bot did not write: not a fault to log at ERROR
            log.info("stale interaction: %s", error)
            tell_stale(respond)
            return
        if isinstance(error, FtbotError) and respond is not None:  # a user error: said privately, as /ft does
            respond(text=f":warning: {escape(str(error))}", response_type="ephemeral", replace_original=False)
            return
        log.error("listener failed: %s: %s", type(error).__name__, error, exc_info=error)

    commands.register(app, bot)
    for feature in (capture, review, checks, home, training, evaluation, drafts, deploy):
        feature.register(app, bot)
    # Last: an event no feature listens to is still finished (not left pending in the inbox, nor answered 404).
    app.event(re.compile(".*"))(_no_listener)
    # After every other middleware, so an event one of them refuses is never stored (see EventInbox.attach).
    bot.inbox.attach(app)
    return app


def _no_listener(event: dict[str, Any]) -> None:
    log.debug("no listener for %s events", event.get("type"))


def bot_context(app: App) -> BotContext:
    return app.ftbot  # type: ignore[attr-defined]

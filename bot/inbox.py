"""The durable inbox of Slack events: stored before the ack, processed from the store, marked done after the listener.

Bolt answers an event as soon as a listener is chosen (``process_before_response=False``) and runs the listener later
on a thread, so a process killed in between would lose an event Slack was told had arrived (and Slack's retry used to
be dropped as "already handled"). With the inbox:

1. A global middleware stores each ``event_callback`` (``storage.events.receive_event``, committed before Bolt
   answers) under a lease held by this process; only then does the request go on to its listener.
2. When the listener returns, Bolt's listener completion handler marks the event done; when it raises, the error
   handler frees it for another attempt (``storage.events.MAX_ATTEMPTS`` in all).
3. :meth:`EventInbox.redeliver_pending` processes what a dead process left pending: at start-up and every
   ``bot.scheduler.REDELIVER_SECONDS``. It dispatches the stored body through the same Bolt app and listeners, as
   a request whose signature Bolt does not check again (it was checked when the event arrived).

A retry of a done event is answered and dropped; a retry of a pending one is processed when its lease has lapsed or
its owner process is gone (same host, its pid no longer running), else answered (its owner finishes it). The work
itself must be idempotent for the one case left: a process killed after the listener's work but before "done".
"""

from __future__ import annotations

import json
import logging
import os
import secrets
import socket
from collections.abc import Callable
from datetime import timedelta
from typing import Any

from slack_bolt import App, BoltRequest, BoltResponse
from slack_bolt.listener.listener_completion_handler import ListenerCompletionHandler
from slack_bolt.listener.listener_error_handler import ListenerErrorHandler

from storage.db import Database
from storage.errors import FtbotError
from storage.events import (
    Delivery,
    finish_event,
    lease_event,
    pending_events,
    receive_event,
    release_failed_event,
    stored_event_body,
)
from storage.models import utcnow

log = logging.getLogger(__name__)

# How long a process may work on one event before another may take it over. Listeners do their slow work on
# BotContext.work after returning, so a minute is far more than one needs.
LEASE = timedelta(seconds=60)
# Keys in a request's context: the stored event this request processes, and whether its listener failed.
PROCESSING = "ftbot_inbox_event"
REPLAYING = "ftbot_inbox_replay"
FAILED = "ftbot_inbox_failed"
# The listener handed the event's work to the work pool: the work, not the listener's return, finishes the event.
HANDED_OFF = "ftbot_inbox_handed_off"
# One token per process (not per app): every app in this process is alive as long as the process is.
_PROCESS_TOKEN = secrets.token_hex(4)


def process_owner() -> str:
    """Who holds a lease: ``host:pid:token``; the token tells this process from an earlier one with the same pid."""
    return f"{socket.gethostname()}:{os.getpid()}:{_PROCESS_TOKEN}"


def owner_is_gone(owner: str) -> bool:
    """True when the process that leased an event is known to have ended (so its lease need not be waited out).

    Only a process on this host can be checked: one on another host keeps its lease until it lapses.
    """
    host, _, rest = owner.partition(":")
    pid_text, _, token = rest.partition(":")
    if host != socket.gethostname() or not pid_text.isdigit():
        return False
    pid = int(pid_text)
    if pid == os.getpid():
        return token != _PROCESS_TOKEN  # an earlier process that had our pid (a restarted container)
    try:
        os.kill(pid, 0)  # signal 0: only asks whether the process exists
    except ProcessLookupError:
        return True
    except PermissionError:  # it exists, as another user
        return False
    return False


def _event_id(body: dict[str, Any]) -> str | None:
    if body.get("type") == "event_callback" and isinstance(body.get("event_id"), str) and body["event_id"]:
        return str(body["event_id"])
    return None


class EventInbox:
    """The inbox of one Bolt app (see the module docstring); ``attach`` connects it."""

    def __init__(self, db: Database, *, lease: timedelta = LEASE):
        self.db = db
        self.lease = lease
        self.owner = process_owner()
        self._dispatch: Callable[[BoltRequest], BoltResponse] | None = None

    def attach(self, app: App) -> None:
        """Store events in ``app``'s requests and finish them after their listeners.

        Call it after every other global middleware and ``@app.error`` are registered: requests a middleware refuses
        are never stored, and the error handler is wrapped, not replaced.
        """
        self._dispatch = app.dispatch
        app.middleware(self.middleware)
        runner = app.listener_runner
        runner.listener_error_handler = _MarkFailed(runner.listener_error_handler)
        runner.listener_completion_handler = _FinishEvent(self, runner.listener_completion_handler)

    def middleware(self, request: BoltRequest, body: dict[str, Any], next: Callable[[], None]) -> BoltResponse | None:  # noqa: A002
        event_id = _event_id(body)
        if event_id is None:
            next()
            return None
        if request.context.get(REPLAYING) == event_id:  # the stored copy, leased by redeliver_pending
            request.context[PROCESSING] = event_id
            next()
            return None
        delivery = receive_event(self.db, event_id, request.raw_body or json.dumps(body), owner=self.owner,
                                 lease=self.lease, owner_is_gone=owner_is_gone)
        if delivery in (Delivery.NEW, Delivery.TAKEN_OVER):
            if delivery == Delivery.TAKEN_OVER:
                log.info("event %s was left unfinished; processing this delivery", event_id)
            request.context[PROCESSING] = event_id
            next()
            return None
        log.info("event %s is %s; answering this delivery without acting again", event_id, delivery)
        return BoltResponse(status=200, body="")

    def hand_off(self, context: dict[str, Any]) -> str | None:
        """The listener of this request continues its work after it returns (``BotContext.defer_event``): the event
        stays pending until :meth:`work_finished`, so a crash in between leaves it to be redelivered. The event id, or
        None for a request that is not a stored event."""
        event_id = context.get(PROCESSING)
        if event_id:
            context[HANDED_OFF] = True
        return event_id

    def work_finished(self, event_id: str, *, failed: bool = False) -> None:
        """The handed-off work of ``event_id`` ended: done, or (``failed``) free for a retry."""
        if not failed:
            finish_event(self.db, event_id)
            return
        status = release_failed_event(self.db, event_id)
        log.warning("event %s failed; it is now %s", event_id, status or "no longer pending")

    def listener_finished(self, request: BoltRequest) -> None:
        event_id = request.context.get(PROCESSING)
        if not event_id:
            return
        if request.context.get(HANDED_OFF) and not request.context.get(FAILED):
            return  # the work pool finishes it (work_finished)
        if not request.context.get(FAILED):
            finish_event(self.db, event_id)
            return
        status = release_failed_event(self.db, event_id)
        log.warning("event %s failed; it is now %s", event_id, status or "no longer pending")

    def redeliver_pending(self) -> int:
        """Process the pending events nobody is working on (lease lapsed, owner gone); returns how many."""
        now = utcnow()
        redelivered = 0
        for pending in pending_events(self.db):
            lapsed = pending.leased_until is None or pending.leased_until < now
            gone = pending.owner if pending.owner and not lapsed and owner_is_gone(pending.owner) else None
            if not lapsed and gone is None:
                continue  # a live process is on it
            if lease_event(self.db, pending.event_id, owner=self.owner, lease=self.lease, from_gone_owner=gone):
                self._replay(pending.event_id)
                redelivered += 1
        if redelivered:
            log.info("redelivered %d stored Slack event(s) left unfinished", redelivered)
        return redelivered

    def _replay(self, event_id: str) -> None:
        body = stored_event_body(self.db, event_id)
        if not body or self._dispatch is None:  # nothing to replay (a claim migrated without its body)
            finish_event(self.db, event_id)
            return
        # mode="socket_mode": Bolt skips the signature check, as for a Socket Mode envelope (checked on arrival).
        request = BoltRequest(body=body, headers={"content-type": ["application/json"]}, context={REPLAYING: event_id},
                              mode="socket_mode")
        self._dispatch(request)
        if PROCESSING not in request.context:  # a middleware before ours ended it: no listener will run
            finish_event(self.db, event_id)


class _MarkFailed(ListenerErrorHandler):
    """Bolt's listener error handler, plus a mark in the request so the completion handler retries the event.

    A user's mistake (an ``FtbotError``) would fail again the same way: that event is done, not retried.
    """

    def __init__(self, then: ListenerErrorHandler):
        self.then = then

    def handle(self, error: Exception, request: BoltRequest, response: BoltResponse | None) -> None:
        if not isinstance(error, FtbotError):
            request.context[FAILED] = True
        self.then.handle(error=error, request=request, response=response)


class _FinishEvent(ListenerCompletionHandler):
    """Bolt's listener completion handler, plus marking the request's stored event done (or free for a retry)."""

    def __init__(self, inbox: EventInbox, then: ListenerCompletionHandler):
        self.inbox = inbox
        self.then = then

    def handle(self, request: BoltRequest, response: BoltResponse | None) -> None:
        try:
            self.inbox.listener_finished(request)
        except Exception:  # the event stays pending and is redelivered; never break Bolt's worker thread
            log.exception("could not mark event %s done", request.context.get(PROCESSING))
        finally:
            self.then.handle(request=request, response=response)

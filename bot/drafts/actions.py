"""What the draft's buttons do: Send, Edit… (a modal, submitted to post the edited text) and Discard (a modal with an
optional reason).

Every decision is ``storage.drafts.decide_draft``, which acts only on a draft nobody decided. Send and Edit also post in
the thread, so they first claim the decision (``storage.events.claim_event`` on ``draft-decision:<id>``, across
threads and processes): of two clicks at once one posts and the other is told what happened; a post Slack refuses
gives the claim back. The private draft is then replaced through the click's ``response_url`` (kept in the modals'
``private_metadata``).
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from slack_bolt import Ack, App, Respond
from slack_sdk import WebClient
from slack_sdk.errors import SlackApiError

from bot import blocks as bk
from bot.drafts.views import (
    DISCARD_ACTION,
    DISCARD_VIEW,
    EDIT_ACTION,
    EDIT_VIEW,
    REASON_BLOCK,
    REPLY_BLOCK,
    SEND_ACTION,
    decided_message,
    discard_view,
    edit_view,
    input_value,
    posted_reply,
    what_happened,
)
from bot.payloads import STALE_ACTION_MESSAGE, button_int, stale_view, view_metadata
from storage.drafts import decide_draft, get_draft, list_drafts
from storage.errors import DraftNotFound, StaleAction
from storage.events import claim_event, release_event
from storage.models import ReplyDraft
from storage.vocabulary import DraftOutcome

if TYPE_CHECKING:  # bot.app imports every feature (so this module): a type-only import avoids the cycle
    from bot.app import BotContext

log = logging.getLogger(__name__)

@dataclass(frozen=True)
class Clicker:
    """Who decided, and how to answer them privately: the click's response_url, else an ephemeral in the thread."""

    user: str
    respond: Respond | None

    def tell(self, client: WebClient, draft: ReplyDraft | None, text: str) -> None:
        if self.respond is not None:
            try:
                self.respond(text=bk.fallback(text), response_type="ephemeral", replace_original=False)
                return
            except Exception as error:  # an expired or used-up response_url: the thread instead
                log.info("response_url refused an answer: %s", error)
        if draft is not None:
            client.chat_postEphemeral(channel=draft.channel, user=self.user, thread_ts=draft.thread_ts,
                                      text=bk.fallback(text))

    def replace(self, bot: BotContext, draft: ReplyDraft) -> None:
        """Replace the private draft with what became of it."""
        text, blocks = decided_message(draft, reply_window_minutes=bot.settings.draft_reply_window_minutes)
        if self.respond is None:
            return
        try:
            self.respond(text=text, blocks=blocks, response_type="ephemeral", replace_original=True)
        except Exception as error:
            log.info("cannot replace the private draft %s: %s", draft.id, error)


def _decision_key(draft_id: int) -> str:
    return f"draft-decision:{draft_id}"


def _undecided(bot: BotContext, client: WebClient, clicker: Clicker, draft_id: int) -> ReplyDraft | None:
    """The draft, if ``clicker`` may still decide it; else None, having told them why."""
    try:
        draft = get_draft(bot.db, draft_id)
    except DraftNotFound:
        clicker.tell(client, None, STALE_ACTION_MESSAGE)
        return None
    if draft.requested_by != clicker.user:
        clicker.tell(client, draft, f"This draft was offered to <@{bk.escape(draft.requested_by)}>, not to you; "
                                    "nothing was done. Ask for your own with `@ftbot draft`.")
        return None
    if draft.outcome is not None:
        clicker.tell(client, draft, what_happened(draft, expire_hours=bot.settings.draft_expire_hours))
        return None
    return draft


def _answered_by_another(bot: BotContext, draft: ReplyDraft) -> ReplyDraft | None:
    """For an auto-mode draft: another agent's draft of the same question that was posted already."""
    if not draft.request_key.startswith("auto:"):
        return None
    return next((other for other in list_drafts(bot.db, channel=draft.channel, source_ts=draft.source_ts)
                 if other.id != draft.id and other.outcome in (DraftOutcome.SENT, DraftOutcome.EDITED)), None)


def settle(bot: BotContext, client: WebClient, clicker: Clicker, draft_id: int, outcome: DraftOutcome, *,
           final_text: str | None = None, reason: str | None = None) -> ReplyDraft | None:
    """Decide the draft once: post it for Send / Edit, record the decision, replace the private draft.

    Returns the decided draft, or None when this click changed nothing (the clicker was told why).
    """
    draft = _undecided(bot, client, clicker, draft_id)
    if draft is None:
        return None
    posts = outcome in (DraftOutcome.SENT, DraftOutcome.EDITED)
    other = _answered_by_another(bot, draft) if posts else None
    if other is not None:
        clicker.tell(client, draft, f"<@{bk.escape(other.decided_by or other.requested_by)}> already answered this "
                                    "question with their draft; nothing was posted. Discard yours, or reply yourself.")
        return None
    key = _decision_key(draft_id)
    if not claim_event(bot.db, key):
        clicker.tell(client, draft, what_happened(get_draft(bot.db, draft_id), expire_hours=bot.settings.draft_expire_hours))
        return None
    posted_ts = None
    if posts:
        text = final_text if outcome == DraftOutcome.EDITED and final_text else draft.draft
        fallback, blocks = posted_reply(draft, text, agent=clicker.user)
        try:
            posted = client.chat_postMessage(channel=draft.channel, thread_ts=draft.thread_ts, text=fallback, blocks=blocks)
        except SlackApiError as error:
            release_event(bot.db, key)  # nothing was posted: the next click may try again
            clicker.tell(client, draft, f":warning: Slack did not post the reply ({bk.escape(error.response.get('error'))}); "
                                        "nothing was sent. Try again.")
            return None
        posted_ts = posted.get("ts")
    decided = decide_draft(bot.db, draft_id, outcome, by=clicker.user, final_text=final_text, reason=reason,
                           posted_ts=posted_ts, sent_as_example=bot.settings.drafts_sent_as_examples)
    if decided is None:  # expired between the check and now (posted all the same: the agent meant it)
        log.warning("draft %s was decided elsewhere while %s acted on it", draft_id, clicker.user)
        clicker.tell(client, draft, what_happened(get_draft(bot.db, draft_id), expire_hours=bot.settings.draft_expire_hours))
        return None
    clicker.replace(bot, decided)
    return decided


def _open_modal(bot: BotContext, client: WebClient, clicker: Clicker, draft_id: int, *, trigger_id: str,
                response_url: str | None, build: Callable[[ReplyDraft, str | None], bk.Block]) -> None:
    """Open a modal for an undecided draft at once (trigger_ids expire in 3 s), on the listener's thread."""
    draft = _undecided(bot, client, clicker, draft_id)
    if draft is None:
        return
    try:
        client.views_open(trigger_id=trigger_id, view=build(draft, response_url))
    except SlackApiError as error:
        log.warning("views.open failed for draft %s: %s", draft_id, error.response.get("error"))
        clicker.tell(client, draft, "Slack did not let me open the form in time; click the button again.")


def _clicker(body: dict[str, Any], respond: Respond | None) -> Clicker:
    return Clicker(user=body["user"]["id"], respond=respond)


def _metadata_clicker(body: dict[str, Any], meta: dict[str, Any]) -> Clicker:
    url = meta.get("response_url")
    return Clicker(user=body["user"]["id"], respond=Respond(response_url=url) if isinstance(url, str) and url else None)


def _form_metadata(ack: Ack, view: dict[str, Any], *, title: str, callback_id: str) -> dict[str, Any] | None:
    """The draft form's metadata, or None after answering a form the bot did not write with "out of date"."""
    try:
        return view_metadata(view, draft=int)
    except StaleAction as stale:
        log.info("stale draft form: %s", stale)
        ack(response_action="update", view=stale_view(title, callback_id=callback_id + "_stale"))
        return None


def register(app: App, bot: BotContext) -> None:
    @app.action(SEND_ACTION)
    def on_send(ack: Ack, body: dict[str, Any], action: dict[str, Any], respond: Respond, client: WebClient) -> None:
        ack()
        draft_id = button_int(action, what="draft id")  # a forged value is answered by the app's error handler
        bot.defer(settle, bot, client, _clicker(body, respond), draft_id, DraftOutcome.SENT)

    @app.action(EDIT_ACTION)
    def on_edit(ack: Ack, body: dict[str, Any], action: dict[str, Any], respond: Respond, client: WebClient) -> None:
        ack()
        _open_modal(bot, client, _clicker(body, respond), button_int(action, what="draft id"),
                    trigger_id=body["trigger_id"], response_url=body.get("response_url"),
                    build=lambda draft, url: edit_view(draft, response_url=url))

    @app.action(DISCARD_ACTION)
    def on_discard(ack: Ack, body: dict[str, Any], action: dict[str, Any], respond: Respond, client: WebClient) -> None:
        ack()
        window = bot.settings.draft_reply_window_minutes
        _open_modal(bot, client, _clicker(body, respond), button_int(action, what="draft id"),
                    trigger_id=body["trigger_id"], response_url=body.get("response_url"),
                    build=lambda draft, url: discard_view(draft, response_url=url, reply_window_minutes=window))

    @app.view(EDIT_VIEW)
    def on_edit_submit(ack: Ack, body: dict[str, Any], view: dict[str, Any], client: WebClient) -> None:
        meta = _form_metadata(ack, view, title="Edit the draft", callback_id=EDIT_VIEW)
        if meta is None:
            return
        text = input_value(view, REPLY_BLOCK)
        if not text:
            ack(response_action="errors", errors={REPLY_BLOCK: "Write the reply to send, or close this and Discard the draft."})
            return
        ack()
        bot.defer(settle, bot, client, _metadata_clicker(body, meta), int(meta["draft"]), DraftOutcome.EDITED,
                  final_text=text)

    @app.view(DISCARD_VIEW)
    def on_discard_submit(ack: Ack, body: dict[str, Any], view: dict[str, Any], client: WebClient) -> None:
        meta = _form_metadata(ack, view, title="Discard the draft", callback_id=DISCARD_VIEW)
        if meta is None:
            return
        ack()
        bot.defer(settle, bot, client, _metadata_clicker(body, meta), int(meta["draft"]), DraftOutcome.DISCARDED,
                  reason=input_value(view, REASON_BLOCK) or None)


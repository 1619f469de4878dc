"""Capturing a message that is already an example, and the confirmation every capture posts.

A second capture of one Slack message opens the stored example (its redactions, edits and status), never the raw
thread again. Saving it changes the status only as the form said: unchanged it keeps its status, an edit of an
approved example goes back to review (where captures need review), and only a reviewer can reopen a rejected one.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING

from slack_sdk import WebClient
from slack_sdk.errors import SlackApiError

from bot import blocks as bk
from bot.capture_draft import Draft
from bot.review import confirmation_blocks
from storage.capture_drafts import delete_capture_draft
from storage.errors import FtbotError
from storage.examples import change_status, update_example
from storage.models import Example, stored_id
from storage.vocabulary import ExampleStatus

if TYPE_CHECKING:  # bot.app imports every feature (so this module): a type-only import avoids the cycle
    from bot.app import BotContext

log = logging.getLogger(__name__)


def draft_from_example(example: Example, user: str, *, may_reopen: bool) -> Draft:
    return Draft(
        source_key=example.source_key or "", channel=example.source_channel or "", ts=example.source_ts or "",
        thread_ts=example.source_thread_ts, permalink=example.source_permalink, captured_by=user,
        turns=[{"role": str(m.get("role")), "content": str(m.get("content") or "")} for m in example.messages],
        tags=list(example.tags), example_id=example.id, stored_hash=example.content_hash,
        may_reopen=may_reopen and example.status == ExampleStatus.REJECTED,
    )


def already_captured_notice(example: Example, draft: Draft, *, edits_need_review: bool) -> str:
    status = example.status
    who = f" by <@{bk.escape(example.approved_by)}>" if status == ExampleStatus.APPROVED and example.approved_by else ""
    notice = (f":information_source: Already captured as #{example.id} ({status}{who}). This form shows the stored "
              "example with its redactions and edits, not the thread as it is now.")
    if status == ExampleStatus.APPROVED:
        notice += " Saving it unchanged keeps it approved" + ("; an edit sends it back to review." if edits_need_review else ".")
    elif status == ExampleStatus.REJECTED:
        notice += (" Tick *Reopen for review* to send it back to the reviewers." if draft.may_reopen
                   else " It stays rejected: only a reviewer can reopen it.")
    else:
        notice += " It is waiting for review; saving keeps it there."
    return notice


def save_recapture(bot: BotContext, client: WebClient, draft: Draft, draft_key: str, *, user: str) -> None:
    """Save the stored example's edits; its status changes only as the notice in the form said."""
    assert draft.example_id is not None
    try:
        example = update_example(bot.db, draft.example_id, record=draft.record(), tags=draft.tags)
    except FtbotError as exc:
        client.chat_postEphemeral(channel=draft.channel, user=user, text=f":warning: {bk.escape(str(exc))}",
                                  thread_ts=draft.thread_ts)
        return
    delete_capture_draft(bot.db, draft_key)
    edited = example.content_hash != draft.stored_hash
    verb, note = ("Updated" if edited else "Unchanged"), None
    target = expected = None
    if draft.reopen and bot.roles.may_review(user):
        target, expected, verb = ExampleStatus.PENDING, ExampleStatus.REJECTED, "Reopened"
    elif edited and example.status == ExampleStatus.APPROVED and bot.roles.capture_status(user) != "approved":
        # Approved content must not change unseen: the edit goes back to the reviewers.
        target, expected = ExampleStatus.PENDING, ExampleStatus.APPROVED
        by = f" by <@{bk.escape(example.approved_by)}>" if example.approved_by else ""
        note = f"#{example.id} was approved{by}; it was edited, so it waits for review again."
    elif example.status == ExampleStatus.REJECTED:
        note = f"#{example.id} stays rejected: only a reviewer can reopen it."
    if target is not None:
        change = change_status(bot.db, stored_id(example), target, by=user, expected=expected)
        example = change.example
        if not change.changed:
            note = f"#{example.id} became {example.status} meanwhile: your edits were saved, its status was left as it is."
    confirm_capture(client, draft, example, user=user, created=False, verb=verb, note=note)


def confirm_capture(client: WebClient, draft: Draft, example: Example, *, user: str, created: bool, verb: str | None = None,
             note: str | None = None) -> None:
    text, confirm = confirmation_blocks(example, created=created, verb=verb, note=note)
    thread_ts = draft.thread_ts or draft.ts
    if example.status == "pending":
        # Reviewers need to see it: a reply in the captured thread, with Approve/Reject buttons.
        posted = client.chat_postMessage(channel=draft.channel, thread_ts=thread_ts, text=text, blocks=confirm)
        attach_full_text_if_long(client, draft, posted.get("ts"))
    else:
        client.chat_postEphemeral(channel=draft.channel, user=user, thread_ts=thread_ts, text=text, blocks=confirm)


def attach_full_text_if_long(client: WebClient, draft: Draft, thread_ts: str | None) -> None:
    text = "\n\n".join(f"[{t['role']}]\n{t['content']}" for t in draft.turns)
    if len(text) <= 1200:
        return
    try:
        bk.upload_file(client, draft.channel, content=text, filename=f"example-{draft.ts}.txt",
                       title="Full captured conversation", thread_ts=draft.thread_ts or draft.ts)
    except SlackApiError as exc:
        log.warning("could not attach the full conversation: %s", exc.response.get("error"))

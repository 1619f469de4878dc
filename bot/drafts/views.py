"""What drafts look like in Slack: the private draft with its buttons, the two modals, and the reply Send posts.

All model and customer text is escaped (``bot.blocks.escape``) before it reaches a ``mrkdwn`` field or a fallback
``text``: a draft holding ``<!channel>`` is shown, and posted, as text and never pings anyone. Button values hold the
draft id only; the modals' ``private_metadata`` the draft id and the click's ``response_url`` (read back with
``bot.payloads``, so anything else is "out of date").
"""

from __future__ import annotations

import json
from typing import Any

from bot import blocks as bk
from storage.models import ReplyDraft, stored_id
from storage.vocabulary import DraftOutcome

SEND_ACTION = "ft_draft_send"
EDIT_ACTION = "ft_draft_edit"
DISCARD_ACTION = "ft_draft_discard"
EDIT_VIEW = "ft_draft_edit_form"
DISCARD_VIEW = "ft_draft_discard_form"
REPLY_BLOCK = "reply"
REASON_BLOCK = "reason"
TEXT_ACTION = "text"
# The block of a reply Send or Edit posted: later drafts in the thread read that message as the agent's turn.
SENT_BLOCK_PREFIX = "ft_draft_sent_"
# What a section shows of a long text (Slack allows 3000 characters; the rest is in the next section).
_CHUNK = 2900
_QUESTION_PREVIEW = 300


def question_of(draft: ReplyDraft) -> str:
    """The customer's message the draft answers, as the model saw it (personal data redacted for OpenAI)."""
    return next((str(m.get("content") or "") for m in reversed(draft.prompt) if m.get("role") == "user"), "")


def _quote(text: str) -> str:
    """``text`` as a Slack block quote, escaped and shortened."""
    lines = bk.escape(bk.truncate(" ".join(text.split()), _QUESTION_PREVIEW)) or "…"
    return ">" + lines


def _chunks(text: str) -> list[str]:
    """``text`` escaped, in pieces a section holds (cut at a line break where there is one)."""
    escaped = bk.escape(text) or " "
    pieces: list[str] = []
    while len(escaped) > _CHUNK:
        cut = escaped.rfind("\n", 0, _CHUNK)
        cut = cut if cut > _CHUNK // 2 else _CHUNK
        pieces.append(escaped[:cut])
        escaped = escaped[cut:].lstrip("\n")
    pieces.append(escaped)
    return pieces


def draft_message(draft: ReplyDraft, *, note: str | None = None) -> tuple[str, list[bk.Block]]:
    """(fallback text, blocks) of the private draft: the question, the draft, the model, Send / Edit… / Discard."""
    draft_id = str(stored_id(draft))
    model = bk.escape(draft.model)
    text = bk.fallback(f"Draft reply ({model}): {bk.escape(draft.draft)}")
    out: list[bk.Block] = [
        bk.section(f":memo: *Draft reply* to\n{_quote(question_of(draft))}"),
        *[bk.section(piece) for piece in _chunks(draft.draft)[:2]],
        bk.actions(
            bk.button("Send", SEND_ACTION, draft_id, style="primary"),
            bk.button("Edit…", EDIT_ACTION, draft_id),
            bk.button("Discard", DISCARD_ACTION, draft_id),
            block_id=f"ft_draft_{draft_id}",
        ),
        bk.context(f"Drafted by *{model}* · only you can see this; nothing is posted until you click *Send* "
                   "(or *Send* in *Edit…*)."),
    ]
    if note:
        out.append(bk.context(note))
    return text, bk.fit_blocks(out)


def what_happened(draft: ReplyDraft, *, expire_hours: float | None = None) -> str:
    """Why a button did nothing: ``This draft was already sent by @x.``"""
    who = f"<@{bk.escape(draft.decided_by)}>" if draft.decided_by else "someone"
    if draft.outcome == DraftOutcome.SENT:
        return f"This draft was already sent by {who}; nothing more was posted."
    if draft.outcome == DraftOutcome.EDITED:
        return f"This draft was already edited and sent by {who}; nothing more was posted."
    if draft.outcome == DraftOutcome.DISCARDED:
        return f"This draft was already discarded by {who}; nothing was posted."
    if draft.outcome == DraftOutcome.EXPIRED:
        after = f" within {expire_hours:g} hours" if expire_hours else ""
        return (f"This draft expired: nobody sent it{after}. Ask for a fresh one with `@ftbot draft` in the thread; "
                "nothing was posted.")
    return "This draft is being sent or discarded by another click right now; nothing more was done."


def decided_message(draft: ReplyDraft, *, reply_window_minutes: float) -> tuple[str, list[bk.Block]]:
    """What replaces the private draft once the agent decided."""
    if draft.outcome == DraftOutcome.SENT:
        line = ":white_check_mark: Sent in the thread."
    elif draft.outcome == DraftOutcome.EDITED:
        line = ":white_check_mark: Sent in the thread, with your edits (they become training data for the next model)."
    else:
        reason = f" Reason: _{bk.escape(bk.truncate(draft.discard_reason, 500))}_." if draft.discard_reason else ""
        line = (f":wastebasket: Discarded; nothing was posted.{reason} Your own reply in this thread within "
                f"{reply_window_minutes:g} minutes becomes training data, preferred over the draft.")
    return bk.fallback(line), [bk.section(line), bk.context(f"Draft by *{bk.escape(draft.model)}*")]


def posted_reply(draft: ReplyDraft, text: str, *, agent: str) -> tuple[str, list[bk.Block]]:
    """The thread message Send or Edit posts: the text, then who sent it and which model drafted it."""
    pieces = _chunks(text)
    out = [bk.section(pieces[0], block_id=f"{SENT_BLOCK_PREFIX}{stored_id(draft)}"),
           *[bk.section(piece) for piece in pieces[1:]]]
    edited = " and edited" if text.strip() != draft.draft.strip() else ""
    out.append(bk.context(f"sent by <@{bk.escape(agent)}> · drafted by ftbot ({bk.escape(draft.model)}){edited}"))
    return bk.fallback(bk.escape(text)), bk.fit_blocks(out, note="_Too long for one Slack message: shortened here._")


def sent_draft_id(message: dict[str, Any]) -> int | None:
    """The draft a thread message was posted from (its first block's id), or None for any other message."""
    for block in message.get("blocks") or []:
        block_id = str(block.get("block_id") or "")
        if block_id.startswith(SENT_BLOCK_PREFIX) and block_id[len(SENT_BLOCK_PREFIX):].isdigit():
            return int(block_id[len(SENT_BLOCK_PREFIX):])
    return None


def _metadata(draft: ReplyDraft, response_url: str | None) -> str:
    return json.dumps({"draft": stored_id(draft), "response_url": response_url or ""})


def edit_view(draft: ReplyDraft, *, response_url: str | None) -> bk.Block:
    """The modal whose first input holds the draft; submitting it posts the edited text."""
    blocks = [
        bk.text_input(REPLY_BLOCK, "Reply", action_id=TEXT_ACTION, initial=draft.draft, multiline=True,
                      hint="Posted in the thread as you leave it. Your edit, preferred over the draft, trains the next model."),
        bk.context(f"Answering {_quote(question_of(draft))}"),
        bk.context(f"Drafted by *{bk.escape(draft.model)}*"),
    ]
    return bk.modal("Edit the draft", blocks, callback_id=EDIT_VIEW, submit="Send", close="Cancel",
                    private_metadata=_metadata(draft, response_url))


def discard_view(draft: ReplyDraft, *, response_url: str | None, reply_window_minutes: float) -> bk.Block:
    """The small modal Discard opens: an optional reason."""
    blocks = [
        bk.text_input(REASON_BLOCK, "Why not? (optional)", action_id=TEXT_ACTION, multiline=True, optional=True,
                      placeholder="Wrong policy, outdated price, too long…", max_length=1000),
        bk.context(f"Nothing is posted. Your own reply in the thread within {reply_window_minutes:g} minutes becomes "
                   "training data, preferred over this draft."),
    ]
    return bk.modal("Discard the draft", blocks, callback_id=DISCARD_VIEW, submit="Discard", close="Back",
                    private_metadata=_metadata(draft, response_url))


def input_value(view: dict[str, Any], block_id: str) -> str:
    """The text a modal's input held when it was submitted ("" when empty)."""
    values = (view.get("state") or {}).get("values") or {}
    entry = (values.get(block_id) or {}).get(TEXT_ACTION) or {}
    return str(entry.get("value") or "").replace("\r\n", "\n").strip()

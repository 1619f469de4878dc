"""Block Kit building blocks that respect Slack's limits, escaping of user text, and file uploads.

Every piece of user-supplied text goes through ``escape`` before it reaches a ``mrkdwn`` field, so a
customer message containing ``<!channel>`` or ``<@U123>`` is shown as text and never pings anyone.
"""

from __future__ import annotations

import json
import logging
from typing import Any

from slack_sdk import WebClient
from slack_sdk.errors import SlackApiError

log = logging.getLogger(__name__)

# Limits from Slack's Block Kit reference (https://api.slack.com/reference/block-kit/blocks).
MAX_MESSAGE_BLOCKS = 50
MAX_VIEW_BLOCKS = 100
MAX_SECTION_TEXT = 3000
MAX_HEADER_TEXT = 150
MAX_BUTTON_TEXT = 75
MAX_VIEW_TITLE = 24
MAX_PRIVATE_METADATA = 3000
MAX_INPUT_VALUE = 3000
MAX_OPTION_TEXT = 75
MAX_CONTEXT_TEXT = 2000
MAX_FALLBACK_TEXT = 3000
# Slack rejects a message with msg_blocks_too_long at around 13k characters of blocks JSON; stay well under.
MAX_MESSAGE_CHARS = 11000

Block = dict[str, Any]


def escape(text: object) -> str:
    """Escape Slack's control characters so user text is shown literally (no mentions, links or broadcasts)."""
    return str(text if text is not None else "").replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")


def truncate(text: str, limit: int, marker: str = "…") -> str:
    """Shorten ``text`` to at most ``limit`` characters, ending with ``marker`` when cut."""
    if len(text) <= limit:
        return text
    return text[: max(0, limit - len(marker))] + marker


def plain(text: str, limit: int = MAX_SECTION_TEXT) -> dict[str, Any]:
    # plain_text is never parsed for mentions, but &<> still need escaping for Slack's renderer.
    return {"type": "plain_text", "text": truncate(text, limit) or " ", "emoji": True}


def mrkdwn(text: str, limit: int = MAX_SECTION_TEXT) -> dict[str, Any]:
    """A mrkdwn text object; ``text`` must already be escaped where it holds user text."""
    return {"type": "mrkdwn", "text": truncate(text, limit) or " "}


def header(text: str) -> Block:
    return {"type": "header", "text": plain(text, MAX_HEADER_TEXT)}


def section(text: str, *, accessory: Block | None = None, block_id: str | None = None) -> Block:
    block: Block = {"type": "section", "text": mrkdwn(text)}
    if accessory:
        block["accessory"] = accessory
    if block_id:
        block["block_id"] = block_id
    return block


def fields_section(pairs: list[tuple[str, str]]) -> Block:
    """A section of up to 10 two-column fields (label, value), both already escaped."""
    return {
        "type": "section",
        "fields": [mrkdwn(f"*{label}*\n{value}", 2000) for label, value in pairs[:10]],
    }


def context(text: str) -> Block:
    return {"type": "context", "elements": [mrkdwn(text, MAX_CONTEXT_TEXT)]}


def divider() -> Block:
    return {"type": "divider"}


def button(text: str, action_id: str, value: str = "", *, style: str | None = None, url: str | None = None,
           confirm: Block | None = None) -> Block:
    element: Block = {"type": "button", "text": plain(text, MAX_BUTTON_TEXT), "action_id": action_id}
    if value:
        element["value"] = value[:2000]
    if style in ("primary", "danger"):
        element["style"] = style
    if url:
        element["url"] = url
    if confirm:
        element["confirm"] = confirm
    return element


def confirm_dialog(title: str, text: str, *, confirm: str, deny: str = "Back") -> Block:
    """The "are you sure?" dialog Slack shows before a dangerous button acts (``button(..., confirm=...)``)."""
    # Slack's limits for a confirmation dialog: title 100, text 300, button labels 30 characters.
    return {"title": plain(title, 100), "text": mrkdwn(text, 300), "confirm": plain(confirm, 30), "deny": plain(deny, 30),
            "style": "danger"}


def actions(*elements: Block, block_id: str | None = None) -> Block:
    block: Block = {"type": "actions", "elements": list(elements)[:25]}
    if block_id:
        block["block_id"] = block_id
    return block


def text_input(
    block_id: str,
    label: str,
    *,
    action_id: str = "value",
    initial: str | None = None,
    multiline: bool = False,
    optional: bool = False,
    placeholder: str | None = None,
    hint: str | None = None,
    max_length: int = MAX_INPUT_VALUE,
) -> Block:
    element: Block = {"type": "plain_text_input", "action_id": action_id, "multiline": multiline, "max_length": max_length}
    if initial:
        element["initial_value"] = initial[:max_length]
    if placeholder:
        element["placeholder"] = plain(placeholder, 150)
    block: Block = {"type": "input", "block_id": block_id, "label": plain(label, 2000), "element": element, "optional": optional}
    if hint:
        block["hint"] = plain(hint, 2000)
    return block


def fit_blocks(blocks: list[Block], *, max_blocks: int = MAX_MESSAGE_BLOCKS, note: str | None = None) -> list[Block]:
    """Keep a message within the block count and total size limits, ending with a note when something was cut."""
    note_block = context(note or "_Truncated to fit Slack's limits; the full text is attached as a file._")
    out: list[Block] = []
    size = len(json.dumps(note_block))
    for i, block in enumerate(blocks):
        block_size = len(json.dumps(block))
        room_for_note = i < len(blocks) - 1
        if len(out) >= max_blocks - (1 if room_for_note else 0) or size + block_size > MAX_MESSAGE_CHARS:
            out.append(note_block)
            return out
        out.append(block)
        size += block_size
    return out


def blocks_fit(blocks: list[Block], *, max_blocks: int = MAX_MESSAGE_BLOCKS) -> bool:
    return len(blocks) <= max_blocks and len(json.dumps(blocks)) <= MAX_MESSAGE_CHARS


def fallback(text: str) -> str:
    """The ``text`` fallback sent with every message (notifications, screen readers)."""
    return truncate(text, MAX_FALLBACK_TEXT)


def modal(title: str, blocks: list[Block], *, callback_id: str, submit: str | None = None, close: str = "Close",
          private_metadata: str = "", external_id: str | None = None) -> Block:
    if len(private_metadata) > MAX_PRIVATE_METADATA:
        raise ValueError(f"private_metadata is {len(private_metadata)} characters; Slack allows {MAX_PRIVATE_METADATA}")
    view: Block = {
        "type": "modal",
        "callback_id": callback_id,
        "title": plain(title, MAX_VIEW_TITLE),
        "close": plain(close, MAX_VIEW_TITLE),
        "blocks": blocks[:MAX_VIEW_BLOCKS],
        "private_metadata": private_metadata,
    }
    if submit:
        view["submit"] = plain(submit, MAX_VIEW_TITLE)
    if external_id:
        view["external_id"] = external_id
    return view


def upload_file(
    client: WebClient,
    channel: str,
    *,
    content: str | bytes,
    filename: str,
    title: str | None = None,
    initial_comment: str | None = None,
    thread_ts: str | None = None,
) -> dict[str, Any]:
    """Upload a file to a channel with ``files_upload_v2`` (getUploadURLExternal → upload → completeUploadExternal).

    Returns the first uploaded file object.
    """
    kwargs: dict[str, Any] = dict(channel=channel, content=content, filename=filename, title=title or filename)
    if initial_comment:
        kwargs["initial_comment"] = initial_comment
    if thread_ts:
        kwargs["thread_ts"] = thread_ts
    response = client.files_upload_v2(**kwargs)
    files = response.get("files") or [response.get("file") or {}]
    return files[0]


def send_worker_log(client: WebClient, user: str, *, text: str, heading: str, tail: str,
                    full_log: tuple[str, str] | None = None) -> bool:
    """Send the end of a failed worker's log to ``user``'s direct message with the bot; False when Slack refused.

    Logs hold customer text and server paths: they go to the trainer who started the work, never to a channel.
    ``text`` is the notification fallback, ``heading`` the first block's mrkdwn. ``full_log`` (file name, text): the
    whole log as a file in the same conversation (a worker that ran on another machine leaves no log file here).
    """
    try:
        dm = client.conversations_open(users=user)["channel"]["id"]
        client.chat_postMessage(channel=dm, text=text,
                                blocks=fit_blocks([section(heading), section("```" + escape(truncate(tail, 2500)) + "```")]))
        if full_log is not None and full_log[1].strip():
            upload_file(client, dm, content=full_log[1], filename=full_log[0], title="The whole worker log")
    except SlackApiError as error:
        log.warning("cannot send a worker log to %s: %s", user, error.response.get("error"))
        return False
    return True

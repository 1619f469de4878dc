"""Block Kit → terminal text, for the console. Buttons and inputs get numbers the user types back."""

from __future__ import annotations

import mimetypes
import re
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from bot.console.date_markup import is_date_markup, render_date

_LINK = re.compile(r"<([^<>]+)>")


@dataclass
class Button:
    label: str
    action_id: str
    value: str
    block_id: str
    # ("message", channel, ts) | ("ephemeral", channel, "") | ("view", view_id, "")
    where: tuple[str, str, str]


def mrkdwn_to_text(text: str, name_of: Callable[[str], str] = lambda u: u) -> str:
    def replace(match: re.Match[str]) -> str:
        target, _, label = match.group(1).partition("|")
        if target.startswith("@"):
            return "@" + name_of(target[1:])
        if target.startswith("#"):
            return "#" + (label or name_of(target[1:]))
        if target.startswith("!subteam^"):
            return label or "@" + name_of(target[9:])
        if is_date_markup(target):
            return render_date(target, label)
        if target.startswith("!"):
            return "@" + target[1:]
        return f"{label} ({target})" if label and label != target else target

    out = _LINK.sub(replace, text or "")
    return out.replace("&lt;", "<").replace("&gt;", ">").replace("&amp;", "&")


def _text(obj: object, name_of: Callable[[str], str]) -> str:
    if not isinstance(obj, dict):
        return ""
    text = obj.get("text") or ""
    return mrkdwn_to_text(text, name_of) if obj.get("type") == "mrkdwn" else text


def render_blocks(blocks: list[dict[str, Any]], *, name_of: Callable[[str], str], buttons: list[Button],
                  where: tuple[str, str, str], inputs: list[tuple[str, str, str]] | None = None,
                  values: dict[str, str] | None = None, indent: str = "    ") -> list[str]:
    """Lines for ``blocks``; appends every button to ``buttons`` (numbered from 1) and inputs to ``inputs``."""
    lines: list[str] = []
    for block in blocks:
        kind = block.get("type")
        if kind == "header":
            lines.append(f"== {_text(block.get('text'), name_of)} ==")
        elif kind == "section":
            if block.get("text"):
                lines.extend(_text(block["text"], name_of).splitlines() or [""])
            for f in block.get("fields") or []:
                lines.append("  " + _text(f, name_of).replace("\n", ": ", 1))
            accessory = block.get("accessory")
            if accessory and accessory.get("type") == "button":
                buttons.append(Button(_text(accessory.get("text"), name_of), accessory["action_id"],
                                      accessory.get("value", ""), block.get("block_id", ""), where))
                lines.append(f"  [{len(buttons)}: {buttons[-1].label}]")
        elif kind == "context":
            lines.append("  " + " ".join(_text(e, name_of) for e in block.get("elements") or []))
        elif kind == "divider":
            lines.append("  ---")
        elif kind == "actions":
            labels = []
            for element in block.get("elements") or []:
                if element.get("type") == "button":
                    buttons.append(Button(_text(element.get("text"), name_of), element["action_id"], element.get("value", ""),
                                          block.get("block_id", ""), where))
                    labels.append(f"[{len(buttons)}: {buttons[-1].label}]")
            lines.append("  " + " ".join(labels))
        elif kind == "input" and inputs is not None:
            element = block.get("element") or {}
            block_id = block.get("block_id", "")
            inputs.append((block_id, element.get("action_id", "value"), _text(block.get("label"), name_of)))
            value = (values or {}).get(block_id, element.get("initial_value") or "")
            optional = " (optional)" if block.get("optional") else ""
            lines.append(f"  <field {len(inputs)}> {inputs[-1][2]}{optional}:")
            lines.extend("      " + line for line in (value.splitlines() or ["(empty)"]))
    return [indent + line for line in lines]


# Magic numbers of the binary files the bot uploads (charts) and a few common others.
_SIGNATURES = (
    (b"\x89PNG\r\n\x1a\n", "PNG image"),
    (b"\xff\xd8\xff", "JPEG image"),
    (b"GIF8", "GIF image"),
    (b"%PDF-", "PDF document"),
    (b"PK\x03\x04", "ZIP archive"),
)
PREVIEW_LINES = 3


def is_binary(content: bytes) -> bool:
    """True for content a terminal cannot show as text: a NUL byte or invalid UTF-8 in its first 8 KiB."""
    head = content[:8192]
    if b"\0" in head:
        return True
    try:
        head.decode("utf-8")
    except UnicodeDecodeError as error:
        # A multi-byte character cut at the 8 KiB boundary is still text.
        return error.start < len(head) - 3
    return False


def file_kind(name: str, content: bytes) -> str:
    """A short description of a file's type, from its first bytes, else from its name."""
    for signature, kind in _SIGNATURES:
        if content.startswith(signature):
            return kind
    mime, _ = mimetypes.guess_type(name)
    return mime or "binary data"


def human_size(size: int) -> str:
    if size < 1024:
        return f"{size} bytes"
    if size < 1024 * 1024:
        return f"{round(size / 1024)} KB"
    return f"{size / (1024 * 1024):.1f} MB"


def file_lines(title: str, name: str, content: bytes, *, saved_to: Path | None) -> list[str]:
    """How the console shows an uploaded file: a short preview for text, where it was saved for binary files."""
    if is_binary(content):
        where = f" saved to {saved_to}" if saved_to is not None else " (not saved)"
        return [f"[file] {name} ({human_size(len(content))}, {file_kind(name, content)}){where}"]
    preview = content.decode("utf-8", "replace").splitlines()[:PREVIEW_LINES]
    return [f"[file] {title} ({name}, {len(content)} bytes)", *("    | " + line[:160] for line in preview)]

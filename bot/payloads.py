"""Reading back what the bot itself wrote into a button's ``value`` or a modal's ``private_metadata``.

Slack echoes these strings unchanged on a click or a submission, so a value that does not parse is not one
this version of the bot wrote: a message from an older ftbot, or a hand-made request. Every reader here raises
``StaleAction`` for it, and the app's error handler answers the user privately with ``STALE_ACTION_MESSAGE``
(``tell_stale``) instead of a traceback in the log; a modal answers with ``stale_view`` instead.
"""

from __future__ import annotations

import json
from typing import Any

from slack_bolt import Respond

from bot import blocks as bk
from storage.errors import StaleAction

# Stored ids are PostgreSQL INTEGER columns (SQLModel's ``int``): anything larger is not an id the bot wrote,
# and a command given one answers with a usage line instead of an overflow in the database driver.
MAX_STORED_ID = 2**31 - 1
# OpenAI's fine-tuning API accepts n_epochs from 1 to 50; local training takes the same bound (/ft train, ftbot train).
MAX_EPOCHS = 50

STALE_ACTION_MESSAGE = ("This button is out of date: it no longer matches anything ftbot knows. "
                        "Run the command again for a fresh message.")


def id_value(raw: object, *, what: str = "id") -> int:
    """A positive id as the bot writes it: ASCII digits (or a JSON integer) within ``MAX_STORED_ID``."""
    if isinstance(raw, int) and not isinstance(raw, bool):
        number = raw
    elif isinstance(raw, str) and raw.isascii() and raw.isdigit() and len(raw) <= len(str(MAX_STORED_ID)):
        number = int(raw)
    else:
        raise StaleAction(f"{what} {str(raw)[:40]!r} is not an id")
    if not 1 <= number <= MAX_STORED_ID:
        raise StaleAction(f"{what} {number} is out of range")
    return number


def button_int(action: dict[str, Any], *, what: str = "id") -> int:
    """The id in a button's ``value`` (``button(..., value=str(id))``)."""
    return id_value(action.get("value"), what=what)


def _object_with(raw: object, where: str, fields: dict[str, type]) -> dict[str, Any]:
    try:
        value = json.loads(raw) if isinstance(raw, str) else None
    except ValueError:
        value = None
    if not isinstance(value, dict):
        raise StaleAction(f"{where} is not a JSON object")
    for name, kind in fields.items():
        if kind is int:
            id_value(value.get(name), what=f"{where} {name}")
        elif not isinstance(value.get(name), kind):
            raise StaleAction(f"{where} has no {kind.__name__} {name!r}")
    return value


def button_json(action: dict[str, Any], **fields: type) -> dict[str, Any]:
    """The JSON object in a button's ``value``, with each named field present and of its type (``int``: an id)."""
    return _object_with(action.get("value"), "button value", fields)


def view_metadata(view: dict[str, Any], **fields: type) -> dict[str, Any]:
    """The JSON object in a modal's ``private_metadata``, checked like ``button_json``."""
    return _object_with(view.get("private_metadata"), "private_metadata", fields)


def tell_stale(respond: Respond | None) -> None:
    """Answer the person who clicked, privately, leaving the message they clicked on as it is."""
    if respond is not None:
        respond(text=STALE_ACTION_MESSAGE, response_type="ephemeral", replace_original=False)


def stale_view(title: str, *, callback_id: str) -> bk.Block:
    """What a modal shows in place of a form whose metadata the bot did not write."""
    return bk.modal(title, [bk.section(f":warning: {STALE_ACTION_MESSAGE}")], callback_id=callback_id)

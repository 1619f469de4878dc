"""Removing secrets and server details from text that came from outside (OpenAI, Slack, a worker's log).

Error bodies sometimes echo what was sent: an API key, a Slack token, an ``Authorization`` header. Every place
that stores or posts such text passes it through :func:`scrub_credentials` first, so a secret never lands in the
database, a Slack channel or a DM.
"""

from __future__ import annotations

import re
from pathlib import Path

REDACTED = "[redacted]"

_CREDENTIALS = re.compile(
    r"""
    \bsk-[A-Za-z0-9_\-]{3,}            # OpenAI keys: sk-..., sk-proj-..., sk-svcacct-...
    | \bxox[abprs]-[A-Za-z0-9\-]+      # Slack bot, user, app-level, refresh... tokens
    | \bxapp-[A-Za-z0-9\-]+            # Slack app-level tokens (Socket Mode)
    """,
    re.VERBOSE,
)
_BEARER = re.compile(r"\b(Bearer)\s+[A-Za-z0-9._~+/=\-]+", re.IGNORECASE)


def scrub_credentials(text: str) -> str:
    """``text`` with anything that looks like an API key, a Slack token or a bearer token replaced by ``[redacted]``."""
    return _CREDENTIALS.sub(REDACTED, _BEARER.sub(rf"\1 {REDACTED}", text))


def scrub_optional(text: str | None) -> str | None:
    """:func:`scrub_credentials` for a value that may be missing."""
    return None if text is None else scrub_credentials(text)


def hide_paths(text: str, root: Path | str, *, label: str = "<ftbot home>") -> str:
    """``text`` with the server path ``root`` (e.g. ftbot's home) replaced by ``label``, for text shown to others."""
    value = str(root).rstrip("/")
    if not value:
        return text
    resolved = str(Path(value).resolve())
    for prefix in sorted({value, resolved}, key=len, reverse=True):
        text = text.replace(prefix, label)
    return text

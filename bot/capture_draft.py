"""The example being edited in a capture modal (``bot.capture``), stored between clicks in ``storage.capture_drafts``."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from storage.records import sft_record


@dataclass
class Draft:
    """The example being edited in a capture modal."""

    source_key: str
    channel: str
    ts: str
    thread_ts: str | None
    permalink: str | None
    captured_by: str
    turns: list[dict[str, str]]  # {"role", "content"}; the first is the system prompt
    tags: list[str] = field(default_factory=list)
    # Bumped by each redaction: new block_ids make Slack show the new values.
    rev: int = 0
    # Set when the message was captured before: the form shows that stored example (its redactions, edits and
    # status), and saving updates it instead of capturing the raw thread again.
    example_id: int | None = None
    stored_hash: str | None = None  # its content when the form opened: saving it unchanged keeps its status
    may_reopen: bool = False  # a rejected example and a reviewer: the form offers to reopen it
    reopen: bool = False

    def record(self) -> dict[str, Any]:
        return sft_record([{"role": t["role"], "content": t["content"]} for t in self.turns])

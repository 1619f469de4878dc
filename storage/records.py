"""OpenAI training lines as plain dicts: canonical form, content hash, and the SFT line builder.

The canonical JSON text is what makes two examples "the same": the database keys exact duplicates on
its hash, snapshots hash their members with it, and the validator's duplicate check uses it too.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Sequence
from typing import Any

__all__ = ["canonical_json", "content_hash", "sft_record", "dpo_record"]


def canonical_json(obj: object) -> str:
    """Sorted keys, no whitespace, non-ASCII kept as is: one text per logical value."""
    return json.dumps(obj, sort_keys=True, separators=(",", ":"), ensure_ascii=False)


def content_hash(obj: object) -> str:
    """sha256 hex digest of ``canonical_json(obj)`` (UTF-8)."""
    return hashlib.sha256(canonical_json(obj).encode("utf-8")).hexdigest()


def sft_record(
    messages: Sequence[dict[str, Any]],
    tools: Sequence[dict[str, Any]] | None = None,
    parallel_tool_calls: bool | None = None,
) -> dict[str, Any]:
    """An OpenAI supervised fine-tuning line; keys whose value is None are left out."""
    record: dict[str, Any] = {"messages": [dict(message) for message in messages]}
    if tools is not None:
        record["tools"] = [dict(tool) for tool in tools]
    if parallel_tool_calls is not None:
        record["parallel_tool_calls"] = bool(parallel_tool_calls)
    return record


def dpo_record(
    messages: Sequence[dict[str, Any]],
    preferred: dict[str, Any],
    non_preferred: dict[str, Any],
    tools: Sequence[dict[str, Any]] | None = None,
    parallel_tool_calls: bool | None = None,
) -> dict[str, Any]:
    """An OpenAI DPO (preference) line: the shared prompt and one preferred and one rejected reply."""
    prompt = sft_record(messages, tools, parallel_tool_calls)
    return {
        "input": prompt,
        "preferred_output": [dict(preferred)],
        "non_preferred_output": [dict(non_preferred)],
    }

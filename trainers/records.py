"""The OpenAI SFT line and the content hash that identifies it everywhere (storage, snapshots, dedup)."""

from __future__ import annotations

import hashlib
import json
from typing import Any


def canonical_json(obj: Any) -> str:
    """One spelling per value: sorted keys, no spaces, UTF-8 kept as is (so hashes match across tools)."""
    return json.dumps(obj, sort_keys=True, separators=(",", ":"), ensure_ascii=False)


def content_hash(obj: Any) -> str:
    """sha256 hex of ``canonical_json(obj)``."""
    return hashlib.sha256(canonical_json(obj).encode("utf-8")).hexdigest()


def sft_record(
    messages: list[dict[str, Any]],
    tools: list[dict[str, Any]] | None = None,
    parallel_tool_calls: bool | None = None,
) -> dict[str, Any]:
    """An OpenAI fine-tuning SFT line; keys whose value is None are left out."""
    record: dict[str, Any] = {"messages": messages}
    if tools is not None:
        record["tools"] = tools
    if parallel_tool_calls is not None:
        record["parallel_tool_calls"] = parallel_tool_calls
    return record

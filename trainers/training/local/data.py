"""OpenAI training lines → the conversational rows TRL's trainers read (pure Python)."""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any


def hf_chat_message(message: Mapping[str, Any]) -> dict[str, Any]:
    """An OpenAI chat message in the shape HF chat templates expect."""
    out: dict[str, Any] = {"role": message["role"], "content": _text(message.get("content"))}
    if message.get("name"):
        out["name"] = message["name"]
    if message.get("tool_calls"):
        calls = []
        for call in message["tool_calls"]:
            function = dict(call.get("function") or {})
            # OpenAI lines carry arguments as a JSON string; HF templates render a mapping.
            if isinstance(function.get("arguments"), str):
                try:
                    function["arguments"] = json.loads(function["arguments"])
                except ValueError:
                    pass
            calls.append({"type": call.get("type", "function"), "id": call.get("id"), "function": function})
        out["tool_calls"] = calls
    if message.get("tool_call_id"):
        out["tool_call_id"] = message["tool_call_id"]
    return out


def _text(content: Any) -> str:
    if content is None:
        return ""
    if isinstance(content, str):
        return content
    # A list of parts: keep the text parts (images cannot train a text-only model).
    return "".join(part.get("text", "") for part in content if isinstance(part, dict) and part.get("type") == "text")


def sft_row(record: dict[str, Any]) -> dict[str, Any]:
    """``{"messages": [...]}`` (+ ``tools``) for ``SFTTrainer``.

    OpenAI's per-message ``weight`` has no TRL equivalent: a weight-0 assistant turn is trained like the others
    (the quote warns about this for the local back end).
    """
    row: dict[str, Any] = {"messages": [hf_chat_message(m) for m in record["messages"]]}
    if record.get("tools"):
        row["tools"] = record["tools"]
    return row


def dpo_row(record: dict[str, Any]) -> dict[str, Any]:
    """``{"prompt", "chosen", "rejected"}`` conversational rows for ``DPOTrainer`` from an OpenAI preference line."""
    return {
        "prompt": [hf_chat_message(m) for m in record["input"]["messages"]],
        "chosen": [hf_chat_message(m) for m in record["preferred_output"]],
        "rejected": [hf_chat_message(m) for m in record["non_preferred_output"]],
    }

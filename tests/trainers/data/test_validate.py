"""The data checks engine: per-line checks, the streaming reader, and build_report's cross-line checks."""

from __future__ import annotations

import copy
import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from trainers.data import report as report_module
from trainers.data.duplicates import NUM_PERM, SKETCH_SIZE, ExactDuplicates, NearDuplicateIndex, band_keys, minhash_signatures, reply_sketches, sketch_jaccard
from storage.errors import DataFileError
from trainers.data.pricing import PriceTable
from trainers.data.report import MAX_ISSUES_PER_CODE, build_report
from trainers.data.tokens import count_record_tokens, encoding_for_model
from trainers.data.validate import ERROR_CODES, WARNING_CODES, LineTooLong, check_record, read_jsonl
from tests.fixtures.paths import REPO

SPEC = Path("/work/shared/data/openai/openapi-2025-07-training-formats.yaml")
SYSTEM = "You are Acme's support assistant. Be concise and kind."


def conversation(question: str, reply: str, *, system: str | None = SYSTEM) -> dict[str, Any]:
    messages = [{"role": "system", "content": system}] if system is not None else []
    messages += [{"role": "user", "content": question}, {"role": "assistant", "content": reply}]
    return {"messages": messages}


TOOL_CALL_LINE = {
    "messages": [
        {"role": "system", "content": SYSTEM},
        {"role": "user", "content": "Where is order 42?"},
        {"role": "assistant", "content": None, "tool_calls": [
            {"id": "call_1", "type": "function", "function": {"name": "lookup_order", "arguments": "{\"id\": \"42\"}"}}]},
        {"role": "tool", "tool_call_id": "call_1", "content": "{\"status\": \"shipped\"}"},
        {"role": "assistant", "content": "Order 42 shipped today and should arrive on Friday.", "weight": 1},
    ],
    "tools": [{"type": "function", "function": {"name": "lookup_order", "description": "Find an order",
                                                 "parameters": {"type": "object", "properties": {"id": {"type": "string"}}}}}],
    "parallel_tool_calls": False,
}
WEIGHTED_LINE = {
    "messages": [
        {"role": "system", "content": SYSTEM},
        {"role": "user", "content": "My invoice has the wrong company name."},
        {"role": "assistant", "content": "Please contact billing.", "weight": 0},
        {"role": "user", "content": "Can't you fix it?"},
        {"role": "assistant", "content": "Yes: update Billing details, then regenerate the invoice PDF.", "weight": 1},
    ]
}
DPO_LINE = {
    "input": {"messages": [{"role": "system", "content": SYSTEM}, {"role": "user", "content": "Can I get a refund after 12 days?"}]},
    "preferred_output": [{"role": "assistant", "content": "Yes, you are within the 30-day window, so I have started a full refund."}],
    "non_preferred_output": [{"role": "assistant", "content": "Refunds are not possible, sorry about that my friend."}],
}
PARTS_LINE = {
    "messages": [
        {"role": "system", "content": [{"type": "text", "text": SYSTEM}]},
        {"role": "user", "content": [{"type": "text", "text": "What is on this screenshot?"},
                                     {"type": "image_url", "image_url": {"url": "https://example.com/s.png"}}]},
        {"role": "assistant", "content": "It shows the sync error E42; restarting the client clears it."},
    ]
}


def varied_lines(count: int) -> list[dict[str, Any]]:
    topics = ["refund", "invoice", "password", "sync", "storage", "sharing", "billing", "export", "api", "security",
              "mobile", "linux", "trash", "versions", "members", "nonprofit", "encryption", "upload", "region", "cookies"]
    verbs = ["open", "check", "update", "restart", "review", "confirm", "download", "enable", "remove", "contact"]
    return [
        conversation(
            f"Question {index} about {topics[index % len(topics)]}?",
            f"For {topics[index % len(topics)]} issue {index}, {verbs[index % len(verbs)]} the {topics[(index * 7) % len(topics)]} "
            f"settings page number {index * 13} and {verbs[(index * 3) % len(verbs)]} item {index * 31} afterwards.",
        )
        for index in range(count)
    ]


def write_jsonl(path: Path, values: list[Any]) -> Path:
    path.write_text("".join((value if isinstance(value, str) else json.dumps(value)) + "\n" for value in values), encoding="utf-8")
    return path


# --- per-line checks ---------------------------------------------------------------------------------


@pytest.mark.parametrize("line", [conversation("Hi?", "Hello, how can I help you today?"), TOOL_CALL_LINE, WEIGHTED_LINE, PARTS_LINE, DPO_LINE])
def test_valid_lines_have_no_errors(line: dict[str, Any]) -> None:
    checked = check_record(line, 7)
    assert checked.errors == []
    assert checked.record is line
    assert checked.kind == ("dpo" if "input" in line else "sft")


BAD_LINES: list[tuple[Any, str, str]] = [
    (["not", "an", "object"], "data_type", "got a list"),
    ({"messages": "hello"}, "missing_messages_list", "messages"),
    ({"messages": []}, "missing_messages_list", "empty list"),
    ({"prompt": "x", "completion": "y"}, "missing_messages_list", "messages is missing"),
    ({"messages": [{"content": "hi"}, {"role": "assistant", "content": "hello there friend"}]}, "message_missing_key", "messages[0] has no \"role\""),
    ({"messages": [{"role": "user"}, {"role": "assistant", "content": "hello there friend"}]}, "message_missing_key", "messages[0] (user) has no \"content\""),
    ({"messages": [{"role": "user", "content": "hi", "lang": "en"}, {"role": "assistant", "content": "hello there friend"}]}, "message_unrecognized_key", "'lang'"),
    ({"messages": [{"role": "developer", "content": "be nice"}, {"role": "assistant", "content": "hello there friend"}]}, "unrecognized_role", "use \"system\""),
    ({"messages": [{"role": "bot", "content": "hi"}, {"role": "assistant", "content": "hello there friend"}]}, "unrecognized_role", "messages[0].role is 'bot'"),
    ({"messages": [{"role": "user", "content": ""}, {"role": "assistant", "content": "hello there friend"}]}, "missing_content", "messages[0] (user) has empty content"),
    ({"messages": [{"role": "user", "content": None}, {"role": "assistant", "content": "hello there friend"}]}, "missing_content", "null content"),
    ({"messages": [{"role": "user", "content": 42}, {"role": "assistant", "content": "hello there friend"}]}, "missing_content", "not a number"),
    ({"messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": None}]}, "missing_content", "messages[1] (assistant) has null content"),
    ({"messages": [{"role": "system", "content": "s"}, {"role": "user", "content": "hi"}]}, "example_missing_assistant_message", "no assistant message"),
    ({"messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "hello there", "weight": 0}]}, "example_missing_assistant_message", "weight 1"),
    ({"messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "hello there friend", "weight": 2}]}, "invalid_weight", "messages[1].weight is 2"),
    ({"messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "hello there friend", "weight": True}]}, "invalid_weight", "weight is true"),
    ({"messages": [{"role": "user", "content": "hi", "weight": 1}, {"role": "assistant", "content": "hello there friend"}]}, "invalid_weight", "only assistant messages"),
    ({"messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": None, "tool_calls": [
        {"id": "c1", "type": "function", "function": {"name": "f", "arguments": {"id": 1}}}]}]}, "invalid_tool_call", "must be a JSON string"),
    ({"messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": None, "tool_calls": [
        {"id": "c1", "type": "function", "function": {"name": "f", "arguments": "{oops"}}]}]}, "invalid_tool_call", "not valid JSON"),
    ({"messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": None, "tool_calls": []}]}, "invalid_tool_call", "non-empty list"),
    ({"messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": None, "tool_calls": [
        {"id": "c1", "type": "function", "function": {"name": "g", "arguments": "{}"}}]}],
      "tools": [{"type": "function", "function": {"name": "f"}}]}, "invalid_tool_call", "not defined in \"tools\""),
    ({"messages": [{"role": "user", "content": "hi"}, {"role": "tool", "tool_call_id": "nope", "content": "{}"},
                   {"role": "assistant", "content": "hello there friend"}]}, "invalid_tool_call", "answers no earlier assistant tool call"),
    ({"messages": [{"role": "user", "content": "hi"}, {"role": "tool", "content": "{}"},
                   {"role": "assistant", "content": "hello there friend"}]}, "message_missing_key", "tool_call_id"),
    ({"messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "hello there friend"}], "parallel_tool_calls": "yes"}, "data_type", "true or false"),
    ({"messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "hello there friend"}], "meta": 1}, "data_type", "unrecognized top-level key 'meta'"),
    ({"messages": [{"role": "assistant", "content": [{"type": "image_url", "image_url": {"url": "u"}}]}]}, "data_type", "images are accepted in user messages only"),
    ({"input": {"messages": [{"role": "user", "content": "hi"}]}, "preferred_output": [{"role": "assistant", "content": "good answer here"}]},
     "example_missing_assistant_message", "non_preferred_output"),
    ({"input": {"messages": [{"role": "user", "content": "hi"}]}, "preferred_output": [{"role": "user", "content": "x"}],
      "non_preferred_output": [{"role": "assistant", "content": "bad"}]}, "unrecognized_role", "preferred_output[0].role"),
    ({"input": {}, "preferred_output": [{"role": "assistant", "content": "a"}], "non_preferred_output": [{"role": "assistant", "content": "b"}]},
     "missing_messages_list", "messages"),
]


@pytest.mark.parametrize(("value", "code", "fragment"), BAD_LINES)
def test_each_error_code_says_where_and_what(value: Any, code: str, fragment: str) -> None:
    checked = check_record(value, 12)
    codes = [issue.code for issue in checked.errors]
    assert code in codes
    issue = checked.errors[codes.index(code)]
    assert issue.line == 12
    assert issue.message.startswith("line 12: ")
    assert fragment in issue.message
    assert checked.record is None
    assert issue.to_json() == {"line": 12, "code": code, "message": issue.message}


def test_every_line_level_error_code_is_covered() -> None:
    covered = {code for _, code, _ in BAD_LINES}
    assert covered | {"invalid_json", "too_few_examples"} == set(ERROR_CODES)


def test_per_line_warnings() -> None:
    no_system = check_record(conversation("Hi, where is my order?", "It shipped today and arrives on Friday.", system=None), 1)
    assert [w.code for w in no_system.warnings] == ["missing_system_message"]
    no_user = check_record({"messages": [{"role": "system", "content": SYSTEM}, {"role": "assistant", "content": "Welcome to Acme, how can I help today?"}]}, 2)
    assert [w.code for w in no_user.warnings] == ["missing_user_message"]
    short = check_record(conversation("Is it fixed?", "Yes, fixed."), 3)
    assert [w.code for w in short.warnings] == ["short_assistant_reply"]
    assert "messages[2]" in short.warnings[0].message
    pii = check_record(conversation("I'm dana@example.com, card 4111 1111 1111 1111", "Thanks, I will call you at +1 415 555 0134 today."), 4)
    assert [(w.code, w.message.split(".content")[0]) for w in pii.warnings] == [("pii", "line 4: messages[1]"), ("pii", "line 4: messages[2]")]
    assert "1 email address, 1 card number" in pii.warnings[0].message
    assert "dana@example.com" not in pii.warnings[0].message  # the report does not repeat the personal data
    assert check_record(conversation("I'm dana@example.com", "Thanks, I have updated your account."), 5, pii=False).warnings == []
    assert all(w.code in WARNING_CODES for w in no_system.warnings + no_user.warnings + short.warnings + pii.warnings)


def test_weight_zero_short_reply_is_not_flagged() -> None:
    assert [w.code for w in check_record(WEIGHTED_LINE, 1).warnings] == []


# --- agreement with OpenAI's per-line schemas ---------------------------------------------------------


@pytest.fixture(scope="module")
def schemas():
    if not SPEC.exists():
        pytest.skip("OpenAI training-format spec not available")
    import yaml
    from openapi_schema_validator import OAS30Validator

    spec = yaml.load(SPEC.read_text(), Loader=getattr(yaml, "CSafeLoader", yaml.SafeLoader))

    def validator(name: str):
        return OAS30Validator({"$ref": f"#/components/schemas/{name}", "components": spec["components"]})

    return validator("FineTuneChatRequestInput"), validator("FineTunePreferenceRequestInput")


def _for_schema(value: Any) -> Any:
    """OpenAPI 3.0 cannot express ``nullable`` next to ``oneOf`` (the spec's content field); the spec's text
    says content may be omitted with tool_calls, so drop null contents before checking."""
    value = copy.deepcopy(value)
    if isinstance(value, dict):
        for messages in (value.get("messages"), (value.get("input") or {}).get("messages") if isinstance(value.get("input"), dict) else None):
            for message in messages or []:
                if isinstance(message, dict) and message.get("content", 0) is None:
                    del message["content"]
    return value


def test_lines_we_accept_are_valid_under_openai_schema(schemas) -> None:
    chat, preference = schemas
    dpo_old_names = {"input": DPO_LINE["input"], "preferred_completion": DPO_LINE["preferred_output"],
                     "non_preferred_completion": DPO_LINE["non_preferred_output"]}
    sample = [json.loads(line) for line in (REPO / "bot" / "data" / "sample.jsonl").read_text().splitlines()]
    for line in [TOOL_CALL_LINE, WEIGHTED_LINE, PARTS_LINE, *sample]:
        assert check_record(line, 1).errors == []
        assert list(chat.iter_errors(_for_schema(line))) == []
    assert check_record(dpo_old_names, 1).errors == []
    assert list(preference.iter_errors(_for_schema(dpo_old_names))) == []


def test_lines_the_schema_rejects_are_errors_for_us(schemas) -> None:
    chat, _ = schemas
    rejected_by_schema = [value for value, _, _ in BAD_LINES if isinstance(value, dict) and "input" not in value and list(chat.iter_errors(value))]
    assert len(rejected_by_schema) >= 8  # the schema is permissive (no additionalProperties): a subset
    for value in rejected_by_schema:
        assert check_record(value, 1).errors, value


# --- streaming reader ---------------------------------------------------------------------------------


def test_reader_handles_bom_crlf_and_blank_lines(tmp_path: Path) -> None:
    path = tmp_path / "d.jsonl"
    path.write_bytes(b'\xef\xbb\xbf{"a": 1}\r\n\r\n   \n{"b": 2}\r\n{"c"')
    assert [(line, value, issue and issue.code) for line, value, issue in read_jsonl(path)] == [
        (1, {"a": 1}, None), (4, {"b": 2}, None), (5, None, "invalid_json")
    ]


def test_reader_file_errors(tmp_path: Path) -> None:
    with pytest.raises(DataFileError, match="no such file"):
        list(read_jsonl(tmp_path / "missing.jsonl"))
    with pytest.raises(DataFileError, match="is a directory"):
        list(read_jsonl(tmp_path))
    (tmp_path / "empty.jsonl").write_bytes(b"")
    with pytest.raises(DataFileError, match="empty"):
        list(read_jsonl(tmp_path / "empty.jsonl"))
    (tmp_path / "utf.jsonl").write_bytes(b'{"a": 1}\n{"a": "caf\xe9"}\n')
    with pytest.raises(DataFileError, match=r"line 2 is not valid UTF-8 \(byte 0xe9"):
        list(read_jsonl(tmp_path / "utf.jsonl"))


def test_reader_stops_at_a_line_over_the_limit_without_reading_it(tmp_path: Path) -> None:
    path = tmp_path / "long.jsonl"
    with path.open("wb") as handle:
        handle.write(b'{"a": 1}\n{"b": 2}\n')
        handle.truncate(64 * 1024 * 1024)  # a sparse 64 MB third line of NUL bytes
    with pytest.raises(LineTooLong) as caught:
        list(read_jsonl(path, max_line_bytes=4 * 1024 * 1024))
    assert caught.value.line == 3
    assert "line 3 is longer than 4 MiB" in str(caught.value)


# --- build_report ---------------------------------------------------------------------------------------


def test_report_on_a_clean_file(tmp_path: Path) -> None:
    lines = varied_lines(12) + [TOOL_CALL_LINE, WEIGHTED_LINE]
    path = write_jsonl(tmp_path / "clean.jsonl", lines)
    report = build_report(path, model="gpt-4o-mini-2024-07-18")
    data = report.to_json()
    assert report.ok and data["ok"] is True
    assert data["errors"] == [] and data["warnings"] == []
    assert (data["examples"], data["valid_examples"], data["kind"]) == (14, 14, "sft")
    encoding = encoding_for_model("gpt-4o-mini")
    per_example = sorted(count_record_tokens(line, encoding).total for line in lines)
    assert data["tokens"]["total"] == sum(per_example)
    assert data["tokens"]["min"] == per_example[0] and data["tokens"]["max"] == per_example[-1]
    assert data["tokens"]["median"] == per_example[6]  # nearest rank: ceil(0.5 * 14) = 7th
    assert data["tokens"]["p90"] == per_example[12]  # ceil(0.9 * 14) = 13th
    assert data["tokens"]["tools_estimated_examples"] == 1
    assert data["tokens"]["assistant"]["total"] == sum(count_record_tokens(line, encoding).assistant for line in lines)
    assert data["epochs"] == 7 and data["epochs_source"] == "auto"  # 100 // 14
    assert data["billed_tokens"] == 7 * sum(per_example)
    assert data["estimated_cost_usd"] == pytest.approx(round(7 * sum(per_example) * 3.0 / 1e6, 4))
    assert (data["model"], data["encoding"], data["context_limit"]) == ("gpt-4o-mini-2024-07-18", "o200k_base", 65536)
    assert build_report(path, model="gpt-4o-mini", epochs=2).to_json()["billed_tokens"] == 2 * sum(per_example)


def test_pricing_counts_only_valid_examples_and_too_few_is_an_error(tmp_path: Path) -> None:
    path = write_jsonl(tmp_path / "few.jsonl", varied_lines(4) + ['{"messages": [', {"messages": [{"role": "user", "content": "hi"}]}])
    data = build_report(path, model="gpt-4o-mini").to_json()
    assert (data["examples"], data["valid_examples"]) == (6, 4)
    assert data["error_counts"] == {"invalid_json": 1, "example_missing_assistant_message": 1, "too_few_examples": 1}
    assert data["errors"][0] == {"line": None, "code": "too_few_examples", "message": data["errors"][0]["message"]}
    assert "only 4 valid example(s)" in data["errors"][0]["message"]
    encoding = encoding_for_model("gpt-4o-mini")
    assert data["tokens"]["total"] == sum(count_record_tokens(line, encoding).total for line in varied_lines(4))
    assert data["epochs"] == 25  # min(25, 100 // 4)
    assert data["billed_tokens"] == 25 * data["tokens"]["total"]


def test_cross_line_warnings(tmp_path: Path) -> None:
    macro = ("Thanks for reaching out! To reset your password, open acme.cloud/reset, enter the email address on your "
             "account and follow the link we send you. The link is valid for 24 hours.")
    lines = varied_lines(10)
    lines.append(conversation("How do I reset my password?", macro))  # 11
    lines.append(conversation("Password reset please", macro.replace("Thanks for reaching out!", "Sorry about that!")))  # 12
    lines.append(lines[0])  # 13: exact duplicate of line 1
    lines.append(conversation("Where is the invoice?", "Open Admin, then Billing, then Invoices to download any PDF.",
                              system="You are the billing bot."))  # 14
    lines.append(conversation("Is it fixed?", "Yes, all done."))  # 15
    lines.append({"messages": [{"role": "user", "content": "Long question " + "word " * 400}, {"role": "assistant", "content": "A long answer follows here."}]})  # 16
    path = write_jsonl(tmp_path / "warn.jsonl", lines)
    table = PriceTable.load()
    small = PriceTable(table.as_of, table.source, table.currency, table.path, dict(table.models))
    entry = small.models["gpt-4o-mini-2024-07-18"]
    small.models["gpt-4o-mini-2024-07-18"] = type(entry)(**{**{f: getattr(entry, f) for f in entry.__slots__}, "context_limit": 300})
    report = build_report(path, model="gpt-4o-mini", prices=small)
    found = {(w.line, w.code) for w in report.warnings}
    assert (12, "near_duplicate") in found
    assert (13, "duplicate_example") in found
    assert (14, "inconsistent_system_prompt") in found
    assert (15, "short_assistant_reply") in found
    assert (16, "too_long") in found and (16, "missing_system_message") in found
    messages = {w.code: w.message for w in report.warnings}
    assert "exact duplicate of line 1" in messages["duplicate_example"]
    assert "similar to line 11's" in messages["near_duplicate"]
    assert "14 of 15 examples" in messages["inconsistent_system_prompt"]
    assert "over the 300-token limit" in messages["too_long"]
    long_tokens = count_record_tokens(lines[15], encoding_for_model("gpt-4o-mini")).total
    assert long_tokens > 300
    assert report.billed_tokens == report.epochs * (report.tokens.total - long_tokens + 300)  # billed at the cap
    assert report.ok


def test_every_warning_code_is_reachable() -> None:
    covered = {"missing_system_message", "missing_user_message", "too_long", "duplicate_example", "near_duplicate",
               "inconsistent_system_prompt", "pii", "short_assistant_reply"}
    assert covered == set(WARNING_CODES)


def test_mixed_sft_and_dpo_lines_are_an_error(tmp_path: Path) -> None:
    path = write_jsonl(tmp_path / "mixed.jsonl", varied_lines(10) + [DPO_LINE])
    report = build_report(path, model="gpt-4o-mini")
    assert report.kind == "sft"
    assert [(e.line, e.code) for e in report.errors] == [(11, "data_type")]
    assert "one file holds one kind" in report.errors[0].message


def test_dpo_file(tmp_path: Path) -> None:
    lines = []
    for index in range(10):
        line = copy.deepcopy(DPO_LINE)
        line["input"]["messages"][1]["content"] += f" (case {index})"
        lines.append(line)
    report = build_report(write_jsonl(tmp_path / "dpo.jsonl", lines), model="gpt-4o-mini")
    assert report.ok and report.kind == "dpo" and report.valid_examples == 10
    encoding = encoding_for_model("gpt-4o-mini")
    assert report.tokens.total == sum(count_record_tokens(line, encoding).total for line in lines)


def test_issue_lists_are_capped_but_counts_are_complete(tmp_path: Path) -> None:
    lines = varied_lines(10) + ["{broken"] * (MAX_ISSUES_PER_CODE + 50)
    data = build_report(write_jsonl(tmp_path / "many.jsonl", lines), model="gpt-4o-mini").to_json()
    assert data["error_counts"]["invalid_json"] == MAX_ISSUES_PER_CODE + 50
    assert sum(1 for e in data["errors"] if e["code"] == "invalid_json") == MAX_ISSUES_PER_CODE
    assert data["issues_truncated"] is True


def test_items_from_the_database_use_example_ids(tmp_path: Path) -> None:
    items = [(100 + index, line) for index, line in enumerate(varied_lines(10))] + [(500, {"messages": []})]
    report = build_report(iter(items), model="gpt-4o-mini", unit="example")
    assert report.examples == 11 and report.valid_examples == 10
    assert report.errors[0].line == 500
    assert report.errors[0].message.startswith("example 500: ")


def test_process_pool_gives_the_same_report_as_one_process(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    lines = varied_lines(300) + [TOOL_CALL_LINE, WEIGHTED_LINE, "{bad", conversation("Is it done?", "Yes, done.")]
    lines += [conversation(f"Reset password for user {i}?", "Thanks for reaching out! To reset your password, open acme.cloud/reset "
                           "and follow the link we email you; it is valid for 24 hours.") for i in range(30)]
    lines += lines[:5]
    path = write_jsonl(tmp_path / "pool.jsonl", lines)
    serial = build_report(path, model="gpt-4o-mini", workers=1).to_json()
    monkeypatch.setattr(report_module, "PARALLEL_MIN_BYTES", 0)
    monkeypatch.setattr(report_module, "_BLOCK_BYTES", 4096)  # many blocks, so line numbers cross block edges
    parallel = build_report(path, model="gpt-4o-mini", workers=2).to_json()
    assert parallel["workers"] == 2 and serial["workers"] == 1
    for key in ("seconds", "workers"):
        serial.pop(key), parallel.pop(key)
    assert parallel == serial
    assert serial["warning_counts"]["duplicate_example"] == 5
    assert serial["warning_counts"]["near_duplicate"] >= 25


def test_invalid_utf8_in_a_big_file_names_the_line(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = tmp_path / "bad.jsonl"
    body = "".join(json.dumps(line) + "\n" for line in varied_lines(200)).encode()
    path.write_bytes(body + b'{"messages": "\xff"}\n')
    monkeypatch.setattr(report_module, "PARALLEL_MIN_BYTES", 0)
    monkeypatch.setattr(report_module, "_BLOCK_BYTES", 8192)
    with pytest.raises(DataFileError, match="line 201 is not valid UTF-8"):
        build_report(path, model="gpt-4o-mini", workers=2)


# --- bounded structures ---------------------------------------------------------------------------------


def test_near_duplicate_index_stays_bounded_and_keeps_recurring_macros() -> None:
    rng = np.random.default_rng(1)
    macro = rng.integers(0, 200_000, size=60).tolist()
    index = NearDuplicateIndex(capacity=50)
    matches = 0
    for line in range(1, 2001):
        if line % 10 == 0:
            tokens = list(macro)
            tokens[5] = int(rng.integers(0, 200_000))  # a name changed in the macro
        else:
            tokens = rng.integers(0, 200_000, size=60).tolist()
        rows, signatures, sketches = reply_sketches(tokens, [len(tokens)])
        assert rows.tolist() == [0] and signatures.shape == (1, NUM_PERM)
        match = index.check(line, signatures[0], band_keys(signatures)[0].tolist(), sketches[0])
        assert len(index) <= 50
        if match is not None:
            matches += 1
            assert match.line == 10 and match.similarity >= 0.7
    assert matches >= 190  # 199 recurrences of the macro, MinHash may miss a few
    assert index.evictions > 0


def test_exact_duplicates_capacity() -> None:
    seen = ExactDuplicates(capacity=2)
    assert seen.check(1, 1) is None and seen.check(2, 2) is None and seen.check(3, 3) is None
    assert seen.saturated
    assert seen.check(1, 4) == 1 and seen.check(3, 5) is None


def test_report_import_is_light() -> None:
    code = "import sys, trainers.data.report, bot.cli.checks; print(sorted(m for m in ('torch', 'transformers', 'peft', 'trl', 'datasets', 'bitsandbytes') if m in sys.modules))"
    out = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "[]"


def test_fast_path_gives_the_same_rows_as_the_general_path() -> None:
    from trainers.data.report import _Analyzer

    analyzer = _Analyzer("gpt-4o-mini", "auto", True, "test", 65536)
    sample = [json.loads(line) for line in (REPO / "bot" / "data" / "sample.jsonl").read_text().splitlines()]
    lines = varied_lines(20) + sample + [
        WEIGHTED_LINE,
        conversation("Is it fixed?", "Yes, fixed."),
        conversation("I'm dana@example.com, call +1 415 555 0134", "Thanks Dana, I will call you today at that number.", system=None),
        {"messages": [{"role": "system", "content": "card 4111 1111 1111 1111"}, {"role": "assistant", "content": "Welcome back to Acme support, friend."}]},
        {"messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "hello there my friend", "weight": 0}]},
        {"messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "hello there my friend", "weight": True}]},
        {"messages": [{"role": "user", "content": "  "}, {"role": "assistant", "content": "hello there my friend"}]},
        {"messages": [{"role": "system", "content": "a"}, {"role": "system", "content": "b"}, {"role": "assistant", "content": "hello there my friend"}]},
    ] + [value for value, _, _ in BAD_LINES]
    fast_hits = 0
    for number, line in enumerate(lines, start=1):
        text = json.dumps(line)
        fast_tokens: list[int] = []
        general_tokens: list[int] = []
        fast = analyzer._fast_row(number, line, fast_tokens, text)
        general = analyzer._general_row(number, line, general_tokens, text)
        if fast is None:
            assert fast_tokens == []  # a refused line leaves nothing behind
            continue
        fast_hits += 1
        assert fast == general, line
        assert fast_tokens == general_tokens
    assert fast_hits >= 60


def test_token_cache_home_follows_storage_rule(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    from storage.db import ftbot_home
    from trainers.data.tokens import _ftbot_home

    for env in ({"FTBOT_HOME": str(tmp_path / "a")}, {"XDG_DATA_HOME": str(tmp_path / "xdg")}, {}):
        monkeypatch.delenv("FTBOT_HOME", raising=False)
        monkeypatch.delenv("XDG_DATA_HOME", raising=False)
        for key, value in env.items():
            monkeypatch.setenv(key, value)
        assert _ftbot_home() == ftbot_home()


def test_near_duplicates_are_confirmed_by_exact_trigram_jaccard(tmp_path: Path) -> None:
    encoding = encoding_for_model("gpt-4o-mini")
    openers = ["Hi there,", "Hello,", "Thanks for writing,", "Sorry about that,"]
    steps = ["open Settings and choose Security.", "restart the client and wait a minute.", "check the spam folder for our email.",
             "update the app from the store.", "remove the device and add it again.", "clear the cache under Storage."]
    closers = ["Let us know if that helps.", "Have a great day!", "We are here if you need more help.", ""]
    lines = [conversation(f"Question {index}?", f"{openers[index % 4]} {steps[(index * 7) % 6]} {steps[(index * 5) % 6]} {closers[(index * 3) % 4]}")
             for index in range(200)]
    report = build_report(write_jsonl(tmp_path / "templated.jsonl", lines), model="gpt-4o-mini")

    def trigrams(line: int) -> set[tuple[int, ...]]:
        tokens = encoding.encode_ordinary(lines[line - 1]["messages"][2]["content"])
        return set(zip(tokens, tokens[1:], tokens[2:]))

    flagged = [w for w in report.warnings if w.code == "near_duplicate"]
    assert flagged
    for warning in flagged:
        earlier = int(warning.message.split("similar to line ")[1].split("'")[0])
        a, b = trigrams(warning.line), trigrams(earlier)
        assert len(a & b) / len(a | b) >= 0.7, warning.message


def test_sketch_jaccard_is_exact_for_short_replies() -> None:
    rng = np.random.default_rng(3)
    first = rng.integers(0, 50_000, size=60).tolist()
    second = first[:40] + rng.integers(0, 50_000, size=20).tolist()
    _, _, sketches = reply_sketches(first + second, [len(first), len(second)])
    a, b = set(zip(first, first[1:], first[2:])), set(zip(second, second[1:], second[2:]))
    assert sketch_jaccard(sketches[0], sketches[1]) == pytest.approx(len(a & b) / len(a | b))


def _die(first_line: int, block: bytes) -> None:
    import os

    os._exit(9)  # what the kernel's OOM killer does to a worker


def test_a_dying_worker_is_a_clear_error(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from storage.errors import FtbotError

    path = write_jsonl(tmp_path / "data.jsonl", varied_lines(50))
    monkeypatch.setattr(report_module, "PARALLEL_MIN_BYTES", 0)
    monkeypatch.setattr(report_module, "_work", _die)
    with pytest.raises(FtbotError, match="worker process stopped unexpectedly"):
        build_report(path, model="gpt-4o-mini", workers=2)


def test_lines_orjson_refuses_are_read_as_the_standard_library_reads_them(tmp_path: Path) -> None:
    valid = [json.dumps(line) for line in varied_lines(10)]
    surrogate = json.dumps(conversation("Where is my order?", "It left the warehouse today \ud800 and arrives soon."))
    assert "\\ud800" in surrogate  # an escaped lone surrogate: valid for json, refused by orjson
    path = tmp_path / "odd.jsonl"
    path.write_text("\n".join(valid + [
        surrogate,
        '{"messages": [{"role": "user", "content": "Hi there"}, {"role": "assistant", "content": "Hello, how can I help you?", "weight": NaN}]}',
        '{"messages": [{"role": "user", "content": "Hi there"}, {"role": "assistant", "content": "Hello, how can I help you?", "weight": 100000000000000000000000}]}',
        "{bad",
        json.dumps({**TOOL_CALL_LINE, "tools": [{**TOOL_CALL_LINE["tools"][0], "limit": 10**23}]}),
    ]) + "\n", encoding="utf-8")
    report = build_report(path, model="gpt-4o-mini", workers=1)
    assert report.valid_examples == 12  # the surrogate line is valid, its tokens counted as tiktoken counts them
    encoding = encoding_for_model("gpt-4o-mini")
    for line in (surrogate, path.read_text(encoding="utf-8").splitlines()[-1]):  # big integer: tool JSON counted as written
        assert report.tokens.histogram[count_record_tokens(json.loads(line), encoding).total] >= 1
    messages = {issue.line: issue.message for issue in report.errors}
    assert messages[12] == "line 12: messages[1].weight is NaN; it must be 0 (do not train on this reply) or 1"
    assert messages[13].startswith("line 13: messages[1].weight is 100000000000000000000000;")
    assert messages[14] == ("line 14: not valid JSON (Expecting property name enclosed in double quotes at column 2); "
                            "each line must be one JSON object")


def _reference_near_duplicates(batches: list[tuple[list[int], np.ndarray, np.ndarray, list[bytes]]], capacity: int) -> list[Any]:
    """The near-duplicate rule spelled out with plain dicts, one reply at a time (the bulk index must agree).

    Candidates of a reply: the representatives that held one of its band keys when its batch started, then
    those added by earlier replies of the batch (latest per key); nominated when >= _min_candidate MinHash
    values agree, confirmed by sketch Jaccard >= threshold (best first match wins). Unmatched replies become
    representatives; when full, the index evicts, and the rest of the batch starts afresh."""
    index = NearDuplicateIndex(capacity=capacity)  # used for its thresholds only
    minimum, threshold = index._min_candidate, index.threshold
    bands: dict[int, int] = {}  # key -> line
    reps: dict[int, tuple[np.ndarray, bytes, int]] = {}  # line -> (signature, sketch, matches), in insertion order
    out: list[Any] = []

    def similarity(a: bytes, b: bytes) -> float:  # exact Jaccard when both sketches are complete, else bottom-k
        first, second = set(np.frombuffer(a, dtype=np.uint64).tolist()), set(np.frombuffer(b, dtype=np.uint64).tolist())
        if len(first) < SKETCH_SIZE and len(second) < SKETCH_SIZE:
            return len(first & second) / len(first | second)
        union = sorted(first | second)[:SKETCH_SIZE]
        return sum(1 for value in union if value in first and value in second) / len(union)

    def run(lines, signatures, keys, sketches):
        nonlocal bands
        before = {row: [bands[k] for k in dict.fromkeys(keys[row].tolist()) if k in bands] for row in range(len(lines))}
        added: dict[int, int] = {}
        for row, line in enumerate(lines):
            candidates = list(dict.fromkeys(before[row]))
            nominated = [c for c in candidates if c in reps and np.count_nonzero(reps[c][0] == signatures[row]) >= minimum]
            for c in dict.fromkeys(added.get(k) for k in keys[row].tolist()):
                if c is not None and np.count_nonzero(reps[c][0] == signatures[row]) >= minimum:
                    nominated.append(c)
            best = None
            for c in nominated:
                value = similarity(sketches[row], reps[c][1])
                if value >= threshold and (best is None or value > best[0]):
                    best = (value, c)
            if best is not None:
                signature, sketch, matches = reps[best[1]]
                reps[best[1]] = (signature, sketch, matches + 1)
                out.append((best[1], best[0]))
                continue
            evicted = len(reps) >= capacity
            if evicted:
                ranked = sorted((line_ for line_, rep in reps.items() if rep[2] > 0), key=lambda l: -reps[l][2])[: capacity // 2]
                kept = [l for l in reps if l in set(ranked)]
                reps_new = {l: (reps[l][0], reps[l][1], reps[l][2] // 2) for l in kept}
                reps.clear()
                reps.update(reps_new)
                bands = {}
                for l in kept:
                    bands.update(dict.fromkeys(band_keys(reps[l][0].reshape(1, -1))[0].tolist(), l))
            reps[line] = (signatures[row], sketches[row], 0)
            mapping = dict.fromkeys(keys[row].tolist(), line)
            bands.update(mapping)
            added.update(mapping)
            out.append(None)
            if evicted:
                run(lines[row + 1 :], signatures[row + 1 :], keys[row + 1 :], sketches[row + 1 :])
                return

    for batch in batches:
        run(*batch)
    return out


@pytest.mark.parametrize("capacity", [7, 40, 20_000])
def test_bulk_near_duplicate_index_equals_the_one_at_a_time_rule(capacity: int) -> None:
    rng = np.random.default_rng(capacity)
    macros = [rng.integers(0, 3000, size=int(rng.integers(10, 80))).tolist() for _ in range(12)]
    batches, line = [], 1
    for _ in range(6):
        lines, flat, lengths = [], [], []
        for _ in range(int(rng.integers(20, 150))):
            if rng.random() < 0.6:  # a macro with a few words changed
                tokens = list(macros[int(rng.integers(len(macros)))])
                for _ in range(int(rng.integers(0, 4))):
                    tokens[int(rng.integers(len(tokens)))] = int(rng.integers(0, 3000))
            else:
                tokens = rng.integers(0, 3000, size=int(rng.integers(8, 60))).tolist()
            lines.append(line)
            line += 1
            flat += tokens
            lengths.append(len(tokens))
        rows, signatures, sketches = reply_sketches(flat, lengths)
        batches.append(([lines[i] for i in rows.tolist()], signatures, band_keys(signatures), sketches))
    index = NearDuplicateIndex(capacity=capacity)
    bulk = []
    for lines, signatures, keys, sketches in batches:
        bulk += [None if match is None else (match.line, match.similarity) for match in index.check_many(lines, signatures, keys, sketches)]
    assert bulk == _reference_near_duplicates(batches, capacity)
    assert sum(match is not None for match in bulk) > 20
    if capacity < 100:
        assert index.evictions > 0

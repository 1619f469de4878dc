"""build_report: cross-line checks, token totals and pricing, the process pool, and a light import."""

from __future__ import annotations

import copy
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from storage.errors import DataFileError, FtbotError
from tests.fixtures.paths import REPO
from tests.fixtures.records import DPO_LINE, TOOL_CALL_LINE, WEIGHTED_LINE, conversation, varied_lines, write_jsonl
from trainers.data import report_workers
from trainers.data.issues import MAX_ISSUES_PER_CODE, WARNING_CODES
from trainers.data.pricing import PriceTable
from trainers.data.report import build_report
from trainers.data.tokens import count_record_tokens, encoding_for_model


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
    lines.append({"messages": [{"role": "user", "content": "Long question " + "word " * 400},
                               {"role": "assistant", "content": "A long answer follows here."}]})  # 16
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
    monkeypatch.setattr(report_workers, "PARALLEL_MIN_BYTES", 0)
    monkeypatch.setattr(report_workers, "BLOCK_BYTES", 4096)  # many blocks, so line numbers cross block edges
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
    monkeypatch.setattr(report_workers, "PARALLEL_MIN_BYTES", 0)
    monkeypatch.setattr(report_workers, "BLOCK_BYTES", 8192)
    with pytest.raises(DataFileError, match="line 201 is not valid UTF-8"):
        build_report(path, model="gpt-4o-mini", workers=2)


def test_report_import_is_light() -> None:
    code = ("import sys, trainers.data.report, bot.cli.checks; "
            "print(sorted(m for m in ('torch', 'transformers', 'peft', 'trl', 'datasets', 'bitsandbytes') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "[]"


def _die(first_line: int, block: bytes) -> None:
    os._exit(9)  # what the kernel's OOM killer does to a worker


def test_a_dying_worker_is_a_clear_error(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = write_jsonl(tmp_path / "data.jsonl", varied_lines(50))
    monkeypatch.setattr(report_workers, "PARALLEL_MIN_BYTES", 0)
    monkeypatch.setattr(report_workers, "analyze_block_in_worker", _die)
    with pytest.raises(FtbotError, match="worker process stopped unexpectedly"):
        build_report(path, model="gpt-4o-mini", workers=2)


def test_lines_orjson_refuses_are_read_as_the_standard_library_reads_them(tmp_path: Path) -> None:
    valid = [json.dumps(line) for line in varied_lines(10)]
    # An escaped surrogate pair (an emoji) reads alike in both; a lone surrogate stops the report (test_jsonl).
    surrogate = json.dumps(conversation("Where is my order?", "It left the warehouse today \U0001F600 and arrives soon."))
    assert "\\ud83d\\ude00" in surrogate
    path = tmp_path / "odd.jsonl"
    path.write_text("\n".join(valid + [
        surrogate,
        '{"messages": [{"role": "user", "content": "Hi there"}, '
        '{"role": "assistant", "content": "Hello, how can I help you?", "weight": NaN}]}',
        '{"messages": [{"role": "user", "content": "Hi there"}, '
        '{"role": "assistant", "content": "Hello, how can I help you?", "weight": 100000000000000000000000}]}',
        "{bad",
        json.dumps({**TOOL_CALL_LINE, "tools": [{**TOOL_CALL_LINE["tools"][0], "limit": 10**23}]}),
    ]) + "\n", encoding="utf-8")
    report = build_report(path, model="gpt-4o-mini", workers=1)
    assert report.valid_examples == 12  # the emoji line is valid, its tokens counted as tiktoken counts them
    encoding = encoding_for_model("gpt-4o-mini")
    for line in (surrogate, path.read_text(encoding="utf-8").splitlines()[-1]):  # big integer: tool JSON counted as written
        assert report.tokens.histogram[count_record_tokens(json.loads(line), encoding).total] >= 1
    messages = {issue.line: issue.message for issue in report.errors}
    assert messages[12] == "line 12: messages[1].weight is NaN; it must be 0 (do not train on this reply) or 1"
    assert messages[13].startswith("line 13: messages[1].weight is 100000000000000000000000;")
    assert messages[14] == ("line 14: not valid JSON (Expecting property name enclosed in double quotes at column 2); "
                            "each line must be one JSON object")

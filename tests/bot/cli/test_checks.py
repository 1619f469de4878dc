"""``ftbot validate`` and ``ftbot price`` through the real CLI (typer's CliRunner), including bad input."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from typer.testing import CliRunner

from bot.cli import app
from storage.db import Database
from storage.examples import import_records
from tests.fixtures.paths import REPO
from tests.fixtures.records import BAD_LINES, DPO_LINE, TOOL_CALL_LINE, WEIGHTED_LINE, conversation, varied_lines, write_jsonl
from trainers.data.issues import ERROR_CODES, WARNING_CODES

SAMPLE = REPO / "bot" / "data" / "sample.jsonl"


@pytest.fixture
def cli(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    monkeypatch.setenv("FTBOT_HOME", str(tmp_path / "home"))
    monkeypatch.setenv("FTBOT_DATABASE_URL", f"sqlite:///{tmp_path / 'ftbot.sqlite3'}")
    monkeypatch.delenv("FTBOT_PRICES_FILE", raising=False)
    monkeypatch.delenv("FTBOT_BASE_MODEL", raising=False)
    runner = CliRunner()

    def invoke(*args: str):
        return runner.invoke(app, list(args), catch_exceptions=False)

    return invoke


def as_json(result) -> dict[str, Any]:
    return json.loads(result.stdout)


def assert_one_line_error(result, fragment: str) -> None:
    assert result.exit_code == 1
    assert "Traceback" not in result.output
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("error: ")
    assert fragment in lines[0]


def test_validate_bundled_sample(cli) -> None:
    result = cli("validate", str(SAMPLE))
    assert result.exit_code == 0, result.output
    assert "40 read, 40 valid" in result.stdout
    assert "OK: 40 examples ready to upload" in result.stdout
    data = as_json(cli("validate", str(SAMPLE), "--json"))
    assert data["ok"] is True and data["examples"] == data["valid_examples"] == 40
    # The sample ships a few deliberate warnings for the docs and console.
    assert {"pii", "near_duplicate", "short_assistant_reply"} <= set(data["warning_counts"])
    assert data["tokens"]["tools_estimated_examples"] == 2
    for key in ("examples", "valid_examples", "errors", "warnings", "tokens", "epochs", "billed_tokens", "estimated_cost_usd", "model",
                "encoding"):
        assert key in data
    assert data["tokens"]["total"] > 0 and data["billed_tokens"] == data["epochs"] * data["tokens"]["total"]


def test_validate_reports_every_error_code_and_exits_1(cli, tmp_path: Path) -> None:
    lines = [value for value, _, _ in BAD_LINES] + ["{not json"]
    path = write_jsonl(tmp_path / "bad.jsonl", lines)
    result = cli("validate", str(path), "--json")
    assert result.exit_code == 1
    data = as_json(result)
    assert data["ok"] is False
    assert set(data["error_counts"]) == set(ERROR_CODES)
    for error in data["errors"]:
        assert set(error) == {"line", "code", "message"}
        if error["line"] is not None:
            assert error["message"].startswith(f"line {error['line']}: ")
    human = cli("validate", str(path))
    assert human.exit_code == 1
    assert "Not ready" in human.stdout and "invalid_json" in human.stdout


def test_validate_reports_every_warning_code(cli, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    prices = tmp_path / "prices.toml"
    prices.write_text('as_of = "2026-11-01"\n'
                      '[models."gpt-4o-mini-2024-07-18"]\ntraining = 3\ninput = 0.3\noutput = 1.2\ncontext_limit = 200\n')
    monkeypatch.setenv("FTBOT_PRICES_FILE", str(prices))
    macro = "Thanks for reaching out! To reset your password, open acme.cloud/reset and follow the link we send you within ten minutes."
    lines = varied_lines(10) + [
        conversation("Reset my password", macro),
        conversation("Password reset?", macro.replace("Thanks", "Many thanks")),
        conversation("Is it fixed?", "Yes, fixed."),
        conversation("Hi, I'm dana@example.com", "Thanks Dana, I have updated your account settings now.", system="Another prompt."),
        conversation("No system here, where is my parcel?", "It left our warehouse this morning and arrives tomorrow.", system=None),
        {"messages": [{"role": "system", "content": "You are Acme's support assistant. Be concise and kind."},
                      {"role": "assistant", "content": "Welcome! How can I help you with your account today?"}]},
        conversation("A long story " + "blah " * 300, "I read all of it and fixed the problem for you today."),
    ]
    lines.append(lines[0])
    data = as_json(cli("validate", str(write_jsonl(tmp_path / "warn.jsonl", lines)), "--json"))
    assert data["ok"] is True
    assert set(data["warning_counts"]) == set(WARNING_CODES)
    for warning in data["warnings"]:
        assert warning["message"].startswith(f"line {warning['line']}: ")


def test_bom_crlf_and_blank_lines_are_accepted(cli, tmp_path: Path) -> None:
    body = "\r\n\r\n".join(json.dumps(line) for line in varied_lines(10)) + "\r\n\r\n"
    path = tmp_path / "windows.jsonl"
    path.write_bytes(b"\xef\xbb\xbf" + body.encode("utf-8"))
    result = cli("validate", str(path), "--json")
    assert result.exit_code == 0, result.output
    data = as_json(result)
    assert (data["examples"], data["valid_examples"], data["blank_lines"]) == (10, 10, 10)


@pytest.mark.parametrize(
    ("setup", "fragment", "code"),
    [
        ("missing", "no such file", "DataFileError"),
        ("directory", "is a directory", "DataFileError"),
        ("empty", "the file is empty", "DataFileError"),
        ("blank", "only blank lines", "DataFileError"),
        ("utf8", "line 3 is not valid UTF-8", "invalid_utf8"),
        ("surrogate", "line 2: messages[0].content holds the escape \\ud800", "invalid_utf8"),
        ("huge", "line 2 is longer than 16 MiB", "line_too_long"),
    ],
)
def test_unreadable_input_is_one_clear_line(cli, tmp_path: Path, setup: str, fragment: str, code: str) -> None:
    path = tmp_path / "input.jsonl"
    if setup == "directory":
        path.mkdir()
    elif setup == "empty":
        path.write_bytes(b"")
    elif setup == "blank":
        path.write_bytes(b"\n\r\n   \n")
    elif setup == "utf8":
        path.write_bytes(b'{"messages": []}\n{"messages": []}\n{"messages": [{"role": "user", "content": "caf\xe9"}]}\n')
    elif setup == "surrogate":  # valid JSON, but "\ud800" alone is half a UTF-16 pair: no UTF-8 text can hold it
        path.write_bytes(b'{"messages": []}\n{"messages": [{"role": "user", "content": "bad \\ud800 here"}]}\n')
    elif setup == "huge":
        with path.open("wb") as handle:  # one 1 GB line (sparse: costs no disk), never read into memory
            handle.write(b'{"messages": []}\n{"messages": "')
            handle.truncate(1024 * 1024 * 1024)
    for command in ("validate", "price"):
        assert_one_line_error(cli(command, str(path)), fragment)
        result = cli(command, str(path), "--json")
        assert result.exit_code == 1
        error = as_json(result)
        assert error["ok"] is False and error["error"]["code"] == code and fragment in error["error"]["message"]


def test_price_one_model(cli) -> None:
    result = cli("price", str(SAMPLE), "--model", "gpt-4.1-mini", "--epochs", "4", "--json")
    assert result.exit_code == 0, result.output
    data = as_json(result)
    assert data["model"] == "gpt-4.1-mini" and data["encoding"] == "o200k_base"
    assert data["epochs"] == 4 and data["epochs_source"] == "given"
    assert data["billed_tokens"] == 4 * data["tokens"]["total"]
    assert data["estimated_cost_usd"] == pytest.approx(round(data["billed_tokens"] * 5.0 / 1e6, 4))
    inference = data["inference"]
    assert inference["model"] == "gpt-4.1-mini-2025-04-14"
    expected = (inference["prompt_tokens"] * 0.80 + inference["completion_tokens"] * 3.20) / 1e6 * 1000
    assert inference["cost_per_1k_requests_usd"] == pytest.approx(expected, abs=1e-4)


def test_price_all_models_uses_each_models_encoding(cli) -> None:
    data = as_json(cli("price", str(SAMPLE), "--all-models", "--json"))
    quotes = {quote["model"]: quote for quote in data["quotes"]}
    assert set(quotes) == {"gpt-4.1-2025-04-14", "gpt-4.1-mini-2025-04-14", "gpt-4.1-nano-2025-04-14",
                           "gpt-4o-2024-08-06", "gpt-4o-mini-2024-07-18", "gpt-3.5-turbo-0125"}
    o200k_tokens = quotes["gpt-4o-mini-2024-07-18"]["billed_tokens"]
    assert quotes["gpt-4.1-2025-04-14"]["billed_tokens"] == o200k_tokens
    assert quotes["gpt-3.5-turbo-0125"]["billed_tokens"] != o200k_tokens  # cl100k_base counts
    assert quotes["gpt-4o-2024-08-06"]["cost_usd"] == pytest.approx(o200k_tokens * 25 / 1e6)
    single = as_json(cli("price", str(SAMPLE), "--model", "gpt-3.5-turbo-0125", "--json"))
    assert single["billed_tokens"] == quotes["gpt-3.5-turbo-0125"]["billed_tokens"]
    human = cli("price", str(SAMPLE), "--all-models")
    assert human.exit_code == 0 and "Training cost by model" in human.stdout and "gpt-3.5-turbo-0125" in human.stdout


def test_price_roi_and_on_prem(cli) -> None:
    args = ("price", str(SAMPLE), "--model", "gpt-4o-mini", "--daily-requests", "5000", "--prompt-tokens-saved", "1500",
            "--baseline-model", "gpt-4o", "--completion-tokens", "120", "--gpu-hour-price", "2.5", "--tokens-per-second", "1500")
    data = as_json(cli(*args, "--json"))
    roi = data["roi"]
    prompt_today = roi["prompt_tokens_today"]
    assert roi["prompt_tokens_fine_tuned"] == prompt_today - 1500
    assert roi["daily_cost_today_usd"] == pytest.approx(5000 * (prompt_today * 2.50 + 120 * 10.00) / 1e6)
    assert roi["daily_cost_fine_tuned_usd"] == pytest.approx(5000 * ((prompt_today - 1500) * 0.30 + 120 * 1.20) / 1e6)
    assert roi["training_cost_usd"] == pytest.approx(data["estimated_cost_usd"], abs=1e-4)
    assert roi["break_even_days"] == pytest.approx(roi["training_cost_usd"] / roi["daily_savings_usd"])
    on_prem = data["on_prem"]
    assert on_prem["trained_tokens"] == data["tokens"]["total"] * data["epochs"]
    assert on_prem["gpu_hours"] == pytest.approx(on_prem["trained_tokens"] / 1500 / 3600)
    human = cli(*args)
    assert human.exit_code == 0
    assert "break-even" in human.stdout and "On-prem" in human.stdout


def test_price_usage_errors(cli) -> None:
    assert_one_line_error(cli("price", str(SAMPLE), "--model", "gpt-9"), "no prices for model 'gpt-9'")
    assert cli("price", str(SAMPLE), "--model", "gpt-4o", "--all-models").exit_code == 2
    assert cli("price", str(SAMPLE), "--gpu-hour-price", "2").exit_code == 2


def test_price_and_validate_without_file_use_approved_examples(cli) -> None:
    database = Database.open()
    try:
        result = import_records(database, list(enumerate(varied_lines(11) + [TOOL_CALL_LINE, WEIGHTED_LINE], start=1)),
                                source_file="seed.jsonl", approved_by="tester")
        assert result.added == 13
    finally:
        database.close()
    data = as_json(cli("price", "--json"))
    assert data["source"] == "approved examples (database)" and data["valid_examples"] == 13 and data["ok"] is True
    assert data["tokens"]["tools_estimated_examples"] == 1
    validated = cli("validate")
    assert validated.exit_code == 0 and "13 read, 13 valid" in validated.stdout
    assert as_json(cli("price", "--all-models", "--json"))["valid_examples"] == 13


def test_empty_database_is_too_few_examples(cli) -> None:
    result = cli("validate", "--json")
    assert result.exit_code == 1
    assert as_json(result)["error_counts"] == {"too_few_examples": 1}


def test_dpo_file_validates(cli, tmp_path: Path) -> None:
    lines = []
    for index in range(10):
        line = json.loads(json.dumps(DPO_LINE))
        line["input"]["messages"][1]["content"] += f" (order {index})"
        lines.append(line)
    data = as_json(cli("validate", str(write_jsonl(tmp_path / "dpo.jsonl", lines)), "--json"))
    assert data["ok"] is True and data["kind"] == "dpo"

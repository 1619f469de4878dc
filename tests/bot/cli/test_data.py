"""`ftbot import`, `ftbot export`, `ftbot examples list`, `ftbot db` against real databases (SQLite and PostgreSQL)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from typer.testing import CliRunner

import trainers.data.imports
from bot.cli import app
from storage.db import Database
from storage.examples import count_by_status, list_examples, set_status
from storage.migrate import head_revision
from storage.pairs import list_pairs
from tests.fixtures.db import database_url
from tests.fixtures.paths import REPO
from trainers.data.imports import import_file


def sft(i: int, answer: str | None = None) -> dict:
    return {
        "messages": [
            {"role": "system", "content": "Tu es l'assistant du support d'Acme."},
            {"role": "user", "content": f"Ma commande n°{i} n'est pas arrivée — que faire ?"},
            {"role": "assistant", "content": answer or f"Désolé ! Je relance le transporteur pour la commande {i} 📦."},
        ]
    }


TOOL_LINE = {
    "messages": [
        {"role": "user", "content": "Status of order 42?"},
        {
            "role": "assistant",
            "content": None,
            "tool_calls": [{"id": "c1", "type": "function", "function": {"name": "order_status", "arguments": "{\"id\": 42}"}}],
        },
        {"role": "tool", "tool_call_id": "c1", "content": "shipped"},
        {"role": "assistant", "content": "Order 42 shipped yesterday.", "weight": 1},
    ],
    "tools": [{"type": "function", "function": {"name": "order_status", "parameters": {"type": "object", "properties": {}}}}],
    "parallel_tool_calls": False,
}

PAIR_LINE = {
    "input": {"messages": [{"role": "user", "content": "Can I get a refund?"}]},
    "preferred_output": [{"role": "assistant", "content": "Yes: refunds within 30 days, I have started yours."}],
    "non_preferred_output": [{"role": "assistant", "content": "No idea, ask someone else."}],
}


def write_jsonl(path: Path, records: list) -> Path:
    path.write_text("".join(json.dumps(record, ensure_ascii=False) + "\n" for record in records), encoding="utf-8")
    return path


@pytest.fixture
def cli(monkeypatch: pytest.MonkeyPatch, tmp_path: Path):
    """Runs the real `ftbot` Typer app against the database given to ``use``."""
    runner = CliRunner()
    monkeypatch.setenv("FTBOT_HOME", str(tmp_path / "home"))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("LOGNAME", "os-user")

    def run(database: Database, *args: str):
        monkeypatch.setenv("FTBOT_DATABASE_URL", database_url(database))
        return runner.invoke(app, list(args), catch_exceptions=False)

    return run


@pytest.fixture
def good_file(tmp_path: Path) -> Path:
    return write_jsonl(tmp_path / "support.jsonl", [sft(i) for i in range(1, 11)] + [TOOL_LINE, PAIR_LINE])


# --- import ------------------------------------------------------------------------------------


def test_import_stores_sft_as_approved_examples_and_dpo_as_pairs(db: Database, cli, good_file: Path) -> None:
    result = cli(db, "import", str(good_file), "--by", "alice")
    assert result.exit_code == 0, result.output
    assert "11 example(s) added" in result.stdout and "1 preference pair(s) added" in result.stdout

    examples = list_examples(db)
    assert len(examples) == 11
    assert {e.status for e in examples} == {"approved"} and {e.approved_by for e in examples} == {"alice"}
    assert [e.source_line for e in examples] == list(range(1, 12))
    assert {e.source_file for e in examples} == {str(good_file.resolve())}
    (pair,) = list_pairs(db)
    assert pair.record == PAIR_LINE and pair.source_line == 12 and pair.source_kind == "import"


def test_importing_the_same_file_twice_adds_nothing_and_says_so(db: Database, cli, good_file: Path) -> None:
    assert cli(db, "import", str(good_file)).exit_code == 0
    again = cli(db, "import", str(good_file), "--json")
    assert again.exit_code == 0
    report = json.loads(again.stdout)
    assert report["examples"] == {"added": 0, "unchanged": 11} and report["pairs"] == {"added": 0, "unchanged": 1}
    assert "Nothing new" in cli(db, "import", str(good_file)).stdout
    assert count_by_status(db)["approved"] == 11 and len(list_pairs(db)) == 1


def test_approver_defaults_to_the_os_user(db: Database, cli, good_file: Path) -> None:
    assert cli(db, "import", str(good_file)).exit_code == 0
    assert {e.approved_by for e in list_examples(db)} == {"os-user"}


def test_one_bad_line_at_the_end_stores_nothing_and_lists_the_error(db: Database, cli, tmp_path: Path) -> None:
    bad = tmp_path / "bad.jsonl"
    lines = [json.dumps(sft(i)) for i in range(1, 1500)] + ['{"messages": [{"role": "user", "content": "hi"}]}']
    bad.write_text("\n".join(lines) + "\n", encoding="utf-8")

    result = cli(db, "import", str(bad))

    assert result.exit_code == 1
    assert "line 1500: example_missing_assistant_message" in result.stderr
    assert "nothing imported" in result.stderr and "--skip-invalid" in result.stderr
    assert "Traceback" not in result.output
    assert count_by_status(db) == {"pending": 0, "approved": 0, "rejected": 0}


def test_a_failed_import_leaves_earlier_data_untouched(db: Database, cli, good_file: Path, tmp_path: Path) -> None:
    assert cli(db, "import", str(good_file)).exit_code == 0
    before = [(e.id, e.messages) for e in list_examples(db)]
    bad = write_jsonl(tmp_path / "more.jsonl", [sft(100), sft(101), {"messages": "oops"}])
    assert cli(db, "import", str(bad)).exit_code == 1
    assert [(e.id, e.messages) for e in list_examples(db)] == before


def test_skip_invalid_stores_only_the_valid_lines(db: Database, cli, tmp_path: Path) -> None:
    path = tmp_path / "mixed.jsonl"
    path.write_text(json.dumps(sft(1)) + "\nnot json\n" + json.dumps(sft(2)) + "\n", encoding="utf-8")
    result = cli(db, "import", str(path), "--skip-invalid", "--json")
    assert result.exit_code == 0
    report = json.loads(result.stdout)
    assert report["stored"] and report["invalid_lines"] == 1
    assert report["errors"][0]["line"] == 2 and report["errors"][0]["code"] == "invalid_json"
    assert [e.source_line for e in list_examples(db)] == [1, 3]


@pytest.mark.parametrize(
    "make, expected",
    [
        (lambda tmp: tmp / "missing.jsonl", "no such file"),
        (lambda tmp: tmp, "is a directory"),
        (lambda tmp: _write_bytes(tmp / "latin1.jsonl",
                                  json.dumps(sft(1)).encode() + b"\n" + '{"messages": "café"}'.encode("latin-1") + b"\n"),
         "not valid UTF-8"),
        (lambda tmp: _write_bytes(tmp / "surrogate.jsonl",
                                  json.dumps(sft(1)).encode() + b"\n" + b'{"messages": [{"role": "user", "content": "\\udfff"}]}\n'),
         "line 2: messages[0].content holds the escape \\udfff"),
        (lambda tmp: _write_bytes(tmp / "empty.jsonl", b""), "empty"),
        (lambda tmp: _write_bytes(tmp / "blank.jsonl", b"\n  \r\n\n"), "empty"),
    ],
    ids=["missing", "directory", "invalid-utf8", "lone-surrogate", "empty", "only-blank-lines"],
)
def test_unreadable_input_gives_one_clear_line_and_writes_nothing(sqlite_db: Database, cli, tmp_path: Path, make, expected: str) -> None:
    target = make(tmp_path)
    result = cli(sqlite_db, "import", str(target))
    assert result.exit_code == 1
    assert expected in result.stderr
    assert result.stderr.startswith("error:") and len(result.stderr.strip().splitlines()) <= 2
    assert "Traceback" not in result.output
    assert count_by_status(sqlite_db)["approved"] == 0


def _write_bytes(path: Path, data: bytes) -> Path:
    path.write_bytes(data)
    return path


def test_bom_and_crlf_files_import(sqlite_db: Database, cli, tmp_path: Path) -> None:
    path = _write_bytes(tmp_path / "windows.jsonl", b"\xef\xbb\xbf" + b"".join(json.dumps(sft(i)).encode() + b"\r\n" for i in range(3)))
    assert cli(sqlite_db, "import", str(path)).exit_code == 0
    assert count_by_status(sqlite_db)["approved"] == 3


def test_real_console_script_prints_no_traceback(sqlite_db: Database, tmp_path: Path) -> None:
    env = {**os.environ, "FTBOT_DATABASE_URL": database_url(sqlite_db)}
    completed = subprocess.run(
        [sys.executable, "-c", "from bot.cli import main; main()", "import", str(tmp_path / "nope.jsonl")],
        cwd=REPO, env=env, capture_output=True, text=True, timeout=120,
    )
    assert completed.returncode == 1
    assert "no such file" in completed.stderr and "Traceback" not in completed.stderr
    assert completed.stderr.startswith("error: ") and completed.stderr.count("\n") == 1


def test_named_errors_of_every_command_are_one_line_and_exit_1(sqlite_db: Database, cli) -> None:
    # Data, evaluation and training commands raise FtbotError; the root command prints it the same way for all.
    for args, message in [
        (("export", "--format", "hf"), "--format hf writes a dataset directory: give it with --out DIR"),
        (("eval", "remove", "99"), "there is no added question #99; `ftbot eval questions` lists them."),
    ]:
        result = cli(sqlite_db, *args)
        assert result.exit_code == 1, result.output
        assert result.stderr == f"error: {message}\n"
        assert result.stdout == ""


def test_ctrl_c_exits_130_without_a_traceback_and_stores_nothing(sqlite_db: Database, cli, tmp_path: Path,
                                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    # Interrupted after the first batch of 1000 lines was already written inside the import's transaction.
    big = write_jsonl(tmp_path / "big.jsonl", [sft(i) for i in range(1, 1501)])
    real_check = trainers.data.imports.check_record

    def check_then_interrupt(value, line, kind):
        if line == 1200:
            raise KeyboardInterrupt
        return real_check(value, line, kind)

    monkeypatch.setattr(trainers.data.imports, "check_record", check_then_interrupt)
    result = cli(sqlite_db, "import", str(big))
    assert result.exit_code == 130
    assert result.stderr == "interrupted\n" and "Traceback" not in result.output
    assert count_by_status(sqlite_db)["approved"] == 0


def test_console_script_ctrl_c_exits_130(sqlite_db: Database, good_file: Path) -> None:
    # The real entry point (bot.cli.main) in its own process, interrupted while importing.
    script = (
        "import trainers.data.imports\n"
        "def interrupted(*args, **kwargs):\n"
        "    raise KeyboardInterrupt\n"
        "trainers.data.imports.import_file = interrupted\n"
        "from bot.cli import main\n"
        "main()\n"
    )
    env = {**os.environ, "FTBOT_DATABASE_URL": database_url(sqlite_db)}
    completed = subprocess.run([sys.executable, "-c", script, "import", str(good_file)],
                               cwd=REPO, env=env, capture_output=True, text=True, timeout=120)
    assert completed.returncode == 130
    assert completed.stderr == "interrupted\n"


def test_unreachable_database_is_one_clear_line(cli, good_file: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    unreachable = Database.open("postgresql+psycopg://postgres@127.0.0.1:1/nowhere", migrate=False)
    result = cli(unreachable, "import", str(good_file))
    assert result.exit_code == 1
    assert "cannot use the database postgresql+psycopg://postgres@127.0.0.1:1/nowhere" in result.stderr
    assert "Traceback" not in result.output


# --- export ------------------------------------------------------------------------------------


def test_export_round_trip_gives_identical_lines(db: Database, cli, tmp_path: Path) -> None:
    source = write_jsonl(tmp_path / "in.jsonl", [sft(i) for i in range(1, 11)] + [TOOL_LINE])
    assert cli(db, "import", str(source)).exit_code == 0
    out = tmp_path / "out" / "train.jsonl"
    result = cli(db, "export", "--format", "openai", "--out", str(out))
    assert result.exit_code == 0 and "Wrote 11 approved example(s)" in result.stderr
    assert out.read_bytes() == source.read_bytes()
    # Stdout gives the same lines.
    assert cli(db, "export").stdout.encode() == source.read_bytes()


def test_export_by_status(db: Database, cli, good_file: Path) -> None:
    assert cli(db, "import", str(good_file)).exit_code == 0
    first = list_examples(db)[0]
    set_status(db, first.id, "rejected", by="lead")
    approved = cli(db, "export").stdout.splitlines()
    rejected = cli(db, "export", "--status", "rejected").stdout.splitlines()
    everything = cli(db, "export", "--status", "all").stdout.splitlines()
    assert len(approved) == 10 and len(everything) == 11
    assert [json.loads(line) for line in rejected] == [sft(1)]


def test_dpo_exports_openai_and_trl_rows(db: Database, cli, tmp_path: Path) -> None:
    legacy = {
        "input": PAIR_LINE["input"],
        "preferred_completion": PAIR_LINE["preferred_output"],
        "non_preferred_completion": [{"role": "assistant", "content": "Maybe."}],
    }
    source = write_jsonl(tmp_path / "prefs.jsonl", [PAIR_LINE])
    assert cli(db, "import", str(source)).exit_code == 0
    assert cli(db, "import", str(write_jsonl(tmp_path / "legacy.jsonl", [legacy]))).exit_code == 0

    openai_lines = [json.loads(line) for line in cli(db, "export", "--format", "dpo").stdout.splitlines()]
    assert openai_lines[0] == PAIR_LINE
    assert set(openai_lines[1]) == {"input", "preferred_output", "non_preferred_output"}

    trl_rows = [json.loads(line) for line in cli(db, "export", "--format", "trl-dpo").stdout.splitlines()]
    assert trl_rows[0] == {
        "prompt": PAIR_LINE["input"]["messages"],
        "chosen": PAIR_LINE["preferred_output"],
        "rejected": PAIR_LINE["non_preferred_output"],
    }


def test_hf_export_loads_with_load_from_disk(db: Database, cli, tmp_path: Path) -> None:
    records = [sft(i) for i in range(1, 13)]
    assert cli(db, "import", str(write_jsonl(tmp_path / "in.jsonl", records))).exit_code == 0
    out = tmp_path / "hf"
    result = cli(db, "export", "--format", "hf", "--out", str(out))
    assert result.exit_code == 0, result.output

    from datasets import load_from_disk  # deferred: the Hugging Face datasets library is heavy and only this test reads it

    dataset = load_from_disk(str(out))
    assert len(dataset) == 12 and "messages" in dataset.column_names
    assert [row["messages"] for row in dataset] == [record["messages"] for record in records]

    again = cli(db, "export", "--format", "hf", "--out", str(out))
    assert again.exit_code == 1 and "--force" in again.stderr
    assert cli(db, "export", "--format", "hf", "--out", str(out), "--force").exit_code == 0
    assert cli(db, "export", "--format", "hf").exit_code == 1


def test_hf_export_force_never_deletes_a_directory_it_did_not_create(sqlite_db: Database, cli, tmp_path: Path) -> None:
    assert cli(sqlite_db, "import", str(write_jsonl(tmp_path / "in.jsonl", [sft(i) for i in range(1, 5)]))).exit_code == 0
    unrelated = tmp_path / "work"
    unrelated.mkdir()
    (unrelated / "notes.txt").write_text("keep me")
    refused = cli(sqlite_db, "export", "--format", "hf", "--out", str(unrelated), "--force")
    assert refused.exit_code == 1 and "not an ftbot export" in refused.stderr and "Traceback" not in refused.output
    assert (unrelated / "notes.txt").read_text() == "keep me"
    a_file = tmp_path / "data.bin"
    a_file.write_text("keep me too")
    assert cli(sqlite_db, "export", "--format", "hf", "--out", str(a_file), "--force").exit_code == 1
    assert a_file.read_text() == "keep me too"

    # A previous ftbot export (even with a file added to it since) is replaced.
    out = tmp_path / "hf"
    assert cli(sqlite_db, "export", "--format", "hf", "--out", str(out)).exit_code == 0
    (out / "stale.txt").write_text("old")
    replaced = cli(sqlite_db, "export", "--format", "hf", "--out", str(out), "--force")
    assert replaced.exit_code == 0, replaced.output
    assert not (out / "stale.txt").exists() and (out / "dataset_info.json").is_file()


def test_hf_export_of_nothing_is_a_clear_error(sqlite_db: Database, cli, tmp_path: Path) -> None:
    result = cli(sqlite_db, "export", "--format", "hf", "--out", str(tmp_path / "hf"))
    assert result.exit_code == 1 and "nothing to export" in result.stderr
    assert not (tmp_path / "hf").exists()


# --- examples list and db ----------------------------------------------------------------------


def test_examples_list_json_and_table(db: Database, cli, good_file: Path) -> None:
    assert cli(db, "import", str(good_file), "--by", "alice").exit_code == 0
    listed = json.loads(cli(db, "examples", "list", "--json", "--limit", "3").stdout)
    assert listed["counts"] == {"pending": 0, "approved": 11, "rejected": 0}
    assert [e["id"] for e in listed["examples"]] == [1, 2, 3]
    assert listed["examples"][0]["record"] == sft(1) and listed["examples"][0]["approved_by"] == "alice"
    assert listed["examples"][0]["source"] == "support.jsonl:1"

    assert json.loads(cli(db, "examples", "list", "--json", "--status", "pending").stdout)["examples"] == []
    table = cli(db, "examples", "list", "--limit", "2").stdout
    assert "support.jsonl:1" in table and "Showing 2 of 11" in table


def test_examples_list_on_an_empty_database(sqlite_db: Database, cli) -> None:
    result = cli(sqlite_db, "examples", "list")
    assert result.exit_code == 0 and "No examples yet" in result.stdout


def test_db_info_reports_revision_and_counts(db: Database, cli, good_file: Path) -> None:
    cli(db, "import", str(good_file))
    info = json.loads(cli(db, "db", "info", "--json").stdout)
    assert info["revision"] == info["head"] == head_revision()
    assert info["examples"]["approved"] == 11 and info["preference_pairs"] == 1
    assert cli(db, "db", "upgrade").exit_code == 0


def test_import_reports_progress_line_by_line(sqlite_db: Database, good_file: Path) -> None:
    seen: list[int] = []
    import_file(sqlite_db, good_file, approved_by="u", on_line=seen.append)
    assert seen == list(range(1, 13))

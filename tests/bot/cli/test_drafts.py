"""`ftbot drafts list|stats` and the exports of the pairs drafts make, on a real database (SQLite and PostgreSQL)."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from rich.console import Console
from sqlalchemy import update
from sqlmodel import col
from typer.testing import CliRunner

from bot.cli import app, common
from storage.db import Database
from storage.drafts import create_draft, decide_draft, record_agent_reply
from storage.jobs import register_model, use_model
from storage.models import ReplyDraft, stored_id
from storage.vocabulary import DraftOutcome
from tests.fixtures.db import database_url

PROMPT = [{"role": "system", "content": "You are Acme's support assistant."},
          {"role": "user", "content": "How do I reset my password?"}]
LONG_NAME = "acme-support-gpt-4o-mini-2026-11-30-v12"


@pytest.fixture
def cli(monkeypatch: pytest.MonkeyPatch, tmp_path: Path):
    """Runs the real `ftbot` Typer app against the database given to it."""
    runner = CliRunner()
    monkeypatch.setenv("FTBOT_HOME", str(tmp_path / "home"))

    def run(database: Database, *args: str):
        monkeypatch.setenv("FTBOT_DATABASE_URL", database_url(database))
        return runner.invoke(app, list(args))

    return run


def draft(db: Database, key: str, *, model: str = "acme-sft-job4", text: str = "Click *Forgot password*.",
          made: datetime | None = None, latency_ms: int = 1200) -> int:
    draft_id = stored_id(create_draft(db, request_key=key, channel="C1", thread_ts="1700000000.000100",
                                      source_ts="1700000000.000100", requested_by="U_AGENT", model=model,
                                      backend="openai", prompt=PROMPT, draft=text, latency_ms=latency_ms).example)
    if made is not None:
        with db.session() as session:
            session.exec(update(ReplyDraft).where(col(ReplyDraft.id) == draft_id).values(created_at=made))
    return draft_id


def test_list_json_has_each_drafts_model_outcome_and_texts_newest_first(db: Database, cli) -> None:
    now = datetime.now(UTC)
    sent = draft(db, "mention:C1:1", made=now - timedelta(hours=3))
    edited = draft(db, "mention:C1:2", made=now - timedelta(hours=2))
    waiting = draft(db, "mention:C1:3", made=now - timedelta(hours=1))
    decide_draft(db, sent, DraftOutcome.SENT, by="U_AGENT")
    decide_draft(db, edited, DraftOutcome.EDITED, by="U_AGENT", final_text="Use the link we emailed you.")

    result = cli(db, "drafts", "list", "--json")
    assert result.exit_code == 0, result.output
    rows = json.loads(result.stdout)
    assert [row["id"] for row in rows] == [waiting, edited, sent]
    assert rows[1] == {"id": edited, "model": "acme-sft-job4", "outcome": "edited", "draft": "Click *Forgot password*.",
                       "final": "Use the link we emailed you.", "agent": "U_AGENT", "created_at": rows[1]["created_at"]}
    assert datetime.fromisoformat(rows[1]["created_at"]) == pytest.approx(now - timedelta(hours=2), abs=timedelta(seconds=1))
    assert (rows[0]["outcome"], rows[0]["final"]) == ("pending", None)
    assert (rows[2]["outcome"], rows[2]["final"]) == ("sent", "Click *Forgot password*.")

    limited = json.loads(cli(db, "drafts", "list", "--json", "--limit", "1").stdout)
    assert [row["id"] for row in limited] == [waiting]


@pytest.mark.parametrize("width", [60, 200])
def test_list_table_keeps_model_names_whole(sqlite_db: Database, cli, monkeypatch: pytest.MonkeyPatch, width: int) -> None:
    monkeypatch.setattr(common, "console", Console(width=width))
    draft(sqlite_db, "mention:C1:1", model=LONG_NAME, text="A long reply " * 20)
    listing = cli(sqlite_db, "drafts", "list")
    assert listing.exit_code == 0, listing.output
    assert LONG_NAME in listing.stdout and "pending" in listing.stdout
    assert max(len(line) for line in listing.stdout.splitlines()) <= width


def test_with_no_drafts_list_and_stats_say_how_to_get_one(sqlite_db: Database, cli) -> None:
    assert json.loads(cli(sqlite_db, "drafts", "list", "--json").stdout) == []
    assert "@ftbot draft" in cli(sqlite_db, "drafts", "list").stdout
    assert "@ftbot draft" in cli(sqlite_db, "drafts", "stats").stdout
    assert json.loads(cli(sqlite_db, "drafts", "stats", "--json").stdout) == {
        "current_model": None, "drafts": 0, "models": [], "comparison": None, "weekly": {}}


def test_stats_compare_the_model_in_use_with_the_one_before(db: Database, cli, tmp_path: Path) -> None:
    now = datetime.now(UTC)
    for index in range(4):
        decide_draft(db, draft(db, f"old:{index}", model="acme-sft-job2", made=now - timedelta(days=14)),
                     DraftOutcome.SENT if index == 0 else DraftOutcome.DISCARDED, by="U_AGENT")
    for index in range(4):
        decide_draft(db, draft(db, f"new:{index}", made=now - timedelta(days=1)),
                     DraftOutcome.EDITED if index == 0 else DraftOutcome.SENT, by="U_AGENT", final_text="Edited.")
    register_model(db, name="acme-sft-job4", backend="openai", base_model="gpt-4o-mini", location="ft:gpt-4o-mini:acme::4")
    use_model(db, "acme-sft-job4")

    data = json.loads(cli(db, "drafts", "stats", "--json").stdout)
    assert data["current_model"] == "acme-sft-job4" and data["drafts"] == 8
    assert [m["model"] for m in data["models"]] == ["acme-sft-job4", "acme-sft-job2"]
    assert (data["models"][0]["acceptance"], data["models"][0]["edit_rate"]) == (0.75, 0.25)
    assert data["models"][0]["latency_p50_ms"] == 1200
    assert data["comparison"]["previous"] == "acme-sft-job2" and 0 < data["comparison"]["p_value"] < 1
    assert [week["decided"] for week in data["weekly"]["acme-sft-job4"]] == [4]

    chart = tmp_path / "drafts.png"
    result = cli(db, "drafts", "stats", "--chart", str(chart))
    assert result.exit_code == 0, result.output
    assert "acme-sft-job4: 75% of 4 drafts sent unedited" in result.stdout
    assert "Since acme-sft-job4, agents send 75% of drafts unedited, up from 25% with acme-sft-job2" in result.stdout
    assert chart.read_bytes()[:4] == b"\x89PNG"


def test_a_chart_of_nothing_or_to_nowhere_is_one_clear_line(sqlite_db: Database, cli, tmp_path: Path) -> None:
    draft(sqlite_db, "mention:C1:1")  # undecided: nothing to chart yet
    result = cli(sqlite_db, "drafts", "stats", "--chart", str(tmp_path / "c.png"))
    assert result.exit_code == 1
    assert result.stderr == "error: no draft has been sent, edited or discarded yet: nothing to chart\n"
    as_json = cli(sqlite_db, "drafts", "stats", "--json", "--chart", str(tmp_path / "c.png"))
    assert as_json.exit_code == 1 and json.loads(as_json.stdout)["error"]["code"] == "FtbotError"

    decide_draft(sqlite_db, draft(sqlite_db, "mention:C1:2"), DraftOutcome.SENT, by="U_AGENT")
    nowhere = cli(sqlite_db, "drafts", "stats", "--chart", str(tmp_path / "missing" / "c.png"))
    assert nowhere.exit_code == 1 and nowhere.stderr.startswith("error: cannot write the chart to ")
    assert "Traceback" not in nowhere.output


def test_unreachable_database_is_one_clear_line(cli) -> None:
    unreachable = Database.open("postgresql+psycopg://postgres@127.0.0.1:1/nowhere", migrate=False)
    result = cli(unreachable, "drafts", "list")
    assert result.exit_code == 1
    assert "cannot use the database postgresql+psycopg://postgres@127.0.0.1:1/nowhere" in result.stderr
    assert "Traceback" not in result.output


def test_the_pairs_drafts_make_are_exported_for_dpo(db: Database, cli) -> None:
    edited = draft(db, "mention:C1:1")
    decide_draft(db, edited, DraftOutcome.EDITED, by="U_AGENT", final_text="Use the reset link we emailed you.")
    discarded = draft(db, "mention:C1:2", text="Please call us.")
    decide_draft(db, discarded, DraftOutcome.DISCARDED, by="U_AGENT", reason="we have no phone line")
    record_agent_reply(db, channel="C1", thread_ts="1700000000.000100", agent="U_AGENT",
                       text="Settings → Security → Reset password.", ts=f"{datetime.now(UTC).timestamp() + 1:.6f}",
                       window=timedelta(hours=1))

    result = cli(db, "export", "--format", "dpo")
    assert result.exit_code == 0, result.output
    lines = [json.loads(line) for line in result.stdout.splitlines()]
    assert lines == [
        {"input": {"messages": PROMPT}, "preferred_output": [{"role": "assistant", "content": "Use the reset link we emailed you."}],
         "non_preferred_output": [{"role": "assistant", "content": "Click *Forgot password*."}]},
        {"input": {"messages": PROMPT}, "preferred_output": [{"role": "assistant", "content": "Settings → Security → Reset password."}],
         "non_preferred_output": [{"role": "assistant", "content": "Please call us."}]},
    ]
    trl = [json.loads(line) for line in cli(db, "export", "--format", "trl-dpo").stdout.splitlines()]
    assert trl == [{"prompt": line["input"]["messages"], "chosen": line["preferred_output"],
                    "rejected": line["non_preferred_output"]} for line in lines]
    # The edit is a pending example too: reviewed like any capture before it is trained on.
    pending = [json.loads(line) for line in cli(db, "export", "--status", "pending").stdout.splitlines()]
    assert pending == [{"messages": [*PROMPT, {"role": "assistant", "content": "Use the reset link we emailed you."}]}]

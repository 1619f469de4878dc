"""`ftbot results [--json]` and `ftbot eval add|list|close` on a real database (SQLite and PostgreSQL)."""

from __future__ import annotations

import json
import random

import pytest
from rich.console import Console
from typer.testing import CliRunner

from bot.cli import app, common
from storage import eval_prompts, evals
from storage.evals import RoundStatus
from storage.pairs import pair_records
from tests.fixtures.db import database_url
from trainers.evaluation.charts import results_png
from trainers.evaluation.results import round_report


@pytest.fixture
def cli(db, monkeypatch):
    monkeypatch.setenv("FTBOT_DATABASE_URL", database_url(db))
    runner = CliRunner()

    def run(*args: str):
        return runner.invoke(app, list(args))

    return run


def _round_with_votes(db, wins: int, losses: int, ties: int = 0, *, candidate="cand-1", baseline="openai:gpt-4o-mini"):
    n = wins + losses + ties
    round_ = evals.create_round(db, candidate_model=candidate, baseline_model=baseline, channel="C1",
                                prompts=[[{"role": "user", "content": f"{candidate} q{i}"}] for i in range(n)],
                                rng=random.Random(n)).example
    comparisons = evals.round_comparisons(db, round_.id)
    evals.set_answers(db, round_.id, candidate, {c.id: f"cand {c.id}" for c in comparisons})
    evals.set_answers(db, round_.id, baseline, {c.id: f"base {c.id}" for c in comparisons})
    evals.move_round(db, round_.id, RoundStatus.OPEN)
    for i, c in enumerate(comparisons):
        evals.set_comparison_message(db, c.id, channel="C1", message_ts=f"1700000000.{i:06d}")
        other = "B" if c.candidate_side == "A" else "A"
        choice = c.candidate_side if i < wins else other if i < wins + losses else "tie"
        evals.cast_vote(db, c.id, f"U{i % 3}", choice, reaction=choice.lower())
    return round_


def test_results_json_matches_the_reference_check_values(db, cli):
    round_ = _round_with_votes(db, 42, 18, ties=5)
    result = cli("results", "--json")
    assert result.exit_code == 0, result.output
    data = json.loads(result.stdout)
    assert (data["wins"], data["losses"], data["ties"]) == (42, 18, 5)
    assert data["win_rate"] == pytest.approx(0.70)
    assert round(data["ci_low"], 3) == 0.575 and round(data["ci_high"], 3) == 0.801
    assert round(data["p_value"], 4) == 0.0027
    assert data["round_id"] == round_.id and data["status"] == "open"
    assert len(data["comparisons"]) == 65
    first = data["comparisons"][0]
    assert first["message_ts"] == "1700000000.000000" and first["candidate_side"] in ("A", "B")
    assert first["votes"] == [{"voter": "U0", "choice": first["candidate_side"], "reaction": first["candidate_side"].lower()}]
    # Sides are recorded as shown: "A" votes are on the candidate exactly where it was shown as A.
    for row in data["comparisons"][:42]:
        assert row["votes"][0]["choice"] == row["candidate_side"]


def test_results_text_chart_and_round_choice(db, cli, tmp_path):
    first = _round_with_votes(db, 15, 5)
    second = _round_with_votes(db, 3, 3, candidate="cand-2")
    chart = tmp_path / "chart.png"
    result = cli("results", str(first.id), "--chart", str(chart))
    assert result.exit_code == 0, result.output
    assert "75.0%" in result.stdout and "p = 0.041" in result.stdout
    assert "hidden until voting closes" in result.stdout
    assert chart.read_bytes()[:4] == b"\x89PNG"
    evals.close_round(db, first.id)
    evals.close_round(db, second.id)
    latest = json.loads(cli("results", "--json").stdout)
    assert latest["candidate"] == "cand-2" and latest["wins"] == 3
    # Two closed rounds of two candidates against one baseline: three models, so a Bradley–Terry leaderboard.
    board = latest["leaderboard"]
    assert board is not None and {r["model"] for r in board["ratings"]} == {"cand-1", "cand-2", "openai:gpt-4o-mini"}
    assert board["ratings"][0]["model"] == "cand-1"


def test_eval_close_creates_pairs_and_reveals(db, cli):
    round_ = _round_with_votes(db, 2, 1, ties=1)
    listed = json.loads(cli("eval", "list", "--json").stdout)
    assert listed[0]["candidate"] is None  # hidden while voting is open
    result = cli("eval", "close")
    assert result.exit_code == 0, result.output
    assert "3 new preference pair(s)" in result.stdout and "Revealed: the candidate was cand-1" in result.stdout
    assert evals.get_round(db, round_.id).status == RoundStatus.CLOSED
    assert len(list(pair_records(db))) == 3
    again = cli("eval", "close", str(round_.id))
    assert again.exit_code == 1 and "not open for voting" in again.output
    assert json.loads(cli("eval", "list", "--json").stdout)[0]["candidate"] == "cand-1"


def test_eval_add_text_and_file_with_clear_errors(db, cli, tmp_path):
    assert cli("eval", "add", "How do I reset my password?").exit_code == 0
    good = {"messages": [{"role": "user", "content": "Where is my order?"}, {"role": "assistant", "content": "Shipped."}]}
    bad = {"messages": [{"role": "assistant", "content": "No question here."}]}
    path = tmp_path / "questions.jsonl"
    path.write_text(json.dumps(good) + "\n" + json.dumps(bad) + "\n", encoding="utf-8")
    result = cli("eval", "add", "--file", str(path))
    assert result.exit_code == 1
    assert "questions.jsonl:2" in result.output and "Traceback" not in result.output
    prompts = eval_prompts.list_eval_prompts(db)
    assert [p.messages[-1]["content"] for p in prompts] == ["How do I reset my password?", "Where is my order?"]
    neither = cli("eval", "add")
    assert neither.exit_code == 1 and "give a question or --file" in neither.stderr and neither.stdout == ""

    listed = json.loads(cli("eval", "questions", "--json").stdout)
    assert [row["question"] for row in listed] == ["How do I reset my password?", "Where is my order?"]
    assert cli("eval", "remove", str(listed[0]["id"])).exit_code == 0
    assert [p.messages[-1]["content"] for p in eval_prompts.list_eval_prompts(db)] == ["Where is my order?"]
    missing = cli("eval", "remove", str(listed[0]["id"]))
    assert missing.exit_code == 1 and "no added question" in missing.output


def test_results_without_rounds_is_a_clear_error(db, cli):
    result = cli("results")
    assert result.exit_code == 1 and "no evaluation round yet" in result.output


def test_an_open_round_stays_blind_in_results_list_and_chart(db, cli, tmp_path):
    earlier = _round_with_votes(db, 2, 1, candidate="cand-old")
    evals.close_round(db, earlier.id)
    secret = _round_with_votes(db, 5, 0, candidate="ft:gpt-4o-mini:acme:zebra:1", baseline="openai:okapi-base")
    later = _round_with_votes(db, 3, 1, candidate="cand-new")
    evals.close_round(db, later.id)
    outputs = {}
    for args in (("results",), ("results", "--json"), ("results", str(later.id), "--json"), ("results", str(secret.id)),
                 ("results", str(secret.id), "--json"), ("eval", "list"), ("eval", "list", "--json")):
        result = cli(*args)
        assert result.exit_code == 0, result.output
        assert "zebra" not in result.output and "okapi" not in result.output, args
        outputs[args] = result.stdout
    # The leaderboard counts the closed rounds' 3 + 4 votes only, not the open round's 5.
    board = json.loads(outputs[("results", str(later.id), "--json")])["leaderboard"]
    assert board["battles"] == 7
    assert {r["model"] for r in board["ratings"]} == {"cand-old", "cand-new", "openai:gpt-4o-mini"}
    interim = json.loads(outputs[("results", str(secret.id), "--json")])
    assert (interim["wins"], interim["candidate"], interim["baseline"], interim["leaderboard"]) == (5, None, None, None)
    listed = {row["id"]: row for row in json.loads(outputs[("eval", "list", "--json")])}
    assert listed[secret.id]["candidate"] is None and listed[secret.id]["votes"] == 5

    chart = tmp_path / "open.png"
    assert cli("results", str(secret.id), "--chart", str(chart)).exit_code == 0
    # Drawn with the neutral labels, not the models' names.
    summary = round_report(db, secret.id).summary
    blind = results_png(summary, candidate="candidate", baseline="baseline", title=f"Round #{secret.id}: candidate vs baseline")
    assert chart.read_bytes() == blind


def test_results_json_without_rounds_prints_a_json_error_and_the_message(db, cli):
    result = cli("results", "--json")
    assert result.exit_code == 1
    error = json.loads(result.stdout)
    assert error["ok"] is False and "no evaluation round yet" in error["error"]["message"]
    assert "no evaluation round yet" in result.stderr


@pytest.mark.parametrize("width", [60, 200])
def test_eval_list_keeps_model_names_whole_and_shows_no_paths(db, cli, monkeypatch, width):
    monkeypatch.setattr(common, "console", Console(width=width))
    candidate = "acme-support-gpt-4o-mini-2026-11-30-v12"
    round_ = _round_with_votes(db, 2, 1, candidate=candidate, baseline="local:/srv/models/Qwen2.5-0.5B-Instruct")
    evals.close_round(db, round_.id)
    listing = cli("eval", "list")
    assert listing.exit_code == 0, listing.output
    assert candidate in listing.stdout and "Qwen2.5-0.5B-Instruct (local base model)" in listing.stdout
    assert "…" not in listing.stdout and "/srv" not in listing.stdout
    assert max(len(line) for line in listing.stdout.splitlines()) <= width

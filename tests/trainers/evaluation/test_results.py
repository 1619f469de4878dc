"""The results report (blind until closed, judge agreement, leaderboard) and its chart."""

from __future__ import annotations

import random

from storage import evals
from storage.evals import RoundStatus
from trainers.evaluation.charts import results_png
from trainers.evaluation.judge import parse_verdict
from trainers.evaluation.results import round_report
from trainers.evaluation.stats import ABVote, ab_summary, bradley_terry


def _round(db, candidate, outcomes, baseline="openai:gpt-4o-mini"):
    """outcomes: per comparison, the list of votes from the candidate's side ("win", "loss", "tie", "bad")."""
    round_ = evals.create_round(db, candidate_model=candidate, baseline_model=baseline, channel="C",
                                prompts=[[{"role": "user", "content": f"{candidate} {i}"}] for i in range(len(outcomes))],
                                rng=random.Random(2)).example
    evals.move_round(db, round_.id, RoundStatus.OPEN)
    for c, votes in zip(evals.round_comparisons(db, round_.id), outcomes, strict=True):
        other = "B" if c.candidate_side == "A" else "A"
        for voter, outcome in enumerate(votes):
            choice = {"win": c.candidate_side, "loss": other, "tie": "tie", "bad": "bad"}[outcome]
            evals.cast_vote(db, c.id, f"U{voter}", choice, reaction="x")
    return round_


def test_report_is_blind_until_closed_and_counts_from_the_candidate_side(sqlite_db):
    round_ = _round(sqlite_db, "cand", [["win", "win"], ["loss"], ["tie", "win"], ["bad"]])
    report = round_report(sqlite_db, round_.id, bootstrap_rounds=200)
    s = report.summary
    assert (s.wins, s.losses, s.ties, s.both_bad) == (3, 1, 1, 1)
    text = "\n".join(report.lines())
    assert "cand" not in text.replace("candidate", "") and "gpt-4o-mini" not in text
    assert "hidden until voting closes" in text
    evals.close_round(sqlite_db, round_.id)
    revealed = "\n".join(round_report(sqlite_db, round_.id, bootstrap_rounds=200).lines())
    assert "Revealed: the candidate was cand; the baseline was gpt-4o-mini (OpenAI)." in revealed
    cs = evals.round_comparisons(sqlite_db, round_.id)
    other = {"A": "B", "B": "A"}
    expected = [cs[0].candidate_side, other[cs[1].candidate_side], cs[2].candidate_side, None]
    assert [row["decided"] for row in report.to_json()["comparisons"]] == expected


def test_judge_agreement_and_leaderboard(sqlite_db):
    first = _round(sqlite_db, "cand-1", [["win"], ["win"], ["loss"], ["tie"]])
    comparisons = evals.round_comparisons(sqlite_db, first.id)
    # The judge agrees on the first two decided questions, disagrees on the third, and ties the undecided one.
    for c, choice in zip(comparisons, [c.candidate_side for c in comparisons[:2]] + [comparisons[2].candidate_side, "tie"], strict=True):
        evals.save_verdict(sqlite_db, c.id, "judge-x", choice)
    report = round_report(sqlite_db, first.id, bootstrap_rounds=100)
    (judge,) = report.judges
    assert (judge.judged, judge.compared, judge.agreed) == (4, 3, 2)
    assert (judge.judge_wins, judge.judge_losses, judge.judge_ties) == (3, 0, 1)
    evals.close_round(sqlite_db, first.id)
    assert round_report(sqlite_db, first.id, bootstrap_rounds=100).leaderboard is None  # two models only
    second = _round(sqlite_db, "cand-2", [["loss"], ["loss"], ["win"]])
    evals.close_round(sqlite_db, second.id)
    board = round_report(sqlite_db, bootstrap_rounds=100).leaderboard
    assert board is not None and [r.model for r in board.ratings][0] == "cand-1"
    assert board.battles == 7


def test_open_rounds_count_toward_no_leaderboard(sqlite_db):
    first = _round(sqlite_db, "cand-1", [["win"], ["win"], ["loss"], ["tie"]])
    evals.close_round(sqlite_db, first.id)
    second = _round(sqlite_db, "cand-2", [["loss"], ["loss"], ["win"]])
    evals.close_round(sqlite_db, second.id)
    still_open = _round(sqlite_db, "cand-secret", [["win"], ["win"], ["win"]], baseline="openai:secret-base")
    assert {comparison.round_id for comparison, _vote in evals.all_votes(sqlite_db)} == {first.id, second.id}
    board = round_report(sqlite_db, second.id, bootstrap_rounds=50).leaderboard
    assert board is not None and board.battles == 7
    assert {r.model for r in board.ratings} == {"cand-1", "cand-2", "openai:gpt-4o-mini"}
    # The open round's own report: its counts, and no leaderboard (it would name models while voters still vote).
    interim = round_report(sqlite_db, still_open.id, bootstrap_rounds=50)
    assert interim.leaderboard is None and interim.summary.wins == 3
    assert interim.to_json()["candidate"] is None and interim.to_json()["baseline"] is None
    assert "secret" not in "\n".join(interim.lines())


def test_parse_verdict():
    assert parse_verdict("Reply 2 is more accurate. [[2]]") == "2"
    assert parse_verdict("[[1]] ... on reflection [[tie]]") == "tie"
    assert parse_verdict("no marker") is None


def _png_size(data: bytes) -> tuple[int, int]:
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    return int.from_bytes(data[16:20], "big"), int.from_bytes(data[20:24], "big")


def test_chart_has_a_ratings_panel_only_with_more_than_two_models(tmp_path):
    summary = ab_summary([ABVote(i, "U1", "A" if i % 3 else "B", "A") for i in range(30)], bootstrap_rounds=100)
    plain = results_png(summary, candidate="cand", baseline="base")
    two = bradley_terry([("cand", "base", 1.0)] * 5 + [("cand", "base", 0.0)], bootstrap_rounds=20)
    three = bradley_terry([("cand", "base", 1.0), ("c2", "base", 0.0), ("cand", "c2", 0.5)] * 5, bootstrap_rounds=20)
    assert _png_size(results_png(summary, candidate="cand", baseline="base", leaderboard=two)) == _png_size(plain)
    path = tmp_path / "chart.png"
    with_board = results_png(summary, candidate="cand", baseline="base", leaderboard=three, path=path)
    assert _png_size(with_board)[1] > _png_size(plain)[1]
    assert path.read_bytes() == with_board
    empty = results_png(ab_summary([]), candidate="cand", baseline="base")
    assert _png_size(empty) == _png_size(plain)


def test_length_check_counts_whether_the_longer_answer_won(sqlite_db):
    round_ = _round(sqlite_db, "cand", [["win", "win"], ["win"], ["loss"], ["tie"]])
    comparisons = evals.round_comparisons(sqlite_db, round_.id)
    # The candidate always writes the longer answer.
    evals.set_answers(sqlite_db, round_.id, "cand", {c.id: "a long and detailed answer" for c in comparisons})
    evals.set_answers(sqlite_db, round_.id, "openai:gpt-4o-mini", {c.id: "short" for c in comparisons})
    report = round_report(sqlite_db, round_.id, bootstrap_rounds=50)
    assert (report.length_bias.longer_won, report.length_bias.shorter_won) == (3, 1)
    assert report.to_json()["length_bias"]["biased"] is False
    assert any(line.startswith("Length check: the longer answer won 3, the shorter 1") for line in report.lines())

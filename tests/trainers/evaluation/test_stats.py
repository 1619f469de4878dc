"""Evaluation statistics against known check values (binomial sign test, Wilson interval, power) and synthetic tournaments."""

from __future__ import annotations

import math

import numpy as np
import pytest
from scipy.stats import binom, binomtest

from trainers.evaluation.stats import (
    ABVote,
    ab_summary,
    bootstrap_win_rate,
    bradley_terry,
    fit_bradley_terry,
    power,
    sign_test_p,
    to_elo,
    underpowered_note,
    votes_for_power,
    wilson_interval,
    win_matrix,
    wins_needed,
)


def test_wilson_and_sign_test_match_reference_values():
    interval = wilson_interval(42, 60)
    assert 42 / 60 == pytest.approx(0.700)
    assert (round(interval.low, 3), round(interval.high, 3)) == (0.575, 0.801)
    assert round(sign_test_p(42, 60), 4) == 0.0027

    interval = wilson_interval(60, 100)
    assert (round(interval.low, 3), round(interval.high, 3)) == (0.502, 0.691)
    assert round(sign_test_p(60, 100), 3) == 0.057

    assert round(sign_test_p(15, 20), 3) == 0.041


def test_sign_test_is_symmetric_and_handles_empty():
    assert sign_test_p(18, 60) == pytest.approx(sign_test_p(42, 60))
    assert sign_test_p(0, 0) == 1.0
    assert wilson_interval(0, 0).low == 0.0 and wilson_interval(0, 0).high == 1.0
    assert wilson_interval(0, 10).low == 0.0
    assert wilson_interval(10, 10).high == pytest.approx(1.0)
    with pytest.raises(ValueError):
        wilson_interval(11, 10)


@pytest.mark.parametrize(("trials", "needed"), [(20, 15), (30, 21), (50, 33), (100, 61), (200, 115)])
def test_wins_needed_table(trials, needed):
    assert wins_needed(trials) == needed
    assert sign_test_p(needed, trials) <= 0.05 < sign_test_p(needed - 1, trials)


def test_vectorised_power_agrees_with_scipy_binomtest():
    # Power by brute force: sum the probability of every outcome the exact test rejects.
    for trials in (5, 20, 37, 60):
        rejecting = [k for k in range(trials + 1) if binomtest(k, trials, 0.5).pvalue <= 0.05]
        expected = sum(binom.pmf(k, trials, 0.7) for k in rejecting)
        assert power(trials, 0.7) == pytest.approx(expected, abs=1e-12)


def test_votes_for_eighty_percent_power_match_reference():
    assert votes_for_power(0.7) == 54
    assert votes_for_power(0.6) == 210
    assert power(54, 0.7) >= 0.8 and power(53, 0.7) < 0.8
    # Symmetric: detecting a candidate that is worse needs as many votes.
    assert votes_for_power(0.3) == 54


def test_underpowered_note_only_when_the_votes_cannot_decide():
    note = underpowered_note(12, 20)
    assert note is not None and "20 decisive votes" in note and "54" in note
    assert underpowered_note(42, 60) is None  # significant: nothing to warn about
    assert underpowered_note(0, 0) is not None


def _votes(wins, losses, ties=0, bad=0, *, side="A"):
    other = "B" if side == "A" else "A"
    votes = []
    for i in range(wins):
        votes.append(ABVote(i, f"U{i % 7}", side, side))
    for i in range(losses):
        votes.append(ABVote(1000 + i, f"U{i % 5}", other, side))
    votes += [ABVote(2000 + i, "U1", "tie", side) for i in range(ties)]
    votes += [ABVote(3000 + i, "U2", "bad", side) for i in range(bad)]
    return votes


def test_ab_summary_headline_numbers():
    summary = ab_summary(_votes(42, 18, ties=6, bad=4))
    assert (summary.wins, summary.losses, summary.ties, summary.both_bad) == (42, 18, 6, 4)
    assert summary.win_rate == pytest.approx(0.70)
    assert round(summary.ci.low, 3) == 0.575 and round(summary.ci.high, 3) == 0.801
    assert round(summary.p_value, 4) == 0.0027
    assert summary.significant and summary.verdict == "candidate is better"
    assert summary.tie_inclusive_rate == pytest.approx((42 + 5) / 70)
    assert summary.underpowered is None
    assert sum(summary.votes_per_voter.values()) == 70
    data = summary.to_json()
    assert data["ci_low"] == summary.ci.low and data["decisive"] == 60


def test_ab_summary_position_bias_uses_sides_not_models():
    # Candidate always shown on A and always wins: that is indistinguishable from left bias.
    biased = ab_summary(_votes(30, 0, side="A"))
    assert biased.position_bias.a_wins == 30 and biased.position_bias.biased
    # Sides randomized: the candidate wins on both sides, no position bias.
    mixed = _votes(15, 0, side="A") + [ABVote(500 + i, "U9", "B", "B") for i in range(15)]
    summary = ab_summary(mixed)
    assert summary.wins == 30 and summary.position_bias.p_value == pytest.approx(1.0)
    assert not summary.position_bias.biased


def test_ab_summary_no_votes():
    summary = ab_summary([])
    assert summary.win_rate is None and summary.p_value == 1.0 and summary.verdict == "no decisive votes yet"
    assert summary.prompt_bootstrap_ci is None


def test_bootstrap_over_prompts_is_wider_when_votes_cluster():
    # 20 prompts, 10 votes each, all voters agree per prompt: 14 prompts won, 6 lost.
    wins = [10] * 14 + [0] * 6
    decisive = [10] * 20
    clustered = bootstrap_win_rate(wins, decisive, rounds=4000, seed=1)
    naive = wilson_interval(140, 200)
    assert clustered.contains(0.7)
    assert clustered.high - clustered.low > (naive.high - naive.low) * 1.5


def _tournament(strengths, battles, seed, tie_share=0.1):
    rng = np.random.default_rng(seed)
    names = [f"model-{i}" for i in range(len(strengths))]
    theta = np.array(strengths, dtype=float)
    a = rng.integers(0, len(names), battles)
    b = (a + rng.integers(1, len(names), battles)) % len(names)
    p = 1 / (1 + np.exp(-(theta[a] - theta[b])))
    u = rng.random(battles)
    outcome = np.where(u < tie_share, 0.5, np.where(rng.random(battles) < p, 1.0, 0.0))
    return names, [(names[i], names[j], float(o)) for i, j, o in zip(a, b, outcome, strict=True)]


def test_bradley_terry_recovers_the_order_of_known_strengths():
    strengths = [0.0, 0.4, 0.8, 1.2, 1.6]
    names, battles = _tournament(strengths, 20_000, seed=7)
    board = bradley_terry(battles, bootstrap_rounds=200, seed=3)
    assert [r.model for r in board.ratings] == names[::-1]
    by_name = {r.model: r for r in board.ratings}
    # Ties are half wins, so the Elo gaps shrink a little versus the generating strengths; spacing stays even.
    gaps = [by_name[names[i + 1]].rating - by_name[names[i]].rating for i in range(4)]
    assert max(gaps) - min(gaps) < 20
    for rating in board.ratings:
        assert rating.ci_low <= rating.rating <= rating.ci_high
        assert rating.ci_high - rating.ci_low < 40
    assert np.mean([r.rating for r in board.ratings]) == pytest.approx(1000.0)


def test_bradley_terry_matches_closed_form_for_two_models():
    # Two models: the MLE odds are wins/losses, so the Elo gap is 400·log10(wins/losses).
    battles = [("cand", "base", 1.0)] * 30 + [("cand", "base", 0.0)] * 10 + [("base", "cand", 0.5)] * 4
    board = bradley_terry(battles, bootstrap_rounds=0, prior=0.0)
    gap = board.ratings[0].rating - board.ratings[1].rating
    assert board.ratings[0].model == "cand"
    assert gap == pytest.approx(400 * math.log10(32 / 12), abs=1e-6)


def test_bradley_terry_stays_finite_when_a_model_never_wins():
    battles = [("a", "b", 1.0)] * 20 + [("b", "c", 1.0)] * 20
    board = bradley_terry(battles, bootstrap_rounds=50)
    assert [r.model for r in board.ratings] == ["a", "b", "c"]
    assert all(math.isfinite(r.rating) and math.isfinite(r.ci_low) for r in board.ratings)


def test_bradley_terry_anchor_and_validation():
    battles = [("cand", "base", 1.0)] * 3 + [("cand", "base", 0.0)]
    board = bradley_terry(battles, anchor="base", bootstrap_rounds=20)
    base = next(r for r in board.ratings if r.model == "base")
    assert base.rating == pytest.approx(1000.0)
    with pytest.raises(ValueError):
        bradley_terry([("a", "b", 2.0)])
    assert bradley_terry([]).ratings == []


def test_batched_fit_equals_one_at_a_time():
    rng = np.random.default_rng(0)
    matrices = rng.integers(0, 30, size=(6, 4, 4)).astype(float)
    batched = fit_bradley_terry(matrices)
    for i in range(6):
        assert np.allclose(batched[i], fit_bradley_terry(matrices[i]), atol=1e-7)
    assert np.allclose(to_elo(batched).mean(-1), 1000.0)


def test_win_matrix_counts_ties_as_half():
    matrix = win_matrix(np.array([0, 0, 1]), np.array([1, 1, 0]), np.array([1.0, 0.5, 0.0]), 2)
    assert matrix.tolist() == [[0.0, 2.5], [0.5, 0.0]]

"""Statistics for blind side-by-side evaluation.

Two models: the candidate's win rate on decisive votes with a 95% Wilson interval, the exact two-sided
binomial sign test, a tie-inclusive rate, power (and a note when the votes cannot detect the effect),
a position-bias check and a bootstrap over prompts, because votes cluster by prompt.

More than two models: Bradley–Terry strengths by maximum likelihood (a tie is half a win for each side),
shown on the Elo scale (400·log10 odds + 1000) with bootstrap 95% intervals. Everything is vectorised
with numpy so 100k votes and 1,000 bootstrap rounds take well under a second.

Pure functions only: no database, no Slack. What a vote means for the candidate is the vote rule of
``storage.votes``.
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any, overload

import numpy as np
from scipy.stats import binom, binomtest, norm

from storage.votes import Outcome, VoteChoice, candidate_outcome

ELO_SCALE = 400.0 / math.log(10.0)  # natural-log odds -> Elo points
ELO_BASE = 1000.0


@dataclass(frozen=True)
class Interval:
    low: float
    high: float

    def contains(self, value: float) -> bool:
        return self.low <= value <= self.high


# ---------------------------------------------------------------------------------------------------------
# One proportion: interval, exact test, power


def wilson_interval(successes: int, trials: int, confidence: float = 0.95) -> Interval:
    """Wilson score interval for a binomial proportion; (0, 1) when there are no trials."""
    _check_counts(successes, trials)
    if trials == 0:
        return Interval(0.0, 1.0)
    z = float(norm.ppf(0.5 + confidence / 2))
    phat = successes / trials
    denominator = 1 + z * z / trials
    centre = (phat + z * z / (2 * trials)) / denominator
    half = z * math.sqrt(phat * (1 - phat) / trials + z * z / (4 * trials * trials)) / denominator
    return Interval(max(0.0, centre - half), min(1.0, centre + half))


def sign_test_p(successes: int, trials: int) -> float:
    """Exact two-sided binomial sign test against 50% (1.0 when there are no trials)."""
    _check_counts(successes, trials)
    if trials == 0:
        return 1.0
    return float(binomtest(successes, trials, 0.5, alternative="two-sided").pvalue)


def _two_sided_p(successes: np.ndarray, trials: np.ndarray | int) -> np.ndarray:
    """Vectorised twin of `sign_test_p` (for p = 0.5 the two-sided test doubles the smaller tail)."""
    successes = np.asarray(successes)
    lower = binom.cdf(successes, trials, 0.5)
    upper = binom.sf(successes - 1, trials, 0.5)
    return np.minimum(1.0, 2.0 * np.minimum(lower, upper))


def wins_needed(trials: int, alpha: float = 0.05) -> int | None:
    """The fewest wins out of `trials` decisive votes with a sign-test p-value <= alpha (None: impossible)."""
    if trials <= 0:
        return None
    ks = np.arange(trials // 2, trials + 1)
    significant = ks[_two_sided_p(ks, trials) <= alpha + 1e-12]
    return int(significant[0]) if significant.size else None


@overload
def power(trials: int, true_rate: float, alpha: float = 0.05) -> float: ...
@overload
def power(trials: np.ndarray, true_rate: float, alpha: float = 0.05) -> np.ndarray: ...
def power(trials: int | np.ndarray, true_rate: float, alpha: float = 0.05) -> np.ndarray | float:
    """Exact power of the two-sided sign test: P(p <= alpha) when the true win rate is `true_rate`.

    Works on an array of trial counts at once. The exact power is a saw-tooth in n, which is why
    `votes_for_power` asks for the count from which it *stays* above the target.
    """
    scalar = np.isscalar(trials)
    n = np.atleast_1d(np.asarray(trials, dtype=np.int64))
    # Upper critical value: the smallest k > n/2 with 2·P(X >= k) <= alpha; the test is symmetric.
    k_high = binom.isf(alpha / 2, n, 0.5).astype(np.int64) + 1
    # isf is computed in floating point: step k until the exact p-value agrees.
    for _ in range(3):
        too_low = (k_high <= n) & (_two_sided_p(k_high, n) > alpha + 1e-12)
        k_high = np.where(too_low, k_high + 1, k_high)
        too_high = (k_high - 1 > n / 2) & (_two_sided_p(k_high - 1, n) <= alpha + 1e-12)
        k_high = np.where(too_high, k_high - 1, k_high)
    k_low = n - k_high
    result = binom.sf(k_high - 1, n, true_rate) + np.where(k_low >= 0, binom.cdf(k_low, n, true_rate), 0.0)
    result = np.where(n > 0, np.clip(result, 0.0, 1.0), 0.0)
    return float(result[0]) if scalar else result


def votes_for_power(true_rate: float, target: float = 0.8, alpha: float = 0.05) -> int:
    """Decisive votes from which the sign test keeps at least `target` power at `true_rate`.

    Check values (two-sided alpha 0.05, 80% power): 70% → 54 votes, 60% → 210 votes.
    """
    effect = abs(true_rate - 0.5)
    if effect == 0:
        raise ValueError("a true win rate of 50% cannot be told apart from chance")
    rough = ((norm.ppf(1 - alpha / 2) * 0.5 + norm.ppf(target) * math.sqrt(true_rate * (1 - true_rate))) / effect) ** 2
    limit = int(rough * 2) + 200
    powers = power(np.arange(1, limit + 1), true_rate, alpha)
    below = np.nonzero(powers < target)[0]
    return int(below[-1] + 2) if below.size else 1


def underpowered_note(wins: int, decisive: int, alpha: float = 0.05, target: float = 0.8) -> str | None:
    """A sentence saying the votes are too few to detect the effect, or None when the test decided."""
    if decisive > 0 and sign_test_p(wins, decisive) <= alpha:
        return None
    observed = wins / decisive if decisive else 0.5
    # The effect the team cares about: what was seen, but at least a 70/30 preference.
    effect_rate = max(abs(observed - 0.5), 0.2) + 0.5
    effect_rate = min(effect_rate, 0.95)
    achieved = power(decisive, effect_rate, alpha) if decisive else 0.0
    if achieved >= target:
        return None
    needed = votes_for_power(effect_rate, target, alpha)
    return (
        f"Underpowered: {decisive} decisive votes give {achieved:.0%} power to detect a true "
        f"{effect_rate:.0%}/{1 - effect_rate:.0%} preference; about {needed} are needed for {target:.0%} power."
    )


# ---------------------------------------------------------------------------------------------------------
# Two models: the A/B summary


@dataclass(frozen=True)
class ABVote:
    """One voter's choice on one comparison, and which side the candidate was shown on."""

    comparison: int | str
    voter: str
    choice: str  # a VoteChoice value
    candidate_side: str  # VoteChoice.A or VoteChoice.B

    @property
    def outcome(self) -> Outcome:
        """The vote from the candidate's side."""
        return candidate_outcome(self.choice, self.candidate_side)


@dataclass(frozen=True)
class PositionBias:
    """Do voters favour the left answer (A) regardless of the model? A sign test on A-wins."""

    a_wins: int
    b_wins: int
    p_value: float

    @property
    def biased(self) -> bool:
        return self.p_value <= 0.05


@dataclass(frozen=True)
class ABSummary:
    wins: int
    losses: int
    ties: int
    both_bad: int
    win_rate: float | None  # on decisive votes
    ci: Interval  # 95% Wilson on decisive votes
    p_value: float  # exact two-sided sign test
    tie_inclusive_rate: float | None  # (wins + half of ties and both-bad) / all votes
    significant: bool
    underpowered: str | None
    position_bias: PositionBias
    votes_per_voter: dict[str, int]
    prompt_bootstrap_ci: Interval | None  # 95% percentile interval, resampling prompts
    comparisons_voted: int
    alpha: float = 0.05
    wins_needed: int | None = None  # for significance at this many decisive votes

    @property
    def decisive(self) -> int:
        return self.wins + self.losses

    @property
    def total(self) -> int:
        return self.wins + self.losses + self.ties + self.both_bad

    @property
    def verdict(self) -> str:
        if self.decisive == 0:
            return "no decisive votes yet"
        if not self.significant:
            return "no significant difference"
        return "candidate is better" if self.wins > self.losses else "baseline is better"

    def to_json(self) -> dict[str, Any]:
        data = asdict(self)
        data["ci_low"], data["ci_high"] = self.ci.low, self.ci.high
        data.pop("ci")
        boot = self.prompt_bootstrap_ci
        data["prompt_bootstrap_ci"] = None if boot is None else [boot.low, boot.high]
        data["decisive"] = self.decisive
        data["total_votes"] = self.total
        data["verdict"] = self.verdict
        data["position_bias"]["biased"] = self.position_bias.biased
        return data


def ab_summary(
    votes: Iterable[ABVote], *, alpha: float = 0.05, bootstrap_rounds: int = 2000, seed: int = 0
) -> ABSummary:
    votes = list(votes)
    outcomes = Counter(vote.outcome for vote in votes)
    wins, losses = outcomes[Outcome.WIN], outcomes[Outcome.LOSS]
    ties, both_bad = outcomes[Outcome.TIE], outcomes[Outcome.BAD]
    decisive = wins + losses
    p_value = sign_test_p(wins, decisive)
    total = decisive + ties + both_bad
    a_wins = sum(1 for vote in votes if vote.choice == VoteChoice.A)
    b_wins = sum(1 for vote in votes if vote.choice == VoteChoice.B)

    per_prompt_wins: Counter[int | str] = Counter()
    per_prompt_decisive: Counter[int | str] = Counter()
    for vote in votes:
        per_prompt_decisive[vote.comparison] += 0
        if vote.outcome in (Outcome.WIN, Outcome.LOSS):
            per_prompt_decisive[vote.comparison] += 1
            per_prompt_wins[vote.comparison] += vote.outcome == Outcome.WIN
    keys = list(per_prompt_decisive)
    boot = bootstrap_win_rate(
        [per_prompt_wins[key] for key in keys],
        [per_prompt_decisive[key] for key in keys],
        rounds=bootstrap_rounds,
        seed=seed,
    )
    return ABSummary(
        wins=wins,
        losses=losses,
        ties=ties,
        both_bad=both_bad,
        win_rate=wins / decisive if decisive else None,
        ci=wilson_interval(wins, decisive),
        p_value=p_value,
        tie_inclusive_rate=(wins + 0.5 * (ties + both_bad)) / total if total else None,
        significant=decisive > 0 and p_value <= alpha,
        underpowered=underpowered_note(wins, decisive, alpha),
        position_bias=PositionBias(a_wins, b_wins, sign_test_p(a_wins, a_wins + b_wins)),
        votes_per_voter=dict(Counter(vote.voter for vote in votes).most_common()),
        prompt_bootstrap_ci=boot,
        comparisons_voted=len(keys),
        alpha=alpha,
        wins_needed=wins_needed(decisive, alpha),
    )


def bootstrap_win_rate(
    wins_per_prompt: Sequence[int],
    decisive_per_prompt: Sequence[int],
    *,
    rounds: int = 2000,
    confidence: float = 0.95,
    seed: int = 0,
) -> Interval | None:
    """Percentile interval of the win rate when whole prompts are resampled with replacement.

    Votes on one prompt are not independent (the same answers, often the same voters), so this interval
    is the honest one when prompts have several votes each. None when there are no decisive votes.
    """
    wins = np.asarray(wins_per_prompt, dtype=np.float64)
    decisive = np.asarray(decisive_per_prompt, dtype=np.float64)
    if wins.size == 0 or decisive.sum() == 0:
        return None
    rng = np.random.default_rng(seed)
    # Multinomial counts of how often each prompt is drawn == resampling prompt indices, without the index matrix.
    draws = rng.multinomial(wins.size, np.full(wins.size, 1.0 / wins.size), size=rounds)
    boot_decisive = draws @ decisive
    keep = boot_decisive > 0
    rates = (draws @ wins)[keep] / boot_decisive[keep]
    tail = (1 - confidence) / 2 * 100
    low, high = np.percentile(rates, [tail, 100 - tail])
    return Interval(float(low), float(high))


# ---------------------------------------------------------------------------------------------------------
# Several models: Bradley–Terry on the Elo scale


@dataclass(frozen=True)
class Rating:
    model: str
    rating: float  # Elo scale
    ci_low: float
    ci_high: float
    battles: int
    score: float  # wins + half ties, as a share of its battles


@dataclass(frozen=True)
class Leaderboard:
    ratings: list[Rating]  # best first
    battles: int
    bootstrap_rounds: int
    anchor: str | None = None
    notes: list[str] = field(default_factory=list)

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


def win_matrix(
    index_a: np.ndarray, index_b: np.ndarray, outcome: np.ndarray, models: int, weights: np.ndarray | None = None
) -> np.ndarray:
    """W[i, j] = wins of model i over model j; a tie (outcome 0.5) is half a win for each side."""
    outcome = np.asarray(outcome, dtype=np.float64)
    weight = np.ones_like(outcome) if weights is None else np.asarray(weights, dtype=np.float64)
    matrix = np.zeros(models * models)
    np.add.at(matrix, index_a * models + index_b, weight * outcome)
    np.add.at(matrix, index_b * models + index_a, weight * (1.0 - outcome))
    return matrix.reshape(models, models)


def fit_bradley_terry(wins: np.ndarray, *, prior: float = 0.01, tol: float = 1e-9, max_iter: int = 10_000) -> np.ndarray:
    """Maximum-likelihood log-strengths (centred at 0) from win matrices, batched over a leading axis.

    `wins` has shape (K, K) or (B, K, K). The minorise–maximise update of Hunter (2004) raises the
    likelihood at every step. `prior` adds that many virtual tied battles between every pair of models:
    it keeps strengths finite when a model won or lost everything (the bare MLE does not exist then),
    and on real data it moves ratings by a fraction of a point.
    """
    wins = np.asarray(wins, dtype=np.float64)
    single = wins.ndim == 2
    if single:
        wins = wins[None]
    models = wins.shape[-1]
    off_diagonal = 1.0 - np.eye(models)
    wins = wins * off_diagonal + (prior / 2.0) * off_diagonal
    games = wins + np.swapaxes(wins, -1, -2)
    total_wins = wins.sum(-1)
    log_strength = np.zeros(wins.shape[:2])
    for _ in range(max_iter):
        strength = np.exp(log_strength)
        denominator = (games / (strength[:, :, None] + strength[:, None, :])).sum(-1)
        updated = np.log(total_wins) - np.log(denominator)
        updated -= updated.mean(-1, keepdims=True)
        change = np.abs(updated - log_strength).max()
        log_strength = updated
        if change < tol:
            break
    return log_strength[0] if single else log_strength


def to_elo(log_strength: np.ndarray, anchor_index: int | None = None) -> np.ndarray:
    """Elo scale: 400·log10 odds + 1000, at the mean model (or the anchor model) = 1000."""
    log_strength = np.asarray(log_strength, dtype=np.float64)
    reference = (
        log_strength.mean(-1, keepdims=True) if anchor_index is None else log_strength[..., anchor_index : anchor_index + 1]
    )
    return ELO_BASE + ELO_SCALE * (log_strength - reference)


def bradley_terry(
    battles: Iterable[tuple[str, str, float]],
    *,
    bootstrap_rounds: int = 1000,
    confidence: float = 0.95,
    anchor: str | None = None,
    seed: int = 0,
    prior: float = 0.01,
) -> Leaderboard:
    """Ratings from battles `(model_a, model_b, outcome)` with outcome 1 (a won), 0 (b won) or 0.5 (tie).

    The bootstrap resamples battles with replacement. Battles only differ by (pair, outcome), so a
    resample is a multinomial draw over those categories — identical in distribution to drawing
    battle indices, and independent of the number of votes.
    """
    rows = battles if isinstance(battles, list) else list(battles)
    if not rows:
        return Leaderboard([], 0, 0, anchor)
    # Names → indices with a dict (a numpy sort of 200k strings would cost more than the whole fit).
    lookup: dict[str, int] = {}
    index_a = np.fromiter((lookup.setdefault(a, len(lookup)) for a, _, _ in rows), dtype=np.int64, count=len(rows))
    index_b = np.fromiter((lookup.setdefault(b, len(lookup)) for _, b, _ in rows), dtype=np.int64, count=len(rows))
    outcome = np.fromiter((o for _, _, o in rows), dtype=np.float64, count=len(rows))
    # Alphabetical model order, so results do not depend on the order the votes arrived in.
    names = sorted(lookup)
    remap = np.array([names.index(name) for name in lookup], dtype=np.int64)
    index_a, index_b = remap[index_a], remap[index_b]
    models = np.array(names, dtype=object)
    if np.any((outcome != 0.0) & (outcome != 0.5) & (outcome != 1.0)):
        raise ValueError("battle outcomes must be 1 (first model won), 0 (second won) or 0.5 (tie)")
    return _leaderboard(models.tolist(), index_a, index_b, outcome, bootstrap_rounds, confidence, anchor, seed, prior)


def _leaderboard(
    models: list[str],
    index_a: np.ndarray,
    index_b: np.ndarray,
    outcome: np.ndarray,
    bootstrap_rounds: int,
    confidence: float,
    anchor: str | None,
    seed: int,
    prior: float,
) -> Leaderboard:
    k = len(models)
    if anchor is not None and anchor not in models:
        raise ValueError(f"anchor model {anchor!r} has no battles")
    anchor_index = models.index(anchor) if anchor is not None else None
    # Categories: (first model, second model, outcome code); counts per category are all the data there is.
    code = np.rint(outcome * 2).astype(np.int64)
    category = (index_a * k + index_b) * 3 + code
    unique_categories, counts = np.unique(category, return_counts=True)
    cat_a = unique_categories // 3 // k
    cat_b = unique_categories // 3 % k
    cat_outcome = (unique_categories % 3) / 2.0

    point = fit_bradley_terry(win_matrix(cat_a, cat_b, cat_outcome, k, counts), prior=prior)
    ratings = to_elo(point, anchor_index)
    low = high = ratings
    rounds = bootstrap_rounds if len(outcome) > 0 else 0
    if rounds > 0:
        rng = np.random.default_rng(seed)
        draws = rng.multinomial(len(outcome), counts / counts.sum(), size=rounds)  # (B, categories)
        pair_cell = cat_a * k + cat_b
        matrices = np.zeros((rounds, k * k))
        # Wins of a over b and of b over a, per bootstrap round, without a Python loop over battles.
        np.add.at(matrices.T, pair_cell, (draws * cat_outcome).T)
        np.add.at(matrices.T, cat_b * k + cat_a, (draws * (1.0 - cat_outcome)).T)
        boot = to_elo(fit_bradley_terry(matrices.reshape(rounds, k, k), prior=prior), anchor_index)
        tail = (1 - confidence) / 2 * 100
        low, high = np.percentile(boot, [tail, 100 - tail], axis=0)

    played = np.bincount(index_a, minlength=k) + np.bincount(index_b, minlength=k)
    score = np.bincount(index_a, weights=outcome, minlength=k) + np.bincount(index_b, weights=1.0 - outcome, minlength=k)
    order = np.argsort(-ratings, kind="stable")
    table = [
        Rating(
            model=models[i],
            rating=float(ratings[i]),
            ci_low=float(low[i]),
            ci_high=float(high[i]),
            battles=int(played[i]),
            score=float(score[i] / played[i]) if played[i] else 0.0,
        )
        for i in order
    ]
    return Leaderboard(table, int(len(outcome)), rounds, anchor)


def _check_counts(successes: int, trials: int) -> None:
    if trials < 0 or successes < 0 or successes > trials:
        raise ValueError(f"need 0 <= successes <= trials, got {successes} of {trials}")

"""The results of an evaluation round, computed once for ``/ft results`` and ``ftbot results``.

Reads the round's votes (storage.evals), computes the A/B statistics (trainers.evaluation.stats) from the candidate's side,
a Bradley–Terry leaderboard when the rounds so far involve more than two models, and the judge–human agreement
when an LLM judge scored the round. No Slack here: the bot and the CLI format :class:`RoundReport`.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, replace
from datetime import datetime
from typing import Any

from storage.db import Database
from storage.evals import (
    EvalRoundNotFound,
    RoundStatus,
    all_votes,
    get_round,
    latest_round,
    round_comparisons,
    round_verdicts,
    votes_by_comparison,
)
from storage.model_names import display_name
from storage.models import Comparison, EvalRound, JudgeVerdict, Vote, stored_id
from storage.votes import SIDES, Outcome, VoteChoice, candidate_outcome, decided_side, score_for_a
from trainers.evaluation.stats import ABSummary, ABVote, Leaderboard, ab_summary, bradley_terry, sign_test_p, wins_needed


@dataclass(frozen=True)
class JudgeAgreement:
    judge_model: str
    judged: int
    compared: int  # comparisons the humans decided and the judge scored
    agreed: int
    judge_wins: int  # from the candidate's side
    judge_losses: int
    judge_ties: int

    @property
    def rate(self) -> float | None:
        return self.agreed / self.compared if self.compared else None

    def to_json(self) -> dict[str, Any]:
        return {
            "judge_model": self.judge_model, "judged": self.judged, "compared_with_humans": self.compared,
            "agreed": self.agreed, "agreement": self.rate, "judge_wins": self.judge_wins,
            "judge_losses": self.judge_losses, "judge_ties": self.judge_ties,
        }


@dataclass(frozen=True)
class LengthBias:
    """Do voters prefer the longer answer? A sign test on decisive votes where the answers' lengths differ.

    Longer answers often win on looks alone (Chatbot Arena's "style control" adjusts for it); a strong effect here
    means the win rate partly measures verbosity.
    """

    longer_won: int
    shorter_won: int
    p_value: float

    def to_json(self) -> dict[str, Any]:
        return {"longer_won": self.longer_won, "shorter_won": self.shorter_won, "p_value": self.p_value,
                "biased": self.p_value <= 0.05}


@dataclass(frozen=True)
class RoundReport:
    round: EvalRound
    summary: ABSummary
    comparisons: list[dict[str, Any]]
    leaderboard: Leaderboard | None
    judges: list[JudgeAgreement]
    length_bias: LengthBias | None = None

    @property
    def candidate(self) -> str:
        return display_name(self.round.candidate_model)

    @property
    def baseline(self) -> str:
        return display_name(self.round.baseline_model)

    @property
    def revealed(self) -> bool:
        """Model names are shown once voting is over (before that, only the tally)."""
        return self.round.status in RoundStatus.REVEALED

    def to_json(self) -> dict[str, Any]:
        s = self.summary
        return {
            "round_id": self.round.id,
            "status": self.round.status,
            "candidate": self.round.candidate_model if self.revealed else None,
            "baseline": self.round.baseline_model if self.revealed else None,
            "channel": self.round.channel,
            "closes_at": _iso(self.round.closes_at),
            "closed_at": _iso(self.round.closed_at),
            "wins": s.wins,
            "losses": s.losses,
            "ties": s.ties,
            "both_bad": s.both_bad,
            "decisive": s.decisive,
            "win_rate": s.win_rate,
            "ci_low": s.ci.low,
            "ci_high": s.ci.high,
            "p_value": s.p_value,
            "tie_inclusive_rate": s.tie_inclusive_rate,
            "significant": s.significant,
            "verdict": s.verdict,
            "underpowered": s.underpowered,
            "wins_needed": s.wins_needed,
            "position_bias": {"a_wins": s.position_bias.a_wins, "b_wins": s.position_bias.b_wins,
                              "p_value": s.position_bias.p_value, "biased": s.position_bias.biased},
            "prompt_bootstrap_ci": None if s.prompt_bootstrap_ci is None else [s.prompt_bootstrap_ci.low, s.prompt_bootstrap_ci.high],
            "votes_per_voter": s.votes_per_voter,
            "comparisons": self.comparisons,
            "leaderboard": None if self.leaderboard is None else self.leaderboard.to_json(),
            "judges": [j.to_json() for j in self.judges],
            "length_bias": None if self.length_bias is None else self.length_bias.to_json(),
        }

    def lines(self, name_of: Callable[[str], str] = str) -> list[str]:
        """The result as plain sentences (the CLI prints them; the bot puts them into blocks).

        `name_of` turns a voter's user ID into a display name (the bot looks names up in Slack).
        """
        s = self.summary
        who = self.candidate if self.revealed else "the candidate"
        out = [f"Round {self.round.id} ({self.round.status}): {s.total} votes on {len(self.comparisons)} questions — "
               f"{s.wins} wins, {s.losses} losses, {s.ties} ties, {s.both_bad} both bad for {who}."]
        if s.win_rate is None:
            if self.round.status in RoundStatus.VOTABLE:
                out.append("No decisive votes yet: react with 🅰️ or 🅱️ on the comparison messages.")
            else:  # voting is over: inviting votes now would only collect reactions that count for nothing
                out.append(f"No decisive votes: voting on this round ended ({self.round.status}) before any answer was "
                           "preferred, so it decides nothing. Start a new round with /ft eval.")
        else:
            out.append(
                f"Win rate on decisive votes: {s.win_rate:.1%} (95% Wilson interval {s.ci.low:.1%}–{s.ci.high:.1%}); "
                f"exact sign test {format_p(s.p_value)} → {s.verdict}."
            )
            if s.tie_inclusive_rate is not None:
                out.append(f"Counting ties and both-bad as half a win: {s.tie_inclusive_rate:.1%}.")
            if s.prompt_bootstrap_ci is not None and s.comparisons_voted > 1:
                ci = s.prompt_bootstrap_ci
                out.append(f"Bootstrap over questions (votes cluster by question): {ci.low:.1%}–{ci.high:.1%}.")
            needed = wins_needed(s.decisive)
            if needed is not None and not s.significant:
                out.append(f"Significance at {s.decisive} decisive votes needs {needed} of them for one side.")
        if s.underpowered:
            out.append(s.underpowered)
        bias = s.position_bias
        if bias.a_wins + bias.b_wins:
            verdict = "voters favour a side" if bias.biased else "no sign of side bias"
            out.append(f"Position check: A won {bias.a_wins}, B won {bias.b_wins} ({format_p(bias.p_value)}; {verdict}).")
        length = self.length_bias
        if length is not None and length.longer_won + length.shorter_won:
            verdict = "voters favour longer answers" if length.p_value <= 0.05 and length.longer_won > length.shorter_won else (
                "voters favour shorter answers" if length.p_value <= 0.05 else "no sign of a length preference")
            out.append(f"Length check: the longer answer won {length.longer_won}, the shorter {length.shorter_won} "
                       f"({format_p(length.p_value)}; {verdict}).")
        if s.votes_per_voter:
            voters = ", ".join(f"{name_of(voter)}: {count}" for voter, count in list(s.votes_per_voter.items())[:10])
            more = len(s.votes_per_voter) - 10
            out.append(f"Votes per voter: {voters}" + (f" and {more} more" if more > 0 else "") + ".")
        if self.revealed:
            out.append(f"Revealed: the candidate was {self.candidate}; the baseline was {self.baseline}.")
        else:
            out.append("Model names stay hidden until voting closes (/ft eval close).")
        for judge in self.judges:
            rate = "n/a" if judge.rate is None else f"{judge.rate:.0%}"
            out.append(
                f"LLM judge {judge.judge_model}: {judge.judge_wins} wins, {judge.judge_losses} losses, {judge.judge_ties} ties "
                f"for the candidate; agrees with the voters on {judge.agreed}/{judge.compared} decided questions ({rate})."
            )
        if self.leaderboard is not None:
            out.append(f"Leaderboard across all rounds (Bradley–Terry, Elo scale, 95% bootstrap; {self.leaderboard.battles} votes):")
            for rank, rating in enumerate(self.leaderboard.ratings, 1):
                out.append(
                    f"  {rank}. {display_name(rating.model)} {rating.rating:.0f} "
                    f"[{rating.ci_low:.0f}, {rating.ci_high:.0f}] ({rating.battles} votes)"
                )
        return out


def _iso(value: datetime | None) -> str | None:
    return value.isoformat() if value is not None else None


def format_p(value: float) -> str:
    return "p < 0.001" if value < 0.001 else f"p = {value:.3f}" if value < 0.1 else f"p = {value:.2f}"


def resolve_round(db: Database, round_id: int | None = None, *, channel: str | None = None) -> EvalRound:
    if round_id is not None:
        return get_round(db, round_id)
    round_ = latest_round(db, channel=channel) or (latest_round(db) if channel is not None else None)
    if round_ is None:
        raise EvalRoundNotFound("there is no evaluation round yet: start one with `/ft eval` in a channel.")
    return round_


def round_report(db: Database, round_id: int | None = None, *, channel: str | None = None,
                 bootstrap_rounds: int = 1000) -> RoundReport:
    round_ = resolve_round(db, round_id, channel=channel)
    grouped = votes_by_comparison(db, stored_id(round_))
    comparisons = round_comparisons(db, stored_id(round_))
    ab_votes = [
        ABVote(stored_id(c), vote.voter, vote.choice, c.candidate_side)
        for c in comparisons for vote in grouped.get(stored_id(c), [])
    ]
    summary = ab_summary(ab_votes, bootstrap_rounds=bootstrap_rounds)
    rows = []
    for c in comparisons:
        votes = grouped.get(stored_id(c), [])
        rows.append({
            "id": c.id,
            "message_ts": c.message_ts,
            "channel": c.channel,
            "candidate_side": c.candidate_side,
            "votes": [{"voter": v.voter, "choice": v.choice, "reaction": v.reaction} for v in votes],
            "decided": decided_side(v.choice for v in votes),
        })
    report = RoundReport(round_, summary, rows, None, _judges(db, round_, comparisons, grouped),
                         _length_bias(comparisons, grouped))
    # A round still open gets counts only: a leaderboard names models, and this round's would be among them.
    return replace(report, leaderboard=_leaderboard(db, bootstrap_rounds)) if report.revealed else report


def _length_bias(comparisons: list[Comparison], grouped: dict[int, list[Vote]]) -> LengthBias:
    longer = shorter = 0
    for comparison in comparisons:
        len_a, len_b = len(comparison.answer_a), len(comparison.answer_b)
        if len_a == len_b:
            continue
        longer_side = VoteChoice.A if len_a > len_b else VoteChoice.B
        for vote in grouped.get(stored_id(comparison), []):
            if vote.choice in SIDES:
                longer += vote.choice == longer_side
                shorter += vote.choice != longer_side
    return LengthBias(longer, shorter, sign_test_p(longer, longer + shorter))


def _leaderboard(db: Database, bootstrap_rounds: int) -> Leaderboard | None:
    battles = [(c.model_a, c.model_b, score_for_a(v.choice)) for c, v in all_votes(db)]
    models = {m for a, b, _ in battles for m in (a, b)}
    if len(models) <= 2:
        return None
    return bradley_terry(battles, bootstrap_rounds=bootstrap_rounds)


def _judges(db: Database, round_: EvalRound, comparisons: list[Comparison],
            grouped: dict[int, list[Vote]]) -> list[JudgeAgreement]:
    verdicts = round_verdicts(db, stored_id(round_))
    if not verdicts:
        return []
    by_id = {c.id: c for c in comparisons}
    by_model: dict[str, list[JudgeVerdict]] = {}
    for verdict in verdicts:
        by_model.setdefault(verdict.judge_model, []).append(verdict)
    agreements = []
    for model, items in sorted(by_model.items()):
        compared = agreed = wins = losses = ties = 0
        for verdict in items:
            comparison = by_id[verdict.comparison_id]
            outcome = candidate_outcome(verdict.choice, comparison.candidate_side)
            if outcome == Outcome.TIE:
                ties += 1
            elif outcome == Outcome.WIN:
                wins += 1
            else:
                losses += 1
            human = decided_side(v.choice for v in grouped.get(stored_id(comparison), []))
            if human is not None:
                compared += 1
                agreed += verdict.choice == human
        agreements.append(JudgeAgreement(model, len(items), compared, agreed, wins, losses, ties))
    return agreements

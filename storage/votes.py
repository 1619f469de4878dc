"""The vote rule of blind comparisons, in one place: what a reaction means, which side won, how a vote scores.

A comparison shows two answers, A and B; a voter says which is better, that both are as good ("tie"), or that
both are bad. Everything that turns those choices into decisions lives here: the Slack reactions that cast them,
the side a comparison's voters preferred (and so the preferred answer of its DPO pair), a vote seen from the
candidate model's side, and a vote as a Bradley–Terry battle score. Changing how votes count means editing
this module only. Pure functions: no database, no Slack client.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable
from enum import StrEnum

__all__ = [
    "VoteChoice", "VOTE_CHOICES", "JUDGE_CHOICES", "SIDES", "Outcome", "VOTE_REACTIONS", "normalize_reaction",
    "choice_for_reaction", "decided_side", "preferred_and_rejected", "candidate_outcome", "score_for_a",
]


class VoteChoice(StrEnum):
    """A voter's choice on one comparison, as stored (``Vote.choice``). A and B are also the comparison's sides."""

    A = "A"
    B = "B"
    TIE = "tie"
    BAD = "bad"  # both answers are bad


VOTE_CHOICES = frozenset(VoteChoice)
# An LLM judge picks a side or calls a tie; it has no "both bad".
JUDGE_CHOICES = frozenset({VoteChoice.A, VoteChoice.B, VoteChoice.TIE})
SIDES = (VoteChoice.A, VoteChoice.B)


class Outcome(StrEnum):
    """A vote seen from the candidate model's side."""

    WIN = "win"
    LOSS = "loss"
    TIE = "tie"
    BAD = "bad"


# Reaction name (without colons and skin tone) → vote. Slack names 👎 "-1"; "thumbsdown" is its alias.
VOTE_REACTIONS: dict[str, VoteChoice] = {
    "a": VoteChoice.A, "b": VoteChoice.B, "handshake": VoteChoice.TIE, "-1": VoteChoice.BAD, "thumbsdown": VoteChoice.BAD,
}

# A battle's score for side A (Bradley–Terry): a tie, and "both bad", are half a win for each side.
_SCORE_FOR_A = {VoteChoice.A: 1.0, VoteChoice.B: 0.0, VoteChoice.TIE: 0.5, VoteChoice.BAD: 0.5}


def normalize_reaction(name: str | None) -> str:
    """``+1::skin-tone-2`` → ``+1``: a skin tone does not change the vote."""
    return (name or "").split("::", 1)[0].strip(":")


def choice_for_reaction(name: str | None) -> VoteChoice | None:
    """The vote a reaction casts (skin tones ignored), or None for a reaction that is not a vote."""
    return VOTE_REACTIONS.get(normalize_reaction(name))


def decided_side(choices: Iterable[str]) -> VoteChoice | None:
    """The side a comparison's voters preferred: more votes than the other side and than "both bad"; else None."""
    counts = Counter(choices)
    a, b, bad = counts[VoteChoice.A], counts[VoteChoice.B], counts[VoteChoice.BAD]
    if a > b and a > bad:
        return VoteChoice.A
    if b > a and b > bad:
        return VoteChoice.B
    return None


def preferred_and_rejected(side: VoteChoice, answer_a: str, answer_b: str) -> tuple[str, str] | None:
    """(preferred, rejected) answers of the DPO pair a comparison won by `side` yields (see :func:`decided_side`),
    or None when the answers are empty or identical: they teach nothing."""
    preferred, rejected = (answer_a, answer_b) if side == VoteChoice.A else (answer_b, answer_a)
    if not preferred.strip() or not rejected.strip() or preferred == rejected:
        return None
    return preferred, rejected


def candidate_outcome(choice: str, candidate_side: str) -> Outcome:
    """A vote (or a judge's verdict) from the side of the candidate, which was shown as `candidate_side`."""
    if choice == VoteChoice.TIE:
        return Outcome.TIE
    if choice == VoteChoice.BAD:
        return Outcome.BAD
    return Outcome.WIN if choice == candidate_side else Outcome.LOSS


def score_for_a(choice: str) -> float:
    """A vote as a battle between the models on sides A and B: 1 when A won, 0 when B won, 0.5 otherwise."""
    return _SCORE_FOR_A[VoteChoice(choice)]

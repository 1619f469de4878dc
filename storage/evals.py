"""Blind side-by-side evaluation rounds: comparisons, votes, judge verdicts, and the DPO pairs they yield.

Data access only (no Slack, no statistics). The invariants that Slack's at-least-once delivery and
impatient users would otherwise break live here:

- one vote per voter per comparison (a unique key): a new reaction *moves* the vote, and removing the
  reaction that cast it deletes it; both are single statements, safe on concurrent threads;
- each vote remembers the time of the reaction event that set it, so a late, out-of-order delivery of an
  older event never overwrites a newer choice;
- a round is created once per idempotency key and moves between statuses with compare-and-set updates, so a
  double-clicked button or a retried command cannot post or close a round twice.

The questions a round asks (held-out prompts, never one the candidate trained on) are ``storage.eval_prompts``.
"""

from __future__ import annotations

import random
import secrets
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from enum import StrEnum, nonmember
from typing import Any

from sqlalchemy import Exists, Select, delete, exists, func, literal, select, update
from sqlmodel import Session, col

from storage.db import Database
from storage.errors import FtbotError, ValidationFailed
from storage.eval_prompts import prompt_hash
from storage.examples import SaveResult
from storage.models import Comparison, EvalRound, JudgeVerdict, PreferencePair, Vote, VoteTombstone, stored_id, utcnow
from storage.pairs import add_pair
from storage.records import dpo_record
from storage.types import UTCDateTime
from storage.vocabulary import PairSource
from storage.votes import JUDGE_CHOICES, SIDES, VOTE_CHOICES, VoteChoice, decided_side, preferred_and_rejected

__all__ = [
    "RoundStatus", "VoteAction", "EvalRoundNotFound", "VoteChange", "create_round", "get_round", "latest_round",
    "list_rounds", "round_comparisons", "set_answers", "set_comparison_message", "comparison_for_message", "move_round",
    "close_round", "due_rounds", "is_voting_over", "cast_vote", "get_vote", "retract_vote", "remember_removal", "round_votes",
    "votes_by_comparison", "pairs_from_round", "all_votes", "save_verdict", "round_verdicts", "count_votes",
]


class RoundStatus(StrEnum):
    QUOTED = "quoted"  # OpenAI generation costs money: waiting for Post / Cancel
    GENERATING = "generating"
    POSTING = "posting"
    OPEN = "open"  # voting
    CLOSED = "closed"
    CANCELLED = "cancelled"
    FAILED = "failed"
    # Groups of statuses, not statuses of their own.
    VOTABLE = nonmember((POSTING, OPEN))
    ACTIVE = nonmember((QUOTED, GENERATING, POSTING, OPEN))
    WITH_RESULTS = nonmember((POSTING, OPEN, CLOSED))
    # Voting is over for good, so the models may be named. While a round can still be voted on, no output names its
    # models or counts its votes toward anything named (a leaderboard, a chart): either would sway its voters.
    # A cancelled round is never revealed: it may have been discarded while open, and its voters were told so.
    REVEALED = nonmember((CLOSED,))


class VoteAction(StrEnum):
    """What a reaction did to a vote."""

    CREATED = "created"
    MOVED = "moved"
    UNCHANGED = "unchanged"
    STALE = "stale"  # an older event than the stored vote: ignored


class EvalRoundNotFound(FtbotError):
    """No evaluation round with that id, or none at all yet."""


@dataclass(frozen=True)
class VoteChange:
    """What a reaction did, and the vote it left."""

    action: VoteAction
    vote: Vote | None


# --- rounds and comparisons --------------------------------------------------------------------------------------


def create_round(
    db: Database,
    *,
    candidate_model: str,
    baseline_model: str,
    prompts: Sequence[Sequence[dict[str, Any]]],
    channel: str | None = None,
    created_by: str | None = None,
    idempotency_key: str | None = None,
    status: RoundStatus = RoundStatus.GENERATING,
    rng: random.Random | None = None,
) -> SaveResult[EvalRound]:
    """A round with one comparison per prompt; answers are filled in later by generation.

    Sides are balanced and shuffled: half the comparisons show the candidate as A, half as B, in random order.
    That keeps a left-side preference from looking like a model preference, and lets the position-bias check work.
    """
    if not prompts:
        raise ValidationFailed("an evaluation round needs at least one question")
    if candidate_model == baseline_model:
        raise ValidationFailed(f"the candidate and the baseline are the same model ({candidate_model}): pick another baseline")
    rng = rng or random.Random(secrets.randbits(64))
    sides = (list(SIDES) * (len(prompts) // 2 + 1))[: len(prompts)]
    rng.shuffle(sides)
    def build(session: Session) -> EvalRound:
        round_ = EvalRound(
            idempotency_key=idempotency_key, candidate_model=candidate_model, baseline_model=baseline_model,
            channel=channel, status=status, created_by=created_by,
        )
        session.add(round_)
        session.flush()
        for prompt, side in zip(prompts, sides, strict=True):
            prompt = [dict(m) for m in prompt]
            model_a, model_b = (candidate_model, baseline_model) if side == VoteChoice.A else (baseline_model, candidate_model)
            session.add(Comparison(
                round_id=stored_id(round_), prompt_hash=prompt_hash(prompt), prompt=prompt, model_a=model_a,
                model_b=model_b, answer_a="", answer_b="", candidate_side=side, channel=channel,
            ))
        return round_

    return SaveResult(*db.get_or_insert(col(EvalRound.idempotency_key), idempotency_key, build))


def get_round(db: Database, round_id: int) -> EvalRound:
    with db.session() as session:
        round_ = session.get(EvalRound, round_id)
    if round_ is None:
        raise EvalRoundNotFound(f"evaluation round {round_id} does not exist; `ftbot results --json` shows the latest one.")
    return round_


def latest_round(db: Database, *, channel: str | None = None, statuses: Iterable[str] = RoundStatus.WITH_RESULTS) -> EvalRound | None:
    query = (
        select(EvalRound).where(col(EvalRound.status).in_(list(statuses))).order_by(col(EvalRound.id).desc()).limit(1)
    )
    if channel is not None:
        query = query.where(col(EvalRound.channel) == channel)
    with db.session() as session:
        return session.scalar(query)


def list_rounds(db: Database, *, statuses: Iterable[str] | None = None) -> list[EvalRound]:
    query = select(EvalRound).order_by(col(EvalRound.id))
    if statuses is not None:
        query = query.where(col(EvalRound.status).in_(list(statuses)))
    with db.session() as session:
        return list(session.scalars(query))


def round_comparisons(db: Database, round_id: int) -> list[Comparison]:
    with db.session() as session:
        query = select(Comparison).where(col(Comparison.round_id) == round_id).order_by(col(Comparison.id))
        return list(session.scalars(query))


def set_answers(db: Database, round_id: int, model: str, answers: dict[int, str]) -> None:
    """Store `model`'s answer for each comparison id, on whichever side that model was placed."""
    with db.session() as session:
        for comparison in session.scalars(select(Comparison).where(col(Comparison.id).in_(list(answers)))):
            if comparison.round_id != round_id:
                raise ValueError(f"comparison {comparison.id} is not in round {round_id}")
            if comparison.model_a == model:
                comparison.answer_a = answers[stored_id(comparison)]
            elif comparison.model_b == model:
                comparison.answer_b = answers[stored_id(comparison)]
            else:
                raise ValueError(f"model {model!r} is not in comparison {comparison.id}")
            session.add(comparison)


def set_comparison_message(db: Database, comparison_id: int, *, channel: str, message_ts: str) -> None:
    with db.session() as session:
        session.execute(
            update(Comparison).where(col(Comparison.id) == comparison_id).values(channel=channel, message_ts=message_ts)
        )


def comparison_for_message(db: Database, channel: str, message_ts: str) -> Comparison | None:
    """The comparison posted as this Slack message, if any (reactions on other messages are not votes)."""
    with db.session() as session:
        return session.scalar(
            select(Comparison).where(col(Comparison.message_ts) == message_ts, col(Comparison.channel) == channel)
        )


def move_round(db: Database, round_id: int, to_status: RoundStatus, *, from_status: str | Iterable[str] | None = None,
               closes_at: datetime | None = None) -> bool:
    """Compare-and-set the round's status; True only for the caller that moved it."""
    values: dict[str, Any] = {"status": to_status}
    if closes_at is not None:
        values["closes_at"] = closes_at
    if to_status == RoundStatus.CLOSED:
        values["closed_at"] = utcnow()
    query = update(EvalRound).where(col(EvalRound.id) == round_id)
    if from_status is not None:
        allowed = [from_status] if isinstance(from_status, str) else list(from_status)
        query = query.where(col(EvalRound.status).in_(allowed))
    with db.session() as session:
        return session.exec(query.values(**values)).rowcount == 1


def close_round(db: Database, round_id: int) -> bool:
    """Stop voting on a round; True if this call closed it (False: it was closed already or never opened)."""
    return move_round(db, round_id, RoundStatus.CLOSED, from_status=RoundStatus.VOTABLE)


def due_rounds(db: Database, now: datetime | None = None) -> list[EvalRound]:
    """Open rounds whose voting time is over."""
    now = now or utcnow()
    with db.session() as session:
        rounds = list(session.scalars(select(EvalRound).where(
            col(EvalRound.status).in_(list(RoundStatus.VOTABLE)), col(EvalRound.closes_at).is_not(None)
        )))
    return [r for r in rounds if r.closes_at is not None and _aware(r.closes_at) <= now]


def _aware(value: datetime) -> datetime:
    # SQLite hands back naive datetimes even for timezone-aware columns; they were stored as UTC.
    return value if value.tzinfo is not None else value.replace(tzinfo=UTC)


def is_voting_over(round_: EvalRound, now: datetime | None = None) -> bool:
    if round_.status not in RoundStatus.VOTABLE:
        return True
    return round_.closes_at is not None and _aware(round_.closes_at) <= (now or utcnow())


# --- votes -------------------------------------------------------------------------------------------------------


def cast_vote(
    db: Database, comparison_id: int, voter: str, choice: str, *, reaction: str, at: datetime | None = None
) -> VoteChange:
    """Record or move `voter`'s vote on a comparison; `at` is when the reaction happened (Slack's event time).

    One statement (INSERT … SELECT … WHERE no newer removal … ON CONFLICT DO UPDATE … WHERE stored time <= this
    time): concurrent deliveries and retries converge to the newest reaction, and a retried event changes nothing.
    An add older than the newest removal of the same reaction (:func:`remember_removal`) was delivered out of
    order and casts nothing (``STALE``).
    """
    if choice not in VOTE_CHOICES:
        raise ValueError(f"unknown vote choice {choice!r}")
    at = at or utcnow()
    with db.session() as session:
        before = session.scalar(_vote_of(comparison_id, voter))
        before_state = None if before is None else (before.choice, before.reaction, _aware(before.updated_at))
    insert = db.upsert_insert()
    if insert is None:  # another database: read-then-write, good enough without concurrent voters
        return _cast_vote_portable(db, comparison_id, voter, choice, reaction, at)
    when = literal(at, UTCDateTime())
    row = select(literal(comparison_id), literal(voter), literal(choice), literal(reaction), when, when).where(
        ~_removed_since(comparison_id, voter, reaction, at))
    statement = insert(Vote).from_select(["comparison_id", "voter", "choice", "reaction", "created_at", "updated_at"], row)
    statement = statement.on_conflict_do_update(
        index_elements=["comparison_id", "voter"],
        set_={"choice": statement.excluded.choice, "reaction": statement.excluded.reaction,
              "updated_at": statement.excluded.updated_at},
        where=col(Vote.updated_at) <= statement.excluded.updated_at,
    )
    with db.session() as session:
        _lock_votes_on(session, comparison_id)
        session.execute(statement)
        after = session.scalar(_vote_of(comparison_id, voter))
    if after is None or (after.choice, after.reaction, _aware(after.updated_at)) != (choice, reaction, at):
        return VoteChange(VoteAction.STALE, after)  # a newer removal of this reaction, or a newer vote, stands
    if before_state is None:
        return VoteChange(VoteAction.CREATED, after)
    if before_state[:2] == (choice, reaction):
        return VoteChange(VoteAction.UNCHANGED, after)
    return VoteChange(VoteAction.MOVED, after)


def _cast_vote_portable(db: Database, comparison_id: int, voter: str, choice: str, reaction: str, at: datetime) -> VoteChange:
    with db.session() as session:
        vote = session.scalar(_vote_of(comparison_id, voter))
        if session.scalar(select(_removed_since(comparison_id, voter, reaction, at))):
            return VoteChange(VoteAction.STALE, vote)
        if vote is None:
            vote = Vote(comparison_id=comparison_id, voter=voter, choice=choice, reaction=reaction, created_at=at, updated_at=at)
            session.add(vote)
            return VoteChange(VoteAction.CREATED, vote)
        if _aware(vote.updated_at) > at:
            return VoteChange(VoteAction.STALE, vote)
        action = VoteAction.UNCHANGED if (vote.choice, vote.reaction) == (choice, reaction) else VoteAction.MOVED
        vote.choice, vote.reaction, vote.updated_at = choice, reaction, at
        session.add(vote)
        return VoteChange(action, vote)


def _vote_of(comparison_id: int, voter: str) -> Select[Vote]:
    return select(Vote).where(col(Vote.comparison_id) == comparison_id, col(Vote.voter) == voter)


def _removed_since(comparison_id: int, voter: str, reaction: str, at: datetime) -> Exists:
    """Whether `voter` removed `reaction` from the comparison at or after `at`."""
    return exists().where(
        col(VoteTombstone.comparison_id) == comparison_id, col(VoteTombstone.voter) == voter,
        col(VoteTombstone.reaction) == reaction, col(VoteTombstone.removed_at) >= at,
    )


def _lock_votes_on(session: Session, comparison_id: int) -> None:
    """PostgreSQL: serialize vote writes per comparison, so an add and a removal never miss each other's writes.

    SQLite needs none (one writer at a time), and a read before the write there could not be upgraded to a write
    if another connection wrote in between.
    """
    if session.get_bind().dialect.name == "postgresql":
        session.execute(select(col(Comparison.id)).where(col(Comparison.id) == comparison_id).with_for_update())


def remember_removal(db: Database, comparison_id: int, voter: str, *, reaction: str, at: datetime) -> None:
    """Record that `voter` removed `reaction` at `at` (the newest removal is kept); call it before applying it.

    An add of that reaction older than `at` delivered afterwards then casts nothing (see :func:`cast_vote`).
    """
    insert = db.upsert_insert()
    with db.session() as session:
        _lock_votes_on(session, comparison_id)
        if insert is not None:
            statement = insert(VoteTombstone).values(comparison_id=comparison_id, voter=voter, reaction=reaction,
                                                     removed_at=at)
            session.execute(statement.on_conflict_do_update(
                index_elements=["comparison_id", "voter", "reaction"], set_={"removed_at": statement.excluded.removed_at},
                where=col(VoteTombstone.removed_at) < statement.excluded.removed_at,
            ))
            return
        tombstone = session.scalar(select(VoteTombstone).where(
            col(VoteTombstone.comparison_id) == comparison_id, col(VoteTombstone.voter) == voter,
            col(VoteTombstone.reaction) == reaction))
        if tombstone is None:
            session.add(VoteTombstone(comparison_id=comparison_id, voter=voter, reaction=reaction, removed_at=at))
        elif _aware(tombstone.removed_at) < at:
            tombstone.removed_at = at
            session.add(tombstone)


def get_vote(db: Database, comparison_id: int, voter: str) -> Vote | None:
    with db.session() as session:
        return session.scalar(_vote_of(comparison_id, voter))


def retract_vote(db: Database, comparison_id: int, voter: str, *, reaction: str, at: datetime | None = None,
                 fallback: tuple[str, str] | None = None) -> bool:
    """Withdraw `voter`'s vote if it was cast by `reaction` (removing a reaction that no longer counts does nothing).

    `fallback` is (choice, reaction) of a vote reaction the voter still has on the message: the vote becomes that
    one instead of being deleted. One conditional statement either way, so a retried or out-of-date removal
    (the vote has since moved, or is newer than `at`) changes nothing.
    """
    at = at or utcnow()
    if fallback is not None and fallback[0] not in VOTE_CHOICES:
        raise ValueError(f"unknown vote choice {fallback[0]!r}")
    cast_by_this = (col(Vote.comparison_id) == comparison_id, col(Vote.voter) == voter, col(Vote.reaction) == reaction,
                    col(Vote.updated_at) <= at)
    with db.session() as session:
        if fallback is None:
            result = session.exec(delete(Vote).where(*cast_by_this))
        else:
            choice, kept_reaction = fallback
            result = session.exec(update(Vote).where(*cast_by_this).values(
                choice=choice, reaction=kept_reaction, updated_at=at))
        return result.rowcount == 1


def round_votes(db: Database, round_id: int) -> list[tuple[Comparison, Vote]]:
    with db.session() as session:
        rows = session.execute(
            select(Comparison, Vote).join(Vote, col(Vote.comparison_id) == col(Comparison.id))
            .where(col(Comparison.round_id) == round_id).order_by(col(Comparison.id), col(Vote.id))
        )
        return [(comparison, vote) for comparison, vote in rows]


def votes_by_comparison(db: Database, round_id: int) -> dict[int, list[Vote]]:
    grouped: dict[int, list[Vote]] = {stored_id(c): [] for c in round_comparisons(db, round_id)}
    for comparison, vote in round_votes(db, round_id):
        grouped[stored_id(comparison)].append(vote)
    return grouped


def pairs_from_round(db: Database, round_id: int) -> list[SaveResult[PreferencePair]]:
    """Turn each decided comparison of a round into a DPO pair (prompt, chosen, rejected); idempotent."""
    results = []
    for comparison_id, votes in votes_by_comparison(db, round_id).items():
        side = decided_side(v.choice for v in votes)
        if side is None:
            continue
        with db.session() as session:
            comparison = session.get_one(Comparison, comparison_id)
        pair = preferred_and_rejected(side, comparison.answer_a, comparison.answer_b)
        if pair is None:
            continue
        chosen, rejected = pair
        record = dpo_record(
            comparison.prompt, {"role": "assistant", "content": chosen}, {"role": "assistant", "content": rejected}
        )
        results.append(add_pair(db, record, source_kind=PairSource.VOTE, comparison_id=comparison.id))
    return results


def all_votes(db: Database) -> list[tuple[Comparison, Vote]]:
    """Votes of every closed round (for Bradley–Terry across rounds and models).

    Closed only: an open round's votes would move the named ratings while its voters still vote (see
    ``RoundStatus.REVEALED``), and a cancelled round's votes were never a finished comparison.
    """
    with db.session() as session:
        rows = session.execute(
            select(Comparison, Vote).join(Vote, col(Vote.comparison_id) == col(Comparison.id))
            .join(EvalRound, col(EvalRound.id) == col(Comparison.round_id))
            .where(col(EvalRound.status) == RoundStatus.CLOSED).order_by(col(Comparison.id), col(Vote.id))
        )
        return [(comparison, vote) for comparison, vote in rows]


# --- LLM judge ---------------------------------------------------------------------------------------------------


def save_verdict(
    db: Database, comparison_id: int, judge_model: str, choice: str, detail: dict[str, Any] | None = None
) -> JudgeVerdict:
    """Store (or replace) a judge's verdict on one comparison."""
    if choice not in JUDGE_CHOICES:
        raise ValueError(f"unknown judge choice {choice!r}")
    with db.session() as session:
        verdict = session.scalar(select(JudgeVerdict).where(
            col(JudgeVerdict.comparison_id) == comparison_id, col(JudgeVerdict.judge_model) == judge_model
        ))
        if verdict is None:
            verdict = JudgeVerdict(comparison_id=comparison_id, judge_model=judge_model, choice=choice, detail=detail)
        else:
            verdict.choice, verdict.detail = choice, detail
        session.add(verdict)
    return verdict


def round_verdicts(db: Database, round_id: int, judge_model: str | None = None) -> list[JudgeVerdict]:
    query = (
        select(JudgeVerdict).join(Comparison, col(Comparison.id) == col(JudgeVerdict.comparison_id))
        .where(col(Comparison.round_id) == round_id)
    )
    if judge_model is not None:
        query = query.where(col(JudgeVerdict.judge_model) == judge_model)
    with db.session() as session:
        return list(session.scalars(query.order_by(col(JudgeVerdict.id))))


def count_votes(db: Database, round_id: int) -> int:
    with db.session() as session:
        return session.scalar(
            select(func.count()).select_from(Vote).join(Comparison, col(Comparison.id) == col(Vote.comparison_id))
            .where(col(Comparison.round_id) == round_id)
        ) or 0

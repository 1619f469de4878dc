"""Blind side-by-side evaluation rounds: prompts, comparisons, votes, judge verdicts, and the DPO pairs they yield.

Data access only (no Slack, no statistics). The invariants that Slack's at-least-once delivery and
impatient users would otherwise break live here:

- one vote per voter per comparison (a unique key): a new reaction *moves* the vote, and removing the
  reaction that cast it deletes it; both are single statements, safe on concurrent threads;
- each vote remembers the time of the reaction event that set it, so a late, out-of-order delivery of an
  older event never overwrites a newer choice;
- a round is created once per idempotency key and moves between statuses with compare-and-set updates, so a
  double-clicked button or a retried command cannot post or close a round twice;
- a prompt the candidate model was trained on is never asked about (its hash is in the train split of its snapshot
  or of the snapshot of any model it continued).
"""

from __future__ import annotations

import random
import secrets
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import datetime, timezone
from enum import StrEnum, nonmember
from typing import Any

from sqlalchemy import delete, func, select, update
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert
from sqlmodel import Session

from storage.db import Database
from storage.errors import FtbotError, ValidationFailed
from storage.examples import SaveResult
from storage.jobs import model_lineage
from storage.models import Comparison, EvalPrompt, EvalRound, JudgeVerdict, RegisteredModel, Vote, utcnow
from storage.pairs import add_pair
from storage.records import content_hash, dpo_record
from storage.snapshots import TRAIN, VALIDATION, snapshot_records
from storage.votes import JUDGE_CHOICES, SIDES, VOTE_CHOICES, VoteChoice, decided_side, preferred_and_rejected

__all__ = [
    "RoundStatus", "QuestionSource", "VoteAction", "EvalRoundNotFound", "EvalItem", "VoteChange", "prompt_hash", "split_prompt",
    "add_eval_prompt", "list_eval_prompts", "eval_items", "create_round", "get_round", "latest_round",
    "round_comparisons", "set_answers", "set_comparison_message", "comparison_for_message", "move_round",
    "close_round", "due_rounds", "cast_vote", "get_vote", "retract_vote", "round_votes", "pairs_from_round",
    "save_verdict", "round_verdicts", "remove_eval_prompt", "trained_prompt_hashes",
    "model_trained_prompt_hashes",
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


class QuestionSource(StrEnum):
    """Where a held-out question comes from."""

    VALIDATION = "validation"  # the candidate's snapshot's validation split
    ADDED = "added"  # ``/ft eval add``


class VoteAction(StrEnum):
    """What a reaction did to a vote."""

    CREATED = "created"
    MOVED = "moved"
    UNCHANGED = "unchanged"
    STALE = "stale"  # an older event than the stored vote: ignored


class EvalRoundNotFound(FtbotError):
    """No evaluation round with that id, or none at all yet."""


@dataclass(frozen=True)
class EvalItem:
    """One held-out question: the conversation up to the customer's question, and the team's reference reply."""

    prompt: list[dict[str, Any]]
    reference: str | None
    source: QuestionSource

    @property
    def prompt_hash(self) -> str:
        return prompt_hash(self.prompt)


@dataclass(frozen=True)
class VoteChange:
    """What a reaction did, and the vote it left."""

    action: VoteAction
    vote: Vote | None


def prompt_hash(messages: Sequence[dict[str, Any]]) -> str:
    """The hash of prompt messages, the same definition as ``storage.snapshots.prompt_hashes``."""
    return content_hash(list(messages))


def split_prompt(messages: Sequence[dict[str, Any]]) -> tuple[list[dict[str, Any]], str | None]:
    """(messages before the last assistant turn, that turn's text): a training line as a question + reference."""
    last_assistant = max((i for i, m in enumerate(messages) if m.get("role") == "assistant"), default=None)
    if last_assistant is None:
        return list(messages), None
    reply = messages[last_assistant].get("content")
    return list(messages[:last_assistant]), reply if isinstance(reply, str) else None


def _upsert_insert(db: Database):
    return {"sqlite": sqlite_insert, "postgresql": pg_insert}.get(db.engine.dialect.name)


# --- eval prompts ------------------------------------------------------------------------------------------------


def add_eval_prompt(
    db: Database, messages: Sequence[dict[str, Any]], *, source_key: str | None = None, added_by: str | None = None
) -> SaveResult[EvalPrompt]:
    """Store a held-out question (``/ft eval add``); the same conversation added twice is stored once."""
    messages = [dict(m) for m in messages]
    if not messages or messages[-1].get("role") != "user" or not str(messages[-1].get("content") or "").strip():
        raise ValidationFailed("an evaluation question must end with a customer (user) message that has text")
    digest = prompt_hash(messages)
    return SaveResult(*db.get_or_insert(EvalPrompt.content_hash, digest, lambda _session: EvalPrompt(
        content_hash=digest, messages=messages, source_key=source_key, added_by=added_by,
    )))


def list_eval_prompts(db: Database) -> list[EvalPrompt]:
    with db.session() as session:
        return list(session.scalars(select(EvalPrompt).order_by(EvalPrompt.id)))


def remove_eval_prompt(db: Database, prompt_id: int) -> bool:
    with db.session() as session:
        return session.execute(delete(EvalPrompt).where(EvalPrompt.id == prompt_id)).rowcount == 1


def trained_prompt_hashes(db: Database, snapshot_id: int) -> set[str]:
    """Hashes of every prompt a model trained on this snapshot learned to answer.

    In a multi-turn SFT example every assistant turn is trained, so each conversation prefix that ends right before
    an assistant turn counts, not only the last one (``storage.snapshots.prompt_hashes`` covers the last one).
    """
    hashes: set[str] = set()
    for record in snapshot_records(db, snapshot_id, TRAIN):
        messages = record["input"]["messages"] if "input" in record else record["messages"]
        if "input" in record:
            hashes.add(prompt_hash(messages))
        for index, message in enumerate(messages):
            if message.get("role") == "assistant" and index > 0:
                hashes.add(prompt_hash(messages[:index]))
    return hashes


def model_trained_prompt_hashes(db: Database, model: RegisteredModel) -> set[str]:
    """Hashes of every prompt `model` learned to answer, its ancestors' training included.

    A DPO model continues its parent's weights (``storage.jobs.model_lineage``), so a question the parent SFT model
    trained on was trained on by the child too.
    """
    hashes: set[str] = set()
    for snapshot_id in dict.fromkeys(m.snapshot_id for m in model_lineage(db, model) if m.snapshot_id is not None):
        hashes |= trained_prompt_hashes(db, snapshot_id)
    return hashes


def eval_items(db: Database, candidate: RegisteredModel | None, *, limit: int | None = None, seed: int | None = None) -> list[EvalItem]:
    """The held-out questions for `candidate`: its snapshot's validation split, then questions added by hand.

    A question whose prompt hash is in the train split of the candidate or of any model it continued (a DPO
    model's SFT parent) is dropped: it would measure memorisation.
    Duplicates are dropped. With `limit`, a random sample (reproducible with `seed`) keeps the mix of sources.
    """
    trained_on: set[str] = set()
    items: list[EvalItem] = []
    if candidate is not None:
        trained_on = model_trained_prompt_hashes(db, candidate)
    if candidate is not None and candidate.snapshot_id is not None:
        for record in snapshot_records(db, candidate.snapshot_id, VALIDATION):
            if "input" in record:  # a DPO snapshot: the prompt and the preferred reply
                preferred = record.get("preferred_output") or [{}]
                prompt, reference = list(record["input"]["messages"]), preferred[-1].get("content")
            else:
                prompt, reference = split_prompt(record["messages"])
            if prompt and prompt[-1].get("role") == "user":
                items.append(EvalItem(prompt, reference, QuestionSource.VALIDATION))
    items += [EvalItem(list(p.messages), None, QuestionSource.ADDED) for p in list_eval_prompts(db)]

    seen: set[str] = set()
    usable = []
    for item in items:
        digest = item.prompt_hash
        if digest in trained_on or digest in seen:
            continue
        seen.add(digest)
        usable.append(item)
    if limit is not None and len(usable) > limit:
        usable = random.Random(seed).sample(usable, limit)
    return usable


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
        for prompt, side in zip(prompts, sides):
            prompt = [dict(m) for m in prompt]
            model_a, model_b = (candidate_model, baseline_model) if side == VoteChoice.A else (baseline_model, candidate_model)
            session.add(Comparison(
                round_id=round_.id, prompt_hash=prompt_hash(prompt), prompt=prompt, model_a=model_a,
                model_b=model_b, answer_a="", answer_b="", candidate_side=side, channel=channel,
            ))
        return round_

    return SaveResult(*db.get_or_insert(EvalRound.idempotency_key, idempotency_key, build))


def get_round(db: Database, round_id: int) -> EvalRound:
    with db.session() as session:
        round_ = session.get(EvalRound, round_id)
    if round_ is None:
        raise EvalRoundNotFound(f"evaluation round {round_id} does not exist; `ftbot results --json` shows the latest one.")
    return round_


def latest_round(db: Database, *, channel: str | None = None, statuses: Iterable[str] = RoundStatus.WITH_RESULTS) -> EvalRound | None:
    query = select(EvalRound).where(EvalRound.status.in_(list(statuses))).order_by(EvalRound.id.desc()).limit(1)
    if channel is not None:
        query = query.where(EvalRound.channel == channel)
    with db.session() as session:
        return session.scalar(query)


def list_rounds(db: Database, *, statuses: Iterable[str] | None = None) -> list[EvalRound]:
    query = select(EvalRound).order_by(EvalRound.id)
    if statuses is not None:
        query = query.where(EvalRound.status.in_(list(statuses)))
    with db.session() as session:
        return list(session.scalars(query))


def round_comparisons(db: Database, round_id: int) -> list[Comparison]:
    with db.session() as session:
        return list(session.scalars(select(Comparison).where(Comparison.round_id == round_id).order_by(Comparison.id)))


def set_answers(db: Database, round_id: int, model: str, answers: dict[int, str]) -> None:
    """Store `model`'s answer for each comparison id, on whichever side that model was placed."""
    with db.session() as session:
        for comparison in session.scalars(select(Comparison).where(Comparison.id.in_(list(answers)))):
            if comparison.round_id != round_id:
                raise ValueError(f"comparison {comparison.id} is not in round {round_id}")
            if comparison.model_a == model:
                comparison.answer_a = answers[comparison.id]
            elif comparison.model_b == model:
                comparison.answer_b = answers[comparison.id]
            else:
                raise ValueError(f"model {model!r} is not in comparison {comparison.id}")
            session.add(comparison)


def set_comparison_message(db: Database, comparison_id: int, *, channel: str, message_ts: str) -> None:
    with db.session() as session:
        session.execute(
            update(Comparison).where(Comparison.id == comparison_id).values(channel=channel, message_ts=message_ts)
        )


def comparison_for_message(db: Database, channel: str, message_ts: str) -> Comparison | None:
    """The comparison posted as this Slack message, if any (reactions on other messages are not votes)."""
    with db.session() as session:
        return session.scalar(
            select(Comparison).where(Comparison.message_ts == message_ts, Comparison.channel == channel)
        )


def move_round(db: Database, round_id: int, to_status: RoundStatus, *, from_status: str | Iterable[str] | None = None,
               closes_at: datetime | None = None) -> bool:
    """Compare-and-set the round's status; True only for the caller that moved it."""
    values: dict[str, Any] = {"status": to_status}
    if closes_at is not None:
        values["closes_at"] = closes_at
    if to_status == RoundStatus.CLOSED:
        values["closed_at"] = utcnow()
    query = update(EvalRound).where(EvalRound.id == round_id)
    if from_status is not None:
        allowed = [from_status] if isinstance(from_status, str) else list(from_status)
        query = query.where(EvalRound.status.in_(allowed))
    with db.session() as session:
        return session.execute(query.values(**values)).rowcount == 1


def close_round(db: Database, round_id: int) -> bool:
    """Stop voting on a round; True if this call closed it (False: it was closed already or never opened)."""
    return move_round(db, round_id, RoundStatus.CLOSED, from_status=RoundStatus.VOTABLE)


def due_rounds(db: Database, now: datetime | None = None) -> list[EvalRound]:
    """Open rounds whose voting time is over."""
    now = now or utcnow()
    with db.session() as session:
        rounds = list(session.scalars(select(EvalRound).where(
            EvalRound.status.in_(list(RoundStatus.VOTABLE)), EvalRound.closes_at.is_not(None)
        )))
    return [r for r in rounds if _aware(r.closes_at) <= now]


def _aware(value: datetime) -> datetime:
    # SQLite hands back naive datetimes even for timezone-aware columns; they were stored as UTC.
    return value if value.tzinfo is not None else value.replace(tzinfo=timezone.utc)


def is_voting_over(round_: EvalRound, now: datetime | None = None) -> bool:
    if round_.status not in RoundStatus.VOTABLE:
        return True
    return round_.closes_at is not None and _aware(round_.closes_at) <= (now or utcnow())


# --- votes -------------------------------------------------------------------------------------------------------


def cast_vote(
    db: Database, comparison_id: int, voter: str, choice: str, *, reaction: str, at: datetime | None = None
) -> VoteChange:
    """Record or move `voter`'s vote on a comparison; `at` is when the reaction happened (Slack's event time).

    One statement (INSERT … ON CONFLICT DO UPDATE … WHERE stored time <= this time): concurrent deliveries and
    retries converge to the newest reaction, and a retried event changes nothing.
    """
    if choice not in VOTE_CHOICES:
        raise ValueError(f"unknown vote choice {choice!r}")
    at = at or utcnow()
    with db.session() as session:
        before = session.scalar(select(Vote).where(Vote.comparison_id == comparison_id, Vote.voter == voter))
        before_state = None if before is None else (before.choice, before.reaction, _aware(before.updated_at))
    insert = _upsert_insert(db)
    if insert is None:  # another database: read-then-write, good enough without concurrent voters
        return _cast_vote_portable(db, comparison_id, voter, choice, reaction, at)
    statement = insert(Vote).values(
        comparison_id=comparison_id, voter=voter, choice=choice, reaction=reaction, created_at=at, updated_at=at
    )
    statement = statement.on_conflict_do_update(
        index_elements=["comparison_id", "voter"],
        set_={"choice": statement.excluded.choice, "reaction": statement.excluded.reaction,
              "updated_at": statement.excluded.updated_at},
        where=Vote.updated_at <= statement.excluded.updated_at,
    )
    with db.session() as session:
        session.execute(statement)
        after = session.scalar(select(Vote).where(Vote.comparison_id == comparison_id, Vote.voter == voter))
    if before_state is None:
        return VoteChange(VoteAction.CREATED, after)
    if after is not None and (after.choice, after.reaction) == before_state[:2]:
        return VoteChange(VoteAction.UNCHANGED if before_state[2] <= at else VoteAction.STALE, after)
    return VoteChange(VoteAction.MOVED, after)


def _cast_vote_portable(db: Database, comparison_id: int, voter: str, choice: str, reaction: str, at: datetime) -> VoteChange:
    with db.session() as session:
        vote = session.scalar(select(Vote).where(Vote.comparison_id == comparison_id, Vote.voter == voter))
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


def get_vote(db: Database, comparison_id: int, voter: str) -> Vote | None:
    with db.session() as session:
        return session.scalar(select(Vote).where(Vote.comparison_id == comparison_id, Vote.voter == voter))


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
    cast_by_this = (Vote.comparison_id == comparison_id, Vote.voter == voter, Vote.reaction == reaction,
                    Vote.updated_at <= at)
    with db.session() as session:
        if fallback is None:
            result = session.execute(delete(Vote).where(*cast_by_this))
        else:
            choice, kept_reaction = fallback
            result = session.execute(update(Vote).where(*cast_by_this).values(
                choice=choice, reaction=kept_reaction, updated_at=at))
        return result.rowcount == 1


def round_votes(db: Database, round_id: int) -> list[tuple[Comparison, Vote]]:
    with db.session() as session:
        rows = session.execute(
            select(Comparison, Vote).join(Vote, Vote.comparison_id == Comparison.id)
            .where(Comparison.round_id == round_id).order_by(Comparison.id, Vote.id)
        )
        return [(comparison, vote) for comparison, vote in rows]


def votes_by_comparison(db: Database, round_id: int) -> dict[int, list[Vote]]:
    grouped: dict[int, list[Vote]] = {c.id: [] for c in round_comparisons(db, round_id)}
    for comparison, vote in round_votes(db, round_id):
        grouped[comparison.id].append(vote)
    return grouped


def pairs_from_round(db: Database, round_id: int) -> list[SaveResult]:
    """Turn each decided comparison of a round into a DPO pair (prompt, chosen, rejected); idempotent."""
    results = []
    for comparison_id, votes in votes_by_comparison(db, round_id).items():
        side = decided_side(v.choice for v in votes)
        if side is None:
            continue
        with db.session() as session:
            comparison = session.get(Comparison, comparison_id)
        pair = preferred_and_rejected(side, comparison.answer_a, comparison.answer_b)
        if pair is None:
            continue
        chosen, rejected = pair
        record = dpo_record(comparison.prompt, {"role": "assistant", "content": chosen}, {"role": "assistant", "content": rejected})
        results.append(add_pair(db, record, source_kind="vote", comparison_id=comparison.id))
    return results


def all_votes(db: Database, *, statuses: Iterable[str] = RoundStatus.WITH_RESULTS) -> list[tuple[Comparison, Vote]]:
    """Votes of every round with results (for Bradley–Terry across rounds and models)."""
    with db.session() as session:
        rows = session.execute(
            select(Comparison, Vote).join(Vote, Vote.comparison_id == Comparison.id)
            .join(EvalRound, EvalRound.id == Comparison.round_id)
            .where(EvalRound.status.in_(list(statuses))).order_by(Comparison.id, Vote.id)
        )
        return [(comparison, vote) for comparison, vote in rows]


# --- LLM judge ---------------------------------------------------------------------------------------------------


def save_verdict(db: Database, comparison_id: int, judge_model: str, choice: str, detail: dict[str, Any] | None = None) -> JudgeVerdict:
    """Store (or replace) a judge's verdict on one comparison."""
    if choice not in JUDGE_CHOICES:
        raise ValueError(f"unknown judge choice {choice!r}")
    with db.session() as session:
        verdict = session.scalar(select(JudgeVerdict).where(
            JudgeVerdict.comparison_id == comparison_id, JudgeVerdict.judge_model == judge_model
        ))
        if verdict is None:
            verdict = JudgeVerdict(comparison_id=comparison_id, judge_model=judge_model, choice=choice, detail=detail)
        else:
            verdict.choice, verdict.detail = choice, detail
        session.add(verdict)
    return verdict


def round_verdicts(db: Database, round_id: int, judge_model: str | None = None) -> list[JudgeVerdict]:
    query = (
        select(JudgeVerdict).join(Comparison, Comparison.id == JudgeVerdict.comparison_id)
        .where(Comparison.round_id == round_id)
    )
    if judge_model is not None:
        query = query.where(JudgeVerdict.judge_model == judge_model)
    with db.session() as session:
        return list(session.scalars(query.order_by(JudgeVerdict.id)))


def count_votes(db: Database, round_id: int) -> int:
    with db.session() as session:
        return session.scalar(
            select(func.count()).select_from(Vote).join(Comparison, Comparison.id == Vote.comparison_id)
            .where(Comparison.round_id == round_id)
        ) or 0

"""The held-out question set of blind evaluations: questions added by hand, and which prompts a model trained on.

Data access only. A round asks :func:`eval_items`: the candidate's snapshot's validation split, then the questions
added with ``/ft eval add``, minus every prompt the candidate model was trained on (its hash is in the train split
of its snapshot or of the snapshot of any model it continued), so a round never measures memorisation.
"""

from __future__ import annotations

import random
from collections.abc import Sequence
from dataclasses import dataclass
from enum import StrEnum
from typing import Any

from sqlalchemy import delete, select
from sqlmodel import col

from storage.db import Database
from storage.errors import ValidationFailed
from storage.examples import SaveResult
from storage.jobs import model_lineage
from storage.models import EvalPrompt, RegisteredModel
from storage.records import content_hash
from storage.snapshots import TRAIN, VALIDATION, snapshot_records

__all__ = [
    "QuestionSource", "EvalItem", "prompt_hash", "split_prompt", "add_eval_prompt", "list_eval_prompts",
    "remove_eval_prompt", "trained_prompt_hashes", "model_trained_prompt_hashes", "eval_items", "heldout_items",
    "scored_conversations",
]


class QuestionSource(StrEnum):
    """Where a held-out question comes from."""

    VALIDATION = "validation"  # the candidate's snapshot's validation split
    ADDED = "added"  # ``/ft eval add``


@dataclass(frozen=True)
class EvalItem:
    """One held-out question: the conversation up to the customer's question, and the team's reference reply."""

    prompt: list[dict[str, Any]]
    reference: str | None
    source: QuestionSource

    @property
    def prompt_hash(self) -> str:
        return prompt_hash(self.prompt)


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


def add_eval_prompt(
    db: Database, messages: Sequence[dict[str, Any]], *, reference: str | None = None, source_key: str | None = None,
    added_by: str | None = None,
) -> SaveResult[EvalPrompt]:
    """Store a held-out question (``/ft eval add``) with the team's reply when there is one; the same conversation
    added twice is stored once."""
    messages = [dict(m) for m in messages]
    if not messages or messages[-1].get("role") != "user" or not str(messages[-1].get("content") or "").strip():
        raise ValidationFailed("an evaluation question must end with a customer (user) message that has text")
    digest = prompt_hash(messages)
    return SaveResult(*db.get_or_insert(col(EvalPrompt.content_hash), digest, lambda _session: EvalPrompt(
        content_hash=digest, messages=messages, reference=(reference or "").strip() or None, source_key=source_key,
        added_by=added_by,
    )))


def list_eval_prompts(db: Database) -> list[EvalPrompt]:
    with db.session() as session:
        return list(session.scalars(select(EvalPrompt).order_by(col(EvalPrompt.id))))


def remove_eval_prompt(db: Database, prompt_id: int) -> bool:
    with db.session() as session:
        return session.exec(delete(EvalPrompt).where(col(EvalPrompt.id) == prompt_id)).rowcount == 1


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
    trained_on = model_trained_prompt_hashes(db, candidate) if candidate is not None else set()
    snapshot_id = candidate.snapshot_id if candidate is not None else None
    usable = heldout_items(db, snapshot_id, trained_on)
    if limit is not None and len(usable) > limit:
        usable = random.Random(seed).sample(usable, limit)
    return usable


def heldout_items(db: Database, snapshot_id: int | None, trained_on: set[str]) -> list[EvalItem]:
    """The validation split of ``snapshot_id`` (when given), then the questions added by hand, without duplicates
    and without any question whose prompt hash is in ``trained_on``."""
    items: list[EvalItem] = []
    if snapshot_id is not None:
        for record in snapshot_records(db, snapshot_id, VALIDATION):
            if "input" in record:  # a DPO snapshot: the prompt and the preferred reply
                preferred = record.get("preferred_output") or [{}]
                prompt, reference = list(record["input"]["messages"]), preferred[-1].get("content")
            else:
                prompt, reference = split_prompt(record["messages"])
            if prompt and prompt[-1].get("role") == "user":
                items.append(EvalItem(prompt, reference, QuestionSource.VALIDATION))
    items += [EvalItem(list(p.messages), p.reference, QuestionSource.ADDED) for p in list_eval_prompts(db)]

    seen: set[str] = set()
    usable = []
    for item in items:
        digest = item.prompt_hash
        if digest in trained_on or digest in seen:
            continue
        seen.add(digest)
        usable.append(item)
    return usable


def scored_conversations(items: Sequence[EvalItem]) -> list[list[dict[str, Any]]]:
    """Each held-out question that has a reference reply, as the conversation ending with that reply (what the
    held-out loss is measured on)."""
    return [[*item.prompt, {"role": "assistant", "content": item.reference}] for item in items if item.reference]

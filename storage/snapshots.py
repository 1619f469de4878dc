"""Immutable, content-addressed snapshots of the approved examples (SFT) or preference pairs (DPO).

A job trains on a snapshot, never on the live tables: each member is a frozen copy of the OpenAI line, so
later edits cannot change what a finished job was trained on, and the validation split is fixed (evaluation
reads it to make sure it never asks about a training prompt).

The split is deterministic: records are ordered by ``sha256(seed:record hash)`` and the first
``max(1, round(n × validation_fraction))`` go to validation; examples the user pinned with ``split`` keep their pin.
The snapshot's own hash covers its kind and every (record hash, split) pair, so freezing the same approved set with
the same settings twice returns the existing snapshot instead of a duplicate.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from sqlalchemy import select
from sqlalchemy.exc import IntegrityError
from sqlmodel import col

from storage.db import Database
from storage.errors import FtbotError, ValidationFailed
from storage.models import Example, PreferencePair, Snapshot, SnapshotMember, stored_id
from storage.records import canonical_json, content_hash, sft_record
from storage.vocabulary import ExampleStatus, Split, TrainingMethod

# Short names for the two splits, as trainers and evaluation import them.
TRAIN = Split.TRAIN
VALIDATION = Split.VALIDATION


class SnapshotNotFound(FtbotError):
    """No snapshot with that id."""


@dataclass(frozen=True)
class SnapshotResult:
    snapshot: Snapshot
    created: bool


@dataclass(frozen=True)
class _Candidate:
    example_id: int | None
    pair_id: int | None
    record: dict[str, Any]
    digest: str
    pin: Split | None


def _pin(split: str | None) -> Split | None:
    """An example's split pin; anything but a split name means no pin."""
    return Split(split) if split in list(Split) else None


def _candidates(db: Database, kind: TrainingMethod) -> list[_Candidate]:
    with db.session() as session:
        if kind == TrainingMethod.SFT:
            rows = session.execute(
                select(
                    col(Example.id), col(Example.messages), col(Example.tools), col(Example.parallel_tool_calls),
                    col(Example.split),
                )
                .where(col(Example.status) == ExampleStatus.APPROVED)
                .order_by(col(Example.id))
            )
            out = []
            for example_id, messages, tools, parallel, pin in rows:
                record = sft_record(messages, tools, parallel)
                out.append(_Candidate(example_id, None, record, content_hash(record), _pin(pin)))
            return out
        rows = session.execute(
            select(col(PreferencePair.id), col(PreferencePair.record)).order_by(col(PreferencePair.id))
        )
        return [_Candidate(None, pair_id, record, content_hash(record), None) for pair_id, record in rows]


def _hash_order(candidate: _Candidate, seed: int) -> str:
    return hashlib.sha256(f"{seed}:{candidate.digest}".encode()).hexdigest()


def split_records(
    candidates: list[_Candidate], *, validation_fraction: float, seed: int
) -> tuple[list[_Candidate], list[_Candidate]]:
    """Deterministic (train, validation) lists; raises ValidationFailed when no valid split exists."""
    if not 0 < validation_fraction < 1:
        raise ValidationFailed(f"validation fraction must be between 0 and 1 (exclusive), got {validation_fraction}")
    # Identical records (e.g. an example approved twice under different source keys) would leak across the split.
    unique: dict[str, _Candidate] = {}
    for candidate in candidates:
        unique.setdefault(candidate.digest, candidate)
    ordered = sorted(unique.values(), key=lambda c: _hash_order(c, seed))
    if len(ordered) < 2:
        raise ValidationFailed(
            f"a snapshot needs at least 2 distinct records (one for training, one for validation); found {len(ordered)}. "
            "Approve more examples first (/ft review or `ftbot examples approve`)."
        )
    train = [c for c in ordered if c.pin == TRAIN]
    validation = [c for c in ordered if c.pin == VALIDATION]
    free = [c for c in ordered if c.pin is None]
    wanted = max(1, round(len(ordered) * validation_fraction))
    take = min(len(free), max(0, wanted - len(validation)))
    validation += free[:take]
    train += free[take:]
    if not validation:
        raise ValidationFailed("no example is left for validation: every example is pinned to 'train'. Unpin one.")
    if not train:
        raise ValidationFailed("no example is left for training: every example is pinned to 'validation'. Unpin one.")
    return train, validation


def create_snapshot(
    db: Database,
    *,
    kind: str = TrainingMethod.SFT,
    validation_fraction: float = 0.1,
    seed: int = 0,
    created_by: str | None = None,
) -> SnapshotResult:
    """Freeze the approved examples (``kind="sft"``) or the preference pairs (``"dpo"``) into a snapshot."""
    try:
        method = TrainingMethod(kind)
    except ValueError:
        raise ValidationFailed(f"snapshot kind must be one of {', '.join(TrainingMethod)}, got {kind!r}") from None
    candidates = _candidates(db, method)
    if not candidates:
        what = "approved examples" if method == TrainingMethod.SFT else "preference pairs"
        raise ValidationFailed(f"there are no {what} to train on yet.")
    train, validation = split_records(candidates, validation_fraction=validation_fraction, seed=seed)
    members = [(TRAIN, c) for c in train] + [(VALIDATION, c) for c in validation]
    digest = content_hash({"kind": method, "members": sorted([c.digest, split] for split, c in members)})
    for _attempt in range(2):
        existing = find_snapshot(db, digest)
        if existing is not None:
            return SnapshotResult(existing, False)
        try:
            with db.session() as session:
                snapshot = Snapshot(
                    content_hash=digest, kind=method, train_count=len(train), validation_count=len(validation),
                    validation_fraction=validation_fraction, seed=seed, created_by=created_by,
                )
                session.add(snapshot)
                session.flush()
                session.add_all(
                    SnapshotMember(
                        snapshot_id=stored_id(snapshot), example_id=c.example_id, pair_id=c.pair_id, split=split,
                        position=position, content_hash=c.digest, record=c.record,
                    )
                    for position, (split, c) in enumerate(members)
                )
            return SnapshotResult(snapshot, True)
        except IntegrityError:
            continue  # another process froze the same set at the same moment: return theirs
    existing = find_snapshot(db, digest)
    assert existing is not None
    return SnapshotResult(existing, False)


def find_snapshot(db: Database, digest: str) -> Snapshot | None:
    with db.session() as session:
        return session.scalar(select(Snapshot).where(col(Snapshot.content_hash) == digest))


def latest_snapshot(db: Database) -> Snapshot | None:
    """The most recently created snapshot, or None when there is none yet."""
    with db.session() as session:
        return session.scalar(select(Snapshot).order_by(col(Snapshot.id).desc()).limit(1))


def get_snapshot(db: Database, snapshot_id: int) -> Snapshot:
    with db.session() as session:
        snapshot = session.get(Snapshot, snapshot_id)
    if snapshot is None:
        raise SnapshotNotFound(f"snapshot {snapshot_id} does not exist; `ftbot jobs` lists the snapshots jobs used.")
    return snapshot


def snapshot_members(db: Database, snapshot_id: int, split: str | None = None) -> list[SnapshotMember]:
    query = (
        select(SnapshotMember).where(col(SnapshotMember.snapshot_id) == snapshot_id).order_by(col(SnapshotMember.position))
    )
    if split is not None:
        query = query.where(col(SnapshotMember.split) == split)
    with db.session() as session:
        return list(session.scalars(query))


def snapshot_records(db: Database, snapshot_id: int, split: str | None = None) -> list[dict[str, Any]]:
    """The frozen OpenAI lines of a snapshot (one split or all), in position order."""
    return [member.record for member in snapshot_members(db, snapshot_id, split)]


def iter_snapshot_items(db: Database, snapshot_id: int, split: str | None = None) -> Iterator[tuple[int, dict[str, Any]]]:
    """(1-based position, record): the ``items`` form ``trainers.data.report.build_report`` reads."""
    yield from enumerate(snapshot_records(db, snapshot_id, split), 1)


def write_jsonl(db: Database, snapshot_id: int, split: str, path: str | Path) -> Path:
    """Write one split as JSONL (one canonical line per record) and return the path."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", encoding="utf-8") as handle:
        for record in snapshot_records(db, snapshot_id, split):
            handle.write(canonical_json(record) + "\n")
    return path


def jsonl_bytes(db: Database, snapshot_id: int, split: str) -> bytes:
    return "".join(canonical_json(r) + "\n" for r in snapshot_records(db, snapshot_id, split)).encode("utf-8")


def prompt_hashes(db: Database, snapshot_id: int, split: str = TRAIN) -> set[str]:
    """Hashes of the prompt messages (everything before the last assistant turn) of one split.

    Evaluation uses the train split's set to refuse questions the candidate model was trained on.
    """
    hashes = set()
    for record in snapshot_records(db, snapshot_id, split):
        messages = record["input"]["messages"] if "input" in record else record["messages"]
        last_assistant = max((i for i, m in enumerate(messages) if m.get("role") == "assistant"), default=len(messages))
        hashes.add(content_hash(messages[:last_assistant]))
    return hashes


def describe(snapshot: Snapshot) -> dict[str, Any]:
    return {
        "id": snapshot.id, "content_hash": snapshot.content_hash, "kind": snapshot.kind,
        "train_count": snapshot.train_count, "validation_count": snapshot.validation_count,
        "validation_fraction": snapshot.validation_fraction, "seed": snapshot.seed,
    }

"""DPO preference pairs: from decided blind comparisons or imported preference JSONL.

A pair is stored as its OpenAI preference line (``input``, ``preferred_output``, ``non_preferred_output``);
its content hash is unique, so the same pair is never stored twice.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from typing import Any

from sqlalchemy import func, select
from sqlmodel import Session, col

from storage.db import Database
from storage.errors import ValidationFailed
from storage.examples import BATCH_SIZE, ImportResult, SaveResult, insert_new_rows
from storage.models import PreferencePair, utcnow
from storage.records import content_hash
from storage.vocabulary import PairSource

DPO_KEYS = ("input", "preferred_output", "non_preferred_output")
# Older versions of OpenAI's spec named the outputs *_completion; stored pairs always use the current names.
_LEGACY_NAMES = {"preferred_output": "preferred_completion", "non_preferred_output": "non_preferred_completion"}


def normalize_pair(record: dict[str, Any]) -> dict[str, Any]:
    """The OpenAI preference line with only its three keys (extra keys do not change identity)."""
    if isinstance(record, dict):
        normalized = {
            key: record[key] if key in record else record.get(_LEGACY_NAMES.get(key, key)) for key in DPO_KEYS
        }
        if all(value is not None for value in normalized.values()):
            return normalized
    raise ValidationFailed("a preference pair needs 'input', 'preferred_output' and 'non_preferred_output'")


def pair_hash(record: dict[str, Any]) -> str:
    return content_hash(normalize_pair(record))


def add_pair(
    db: Database,
    record: dict[str, Any],
    *,
    source_kind: str,
    comparison_id: int | None = None,
    source_file: str | None = None,
    source_line: int | None = None,
) -> SaveResult[PreferencePair]:
    """Store one pair; an identical pair already stored is returned with ``created=False``."""
    normalized = normalize_pair(record)
    digest = content_hash(normalized)
    return SaveResult(*db.get_or_insert(col(PreferencePair.content_hash), digest, lambda _session: PreferencePair(
        content_hash=digest, record=normalized, source_kind=source_kind, comparison_id=comparison_id,
        source_file=source_file, source_line=source_line,
    )))


def import_pairs(
    db: Database,
    items: Iterable[tuple[int, dict[str, Any]]],
    *,
    source_file: str,
    session: Session | None = None,
) -> ImportResult:
    """Store preference lines with file/line provenance in one transaction; known pairs count as unchanged."""
    if session is None:
        with db.session() as own_session:
            return import_pairs(db, items, source_file=source_file, session=own_session)
    now = utcnow()

    def rows() -> Iterator[tuple[str, dict[str, Any]]]:
        for line, record in items:
            normalized = normalize_pair(record)
            digest = content_hash(normalized)
            yield digest, {
                "content_hash": digest,
                "record": normalized,
                "source_kind": PairSource.IMPORT,
                "source_file": source_file,
                "source_line": line,
                "created_at": now,
            }

    return insert_new_rows(session, PreferencePair, rows())


def list_pairs(db: Database, *, limit: int | None = None, offset: int = 0) -> list[PreferencePair]:
    query = select(PreferencePair).order_by(col(PreferencePair.id)).offset(offset)
    if limit is not None:
        query = query.limit(limit)
    with db.session() as session:
        return list(session.scalars(query))


def count_pairs(db: Database) -> int:
    with db.session() as session:
        return session.scalar(select(func.count()).select_from(PreferencePair)) or 0


def pair_records(db: Database) -> Iterator[tuple[int, dict[str, Any]]]:
    """(pair id, OpenAI preference line) in id order, streamed."""
    query = select(col(PreferencePair.id), col(PreferencePair.record)).order_by(col(PreferencePair.id))
    with db.session() as session:
        rows = session.execute(query.execution_options(yield_per=BATCH_SIZE))
        yield from ((pair_id, record) for pair_id, record in rows)

"""Training examples: capture from Slack, bulk import from JSONL, review, and stream out for export/snapshots.

Every example is an OpenAI SFT line (messages, optional tools / parallel_tool_calls). Its content hash
(``storage.records.content_hash`` of that line) is unique, so exact duplicates cannot be stored.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any, Generic, TypeVar

from sqlalchemy import func, insert, or_, select, update
from sqlalchemy.exc import IntegrityError
from sqlmodel import Session, col

from storage.db import Database
from storage.errors import DuplicateExample, ExampleNotFound, ValidationFailed
from storage.models import Example, PreferencePair, utcnow
from storage.records import content_hash, sft_record
from storage.vocabulary import ExampleSource, ExampleStatus

T = TypeVar("T")

# Rows per bulk INSERT / per IN (...) lookup: large enough to amortise round trips, small enough
# to stay under SQLite's 32766 bound-parameter limit.
BATCH_SIZE = 1000
_CAPTURE_ATTEMPTS = 3


@dataclass(frozen=True)
class SaveResult(Generic[T]):
    """The stored row and whether this call created it (False: it existed and was updated or left as is)."""

    example: T
    created: bool

    @property
    def pair(self) -> T:
        """The same row, named for ``storage.pairs`` callers."""
        return self.example


@dataclass(frozen=True)
class ImportResult:
    added: int
    unchanged: int  # already stored (same content hash) or repeated within the input


def example_record(example: Example) -> dict[str, Any]:
    """The OpenAI SFT line of a stored example."""
    return sft_record(example.messages, example.tools, example.parallel_tool_calls)


def record_hash(record: dict[str, Any]) -> str:
    """Content hash of an SFT line, over messages/tools/parallel_tool_calls only (other keys do not count)."""
    return content_hash(_normalized(record))


def _normalized(record: dict[str, Any]) -> dict[str, Any]:
    if not isinstance(record, dict) or not isinstance(record.get("messages"), list):
        raise ValidationFailed("an example needs a 'messages' list (an OpenAI chat fine-tuning line)")
    return sft_record(record["messages"], record.get("tools"), record.get("parallel_tool_calls"))


def _check_status(status: str) -> ExampleStatus:
    try:
        return ExampleStatus(status)
    except ValueError:
        raise ValidationFailed(f"unknown status {status!r}: use one of {', '.join(ExampleStatus)}") from None


def _id_with_hash(session: Session, digest: str) -> int | None:
    return session.scalar(select(col(Example.id)).where(col(Example.content_hash) == digest))


def _apply_record(example: Example, record: dict[str, Any], digest: str) -> None:
    example.messages = record["messages"]
    example.tools = record.get("tools")
    example.parallel_tool_calls = record.get("parallel_tool_calls")
    example.content_hash = digest


def _apply_status(example: Example, status: str, by: str | None) -> None:
    # approved_by/approved_at describe the current approval: set on approval, cleared when it is withdrawn.
    if status == ExampleStatus.APPROVED:
        if example.status != ExampleStatus.APPROVED or example.approved_by is None:
            example.approved_by = by
            example.approved_at = utcnow()
    else:
        example.approved_by = None
        example.approved_at = None
    example.status = status


def save_capture(
    db: Database,
    *,
    record: dict[str, Any],
    source_key: str,
    channel: str | None,
    ts: str | None,
    thread_ts: str | None,
    permalink: str | None,
    captured_by: str | None,
    status: str = ExampleStatus.PENDING,
    approved_by: str | None = None,
    tags: Sequence[str] = (),
    source_kind: str = ExampleSource.SLACK,
    update_existing: bool = True,
) -> SaveResult[Example]:
    """Store a reply captured from Slack; capturing the same message (``source_key``) again updates it.

    ``source_kind`` is ``ExampleSource.SLACK`` (or ``CONSOLE`` for the local console's fake workspace).
    With ``update_existing=False`` an example already stored for ``source_key`` is left exactly as it is and
    returned with ``created=False`` (a form filled from the raw thread must not overwrite a capture someone
    redacted or approved meanwhile).

    Raises ``DuplicateExample`` when the content equals another example (e.g. one imported from a file).
    Safe against concurrent captures of one message (two Slack retries, two reviewers): the loser of
    the insert race retries as an update.
    """
    normalized = _normalized(record)
    digest = content_hash(normalized)
    _check_status(status)
    for attempt in range(_CAPTURE_ATTEMPTS):
        try:
            with db.session() as session:
                # One statement, so both facts come from one snapshot (separate SELECTs can straddle
                # another writer's commit and report this very message as a duplicate of itself).
                matches = session.scalars(
                    select(Example).where(or_(col(Example.source_key) == source_key, col(Example.content_hash) == digest))
                ).all()
                example = next((row for row in matches if row.source_key == source_key), None)
                if example is not None and not update_existing:
                    return SaveResult(example, False)
                other = next((row.id for row in matches if row.content_hash == digest and row is not example), None)
                if other is not None:
                    raise DuplicateExample(other, action="capturing this message")
                created = example is None
                if example is None:
                    example = Example(
                        content_hash=digest,
                        messages=normalized["messages"],
                        source_kind=source_kind,
                        source_key=source_key,
                        captured_by=captured_by,
                    )
                    session.add(example)
                _apply_record(example, normalized, digest)
                example.source_channel = channel
                example.source_ts = ts
                example.source_thread_ts = thread_ts
                example.source_permalink = permalink
                example.tags = list(dict.fromkeys(tags))
                _apply_status(example, status, approved_by or captured_by)
                example.updated_at = utcnow()
                session.flush()
                return SaveResult(example, created)
        except IntegrityError:
            # Another writer inserted this source_key (or this content) between our read and our insert.
            if attempt == _CAPTURE_ATTEMPTS - 1:
                raise
    raise AssertionError("unreachable")


def import_records(
    db: Database,
    items: Iterable[tuple[int, dict[str, Any]]],
    *,
    source_file: str,
    approved_by: str | None,
    session: Session | None = None,
) -> ImportResult:
    """Store SFT lines as approved examples with file/line provenance, in one transaction.

    ``items`` are (line number, record) pairs. Records whose content is already stored, or repeated
    earlier in ``items``, count as unchanged. Any error rolls the whole import back. Pass ``session``
    to make this part of a larger transaction (the CLI imports SFT and DPO lines together).
    """
    if session is None:
        with db.session() as own_session:
            return import_records(db, items, source_file=source_file, approved_by=approved_by, session=own_session)

    now = utcnow()

    def rows() -> Iterator[tuple[str, dict[str, Any]]]:
        for line, record in items:
            normalized = _normalized(record)
            digest = content_hash(normalized)
            yield digest, {
                "content_hash": digest,
                "messages": normalized["messages"],
                "tools": normalized.get("tools"),
                "parallel_tool_calls": normalized.get("parallel_tool_calls"),
                "status": ExampleStatus.APPROVED,
                "source_kind": ExampleSource.IMPORT,
                "source_file": source_file,
                "source_line": line,
                "approved_by": approved_by,
                "approved_at": now,
                "tags": [],
                "pii_allowed": False,
                "created_at": now,
                "updated_at": now,
            }

    return insert_new_rows(session, Example, rows())


def insert_new_rows(
    session: Session, table: type[Example | PreferencePair], rows: Iterable[tuple[str, dict[str, Any]]]
) -> ImportResult:
    """Bulk-insert ``(content hash, row)`` pairs into ``table``, skipping hashes already stored or repeated.

    Works in batches of ``BATCH_SIZE``: one ``IN (...)`` lookup and one executemany (Core insert, no ORM
    object per row) each. Earlier batches are already inserted in this transaction, so the lookup also
    catches repeats across batches without keeping every hash in memory. ``table`` needs a ``content_hash``
    column; ``storage.pairs`` uses this for preference pairs.
    """
    added = unchanged = 0
    for batch in _batched(rows, BATCH_SIZE):
        fresh: dict[str, dict[str, Any]] = {}
        for digest, row in batch:
            if digest in fresh:
                unchanged += 1
            else:
                fresh[digest] = row
        hashes = col(table.content_hash)
        stored = set(session.scalars(select(hashes).where(hashes.in_(list(fresh)))))
        new_rows = [row for digest, row in fresh.items() if digest not in stored]
        unchanged += len(fresh) - len(new_rows)
        if new_rows:
            session.execute(insert(table), new_rows)
            added += len(new_rows)
    return ImportResult(added=added, unchanged=unchanged)


def _batched(items: Iterable[T], size: int) -> Iterator[list[T]]:
    batch: list[T] = []
    for item in items:
        batch.append(item)
        if len(batch) >= size:
            yield batch
            batch = []
    if batch:
        yield batch


def get_example(db: Database, example_id: int) -> Example:
    with db.session() as session:
        example = session.get(Example, example_id)
        if example is None:
            raise ExampleNotFound(example_id)
        return example


@dataclass(frozen=True)
class StatusChange:
    """The example as stored after a status change, and whether this call made the change."""

    example: Example
    changed: bool  # False: it already had that status, or not the expected one (someone else changed it first)


def change_status(db: Database, example_id: int, status: str, *, by: str | None,
                  expected: str | Iterable[str] | None = None) -> StatusChange:
    """Approve, reject or reopen an example, only if its status is still ``expected`` (any other status when None).

    One conditional UPDATE: of two reviewers clicking at once, or a button on a message that went stale, exactly
    one changes the example; the others get ``changed=False`` and the example as the winner left it.
    Approval records who and when; any other status clears them.
    """
    target = _check_status(status)
    now = utcnow()
    approved = target == ExampleStatus.APPROVED
    query = update(Example).where(col(Example.id) == example_id, col(Example.status) != target)
    if expected is not None:
        allowed = [expected] if isinstance(expected, str) else list(expected)
        query = query.where(col(Example.status).in_([_check_status(s) for s in allowed]))
    values = {"status": target, "updated_at": now, "approved_by": by if approved else None,
              "approved_at": now if approved else None}
    with db.session() as session:
        changed = session.exec(query.values(**values)).rowcount == 1
        example = session.get(Example, example_id)
        if example is None:
            raise ExampleNotFound(example_id)
        return StatusChange(example, changed)


def set_status(db: Database, example_id: int, status: str, *, by: str | None) -> Example:
    """Approve, reject or reopen an example whatever its status; approval records who and when."""
    return change_status(db, example_id, status, by=by).example


def update_example(
    db: Database,
    example_id: int,
    *,
    record: dict[str, Any] | None = None,
    tags: Sequence[str] | None = None,
    pii_allowed: bool | None = None,
) -> Example:
    """Edit an example's content, tags or PII allowance; refuses an edit that duplicates another example."""
    with db.session() as session:
        example = session.get(Example, example_id, with_for_update=True)
        if example is None:
            raise ExampleNotFound(example_id)
        if record is not None:
            normalized = _normalized(record)
            digest = content_hash(normalized)
            other = _id_with_hash(session, digest)
            if other is not None and other != example.id:
                raise DuplicateExample(other, action=f"this edit of example #{example_id}")
            _apply_record(example, normalized, digest)
        if tags is not None:
            example.tags = list(dict.fromkeys(tags))
        if pii_allowed is not None:
            example.pii_allowed = pii_allowed
        example.updated_at = utcnow()
        try:
            session.flush()
        except IntegrityError as error:
            # A concurrent writer stored the same content after our check.
            session.rollback()
            with db.session() as fresh:
                other = _id_with_hash(fresh, example.content_hash)
            if other is None:
                raise
            raise DuplicateExample(other, action=f"this edit of example #{example_id}") from error
        return example


def list_examples(
    db: Database, *, status: str | None = None, limit: int | None = None, offset: int = 0
) -> list[Example]:
    """Examples in id order, optionally of one status."""
    query = select(Example).order_by(col(Example.id)).offset(offset)
    if status is not None:
        query = query.where(col(Example.status) == _check_status(status))
    if limit is not None:
        query = query.limit(limit)
    with db.session() as session:
        return list(session.scalars(query))


def recent_examples(db: Database, *, limit: int = 10) -> list[Example]:
    """The newest examples first (any status)."""
    with db.session() as session:
        return list(session.scalars(select(Example).order_by(col(Example.id).desc()).limit(limit)))


def example_by_source_key(db: Database, source_key: str) -> Example | None:
    """The example captured from one Slack message (``slack:<channel>:<ts>``), or None."""
    with db.session() as session:
        return session.scalar(select(Example).where(col(Example.source_key) == source_key))


@dataclass(frozen=True)
class DatasetStats:
    """Figures over every stored example (any status) for ``/ft stats``."""

    total: int = 0
    turns: int = 0
    tags: Counter[str] = field(default_factory=Counter)
    # Who captured each example: a Slack user id, or the source kind ("import", "console") when nobody did.
    capturers: Counter[str] = field(default_factory=Counter)

    @property
    def average_turns(self) -> float | None:
        return self.turns / self.total if self.total else None


def dataset_stats(db: Database) -> DatasetStats:
    """Tag and capturer counts and the total number of turns, streamed (constant memory)."""
    tags: Counter[str] = Counter()
    capturers: Counter[str] = Counter()
    total = turns = 0
    query = select(col(Example.tags), col(Example.captured_by), col(Example.messages), col(Example.source_kind))
    with db.session() as session:
        for example_tags, captured_by, messages, source_kind in session.execute(
                query.execution_options(yield_per=BATCH_SIZE)):
            total += 1
            tags.update(example_tags or [])
            capturers[captured_by or source_kind] += 1
            turns += len(messages or [])
    return DatasetStats(total=total, turns=turns, tags=tags, capturers=capturers)


def pii_allowed_ids(db: Database, example_ids: Iterable[int | None]) -> set[int]:
    """The ids among ``example_ids`` whose personal data a reviewer chose to keep (``Example.pii_allowed``).

    None (a snapshot member that is a preference pair, not an example) is skipped."""
    ids = [example_id for example_id in example_ids if example_id is not None]
    if not ids:
        return set()
    with db.session() as session:
        query = select(col(Example.id)).where(col(Example.id).in_(ids), col(Example.pii_allowed).is_(True))
        return {example_id for example_id in session.scalars(query) if example_id is not None}


def count_by_status(db: Database) -> dict[str, int]:
    """{"pending": n, "approved": n, "rejected": n} (zeros included)."""
    counts: dict[str, int] = dict.fromkeys(ExampleStatus, 0)
    with db.session() as session:
        for status, count in session.execute(select(col(Example.status), func.count()).group_by(col(Example.status))):
            counts[status] = count
    return counts


def iter_records(db: Database, *, status: str | None = ExampleStatus.APPROVED) -> Iterator[tuple[int, dict[str, Any]]]:
    """(example id, SFT line) in id order, streamed from the database (constant memory)."""
    query = (
        select(col(Example.id), col(Example.messages), col(Example.tools), col(Example.parallel_tool_calls))
        .order_by(col(Example.id))
    )
    if status is not None:
        query = query.where(col(Example.status) == _check_status(status))
    with db.session() as session:
        for example_id, messages, tools, parallel in session.execute(query.execution_options(yield_per=BATCH_SIZE)):
            yield example_id, sft_record(messages, tools, parallel)


def approved_records(db: Database) -> Iterator[tuple[int, dict[str, Any]]]:
    """(example id, OpenAI SFT line) of every approved example, streamed in id order."""
    return iter_records(db, status=ExampleStatus.APPROVED)

"""Importing a JSONL file (OpenAI SFT and/or DPO lines) into the database, validated and atomic.

One pass over the file in constant memory: each line is checked with ``trainers.data.validate.check_record``;
valid SFT lines become approved examples, valid DPO lines preference pairs, all in ONE transaction.
If any line has an error, nothing is stored (unless ``skip_invalid``), and every error is reported with
its line number. Lines already stored (same content hash) are counted as unchanged, so importing the same
file twice adds nothing.
"""

from __future__ import annotations

import os
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from sqlalchemy.exc import IntegrityError
from sqlmodel import Session

from storage.config import DEFAULT_MAX_LINE_BYTES
from storage.db import Database
from storage.errors import DataFileError, FtbotError
from storage.examples import BATCH_SIZE, ImportResult, import_records
from storage.pairs import import_pairs
from trainers.data.issues import Issue
from trainers.data.jsonl import read_jsonl
from trainers.data.validate import CheckedLine, check_record

# Errors kept in memory for the report; the count is always exact.
MAX_REPORTED_ERRORS = 1000


@dataclass
class FileImportResult:
    path: str
    lines: int = 0  # non-blank lines read
    valid_lines: int = 0
    invalid_lines: int = 0
    examples: ImportResult = ImportResult(0, 0)
    pairs: ImportResult = ImportResult(0, 0)
    errors: list[Issue] = field(default_factory=list)  # the first MAX_REPORTED_ERRORS
    warning_counts: Counter[str] = field(default_factory=Counter)
    stored: bool = False  # False: the transaction was rolled back because of invalid lines

    @property
    def added(self) -> int:
        return self.examples.added + self.pairs.added

    @property
    def unchanged(self) -> int:
        return self.examples.unchanged + self.pairs.unchanged

    def to_json(self) -> dict[str, Any]:
        return {
            "file": self.path,
            "lines": self.lines,
            "valid_lines": self.valid_lines,
            "invalid_lines": self.invalid_lines,
            "stored": self.stored,
            "examples": {"added": self.examples.added, "unchanged": self.examples.unchanged},
            "pairs": {"added": self.pairs.added, "unchanged": self.pairs.unchanged},
            "errors": [issue.to_json() for issue in self.errors],
            "errors_truncated": self.invalid_lines > 0 and len(self.errors) >= MAX_REPORTED_ERRORS,
            "warnings": dict(sorted(self.warning_counts.items())),
        }


def import_file(
    db: Database,
    path: str | os.PathLike[str],
    *,
    approved_by: str | None,
    skip_invalid: bool = False,
    kind: str = "auto",
    on_line: Callable[[int], None] | None = None,
    max_line_bytes: int = DEFAULT_MAX_LINE_BYTES,
) -> FileImportResult:
    """Validate and store ``path``; see the module docstring. ``on_line(line_number)`` drives a progress bar.

    Raises ``DataFileError`` (nothing stored) when the file cannot be read: missing, a directory,
    not UTF-8, a line too long, or no lines at all.
    """
    file_path = Path(path)
    result = FileImportResult(path=str(file_path))
    try:
        with db.session() as session:
            writer = _BatchWriter(db, session, source_file=str(file_path.resolve()), approved_by=approved_by)
            for line, value, read_error in read_jsonl(file_path, max_line_bytes=max_line_bytes):
                result.lines += 1
                checked = _check_line(line, value, read_error, kind)
                if checked.record is None:  # the line has errors
                    result.invalid_lines += 1
                    result.errors.extend(checked.errors[: max(MAX_REPORTED_ERRORS - len(result.errors), 0)])
                    if not skip_invalid:
                        writer.stop()  # nothing will be stored; keep reading to report every error
                else:
                    result.valid_lines += 1
                    result.warning_counts.update(warning.code for warning in checked.warnings)
                    writer.add(checked.kind, line, checked.record)
                if on_line is not None:
                    on_line(line)
            if result.lines == 0:
                raise DataFileError(f"{file_path}: is empty (no JSON lines); nothing to import")
            if writer.active:
                writer.flush()
                result.stored = True
                result.examples, result.pairs = writer.examples, writer.pairs
            else:
                session.rollback()
    except IntegrityError as error:
        # Only a concurrent writer storing the same content between our lookup and our insert gets here.
        raise FtbotError(
            f"{file_path}: another import or capture stored some of the same examples at the same moment, "
            "so nothing was imported; run the import again (it adds only what is missing)"
        ) from error
    return result


def _check_line(line: int, value: object, read_error: Issue | None, kind: str) -> CheckedLine:
    """``check_record``'s verdict on a parsed line, or a line that could not be read as a failed check."""
    if read_error is not None:
        return CheckedLine(line, kind, None, [read_error])
    return check_record(value, line, kind)


class _BatchWriter:
    """Buffers valid lines and writes them in batches inside the caller's transaction."""

    def __init__(self, db: Database, session: Session, *, source_file: str, approved_by: str | None):
        self.db, self.session = db, session
        self.source_file, self.approved_by = source_file, approved_by
        self.active = True
        self.examples = ImportResult(0, 0)
        self.pairs = ImportResult(0, 0)
        self._sft: list[tuple[int, dict[str, Any]]] = []
        self._dpo: list[tuple[int, dict[str, Any]]] = []

    def add(self, kind: str, line: int, record: dict[str, Any]) -> None:
        if not self.active:
            return
        batch = self._dpo if kind == "dpo" else self._sft
        batch.append((line, record))
        if len(batch) >= BATCH_SIZE:
            self.flush()

    def stop(self) -> None:
        self.active = False
        self._sft.clear()
        self._dpo.clear()

    def flush(self) -> None:
        if self._sft:
            done = import_records(
                self.db, self._sft, source_file=self.source_file, approved_by=self.approved_by, session=self.session
            )
            self.examples = ImportResult(self.examples.added + done.added, self.examples.unchanged + done.unchanged)
            self._sft.clear()
        if self._dpo:
            done = import_pairs(self.db, self._dpo, source_file=self.source_file, session=self.session)
            self.pairs = ImportResult(self.pairs.added + done.added, self.pairs.unchanged + done.unchanged)
            self._dpo.clear()


def count_lines(path: str | os.PathLike[str]) -> int:
    """Newline count of a file (fast, for a progress bar's total); 0 if it cannot be read."""
    try:
        with open(path, "rb") as handle:
            total = 0
            while chunk := handle.read(1 << 22):
                total += chunk.count(b"\n")
            return total
    except OSError:
        return 0

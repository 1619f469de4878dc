"""Importing a JSONL file (OpenAI SFT and/or DPO lines) into the database, validated and atomic.

One pass over the file in constant memory: each line is checked with ``trainers.validate.check_record``;
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

from storage.db import Database
from storage.examples import BATCH_SIZE, ImportResult, import_records
from storage.pairs import import_pairs
from trainers.errors import DataFileError
from trainers.validate import Issue, check_record, read_jsonl

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
) -> FileImportResult:
    """Validate and store ``path``; see the module docstring. ``on_line(line_number)`` drives a progress bar.

    Raises ``DataFileError`` (nothing stored) when the file cannot be read: missing, a directory,
    not UTF-8, a line too long, or no lines at all.
    """
    file_path = Path(path)
    result = FileImportResult(path=str(file_path))
    source = str(file_path.resolve())
    sft_batch: list[tuple[int, dict[str, Any]]] = []
    dpo_batch: list[tuple[int, dict[str, Any]]] = []
    storing = True
    examples = [0, 0]
    pairs = [0, 0]

    with db.session() as session:

        def flush() -> None:
            if sft_batch:
                done = import_records(db, sft_batch, source_file=source, approved_by=approved_by, session=session)
                examples[0] += done.added
                examples[1] += done.unchanged
                sft_batch.clear()
            if dpo_batch:
                done = import_pairs(db, dpo_batch, source_file=source, session=session)
                pairs[0] += done.added
                pairs[1] += done.unchanged
                dpo_batch.clear()

        for line, value, issue in read_jsonl(file_path):
            result.lines += 1
            if issue is not None:
                line_errors = [issue]
            else:
                checked = check_record(value, line, kind)
                line_errors = checked.errors
                if not line_errors:
                    result.warning_counts.update(warning.code for warning in checked.warnings)
            if line_errors:
                result.invalid_lines += 1
                room = MAX_REPORTED_ERRORS - len(result.errors)
                result.errors.extend(line_errors[: max(room, 0)])
                if not skip_invalid:
                    # Nothing will be stored: stop writing, keep reading to report every error.
                    storing = False
                    sft_batch.clear()
                    dpo_batch.clear()
            else:
                result.valid_lines += 1
                if storing:
                    (dpo_batch if checked.kind == "dpo" else sft_batch).append((line, value))
                    if len(sft_batch) >= BATCH_SIZE or len(dpo_batch) >= BATCH_SIZE:
                        flush()
            if on_line is not None:
                on_line(line)

        if result.lines == 0:
            raise DataFileError(f"{file_path}: is empty (no JSON lines); nothing to import")
        if storing:
            flush()
            result.stored = True
        else:
            session.rollback()

    if result.stored:
        result.examples = ImportResult(*examples)
        result.pairs = ImportResult(*pairs)
    return result


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

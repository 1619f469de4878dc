"""One pass over a dataset that validates, counts tokens, finds duplicates and prices the fine-tune.

``build_report`` is the engine behind ``ftbot validate``/``ftbot price``, ``/ft validate``, ``/ft price`` and
the training quote. Memory stays flat in the size of the input: lines are read in blocks, per-example
token counts are kept as a histogram, duplicate detection keeps hashes in capped structures, and the
issue lists are capped (the counts by code are always complete). Big files are analysed by a pool of
processes (one per core) that each parse, check and tokenize whole blocks; the parent only merges.

The parts: ``report_workers`` runs the pass over the source, ``analysis`` analyses the lines of a block,
``merge`` adds the blocks up and makes the cross-line checks; this module turns the totals into a priced report.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from storage.config import DEFAULT_MAX_LINE_BYTES
from storage.errors import DataFileError
from trainers.data.issues import Issue
from trainers.data.merge import BlockMerger, TokenStats
from trainers.data.pricing import PriceTable, TrainingQuote, default_epochs, load_price_table, training_cost
from trainers.data.report_workers import analyze_file, analyze_items
from trainers.data.tokens import encoding_name_for_model, ensure_encoding_cache

__all__ = ["DatasetReport", "build_report", "quote_models", "iter_items", "MIN_EXAMPLES"]

MIN_EXAMPLES = 10


@dataclass
class DatasetReport:
    """What ``build_report`` found. ``ok`` means no errors: the valid examples can be uploaded as they are."""

    source: str
    model: str
    encoding: str
    kind: str | None
    examples: int
    valid_examples: int
    blank_lines: int
    errors: list[Issue]
    warnings: list[Issue]
    error_counts: dict[str, int]
    warning_counts: dict[str, int]
    issues_truncated: bool
    tokens: TokenStats
    assistant_tokens: TokenStats
    tools_estimated_examples: int
    context_limit: int
    epochs: int | None
    epochs_source: str
    billed_tokens: int
    estimated_cost_usd: float | None
    training_price_per_1m: float | None
    prices_as_of: str
    prices_file: str
    seconds: float
    workers: int
    notes: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.error_counts

    @property
    def invalid_examples(self) -> int:
        return self.examples - self.valid_examples

    def quote(self, model: str, *, prices: PriceTable | None = None, epochs: int | None = None) -> TrainingQuote:
        """Training quote for ``model`` from this report's token histogram (same encoding assumed)."""
        table = prices or load_price_table()
        entry = table.get(model)
        chosen = epochs if epochs is not None else self.epochs
        billed = (chosen or 0) * self.tokens.capped_total(entry.context_limit)
        return TrainingQuote(entry.name, chosen or 0, billed, entry.training, training_cost(entry, billed))

    def to_json(self) -> dict[str, Any]:
        tokens = self.tokens.to_json()
        tokens["assistant"] = self.assistant_tokens.to_json()
        tokens["tools_estimated_examples"] = self.tools_estimated_examples
        tokens["over_limit_examples"] = self.tokens.over(self.context_limit)
        tokens["billed_per_epoch"] = self.tokens.capped_total(self.context_limit)
        return {
            "ok": self.ok,
            "source": self.source,
            "model": self.model,
            "encoding": self.encoding,
            "kind": self.kind,
            "examples": self.examples,
            "valid_examples": self.valid_examples,
            "invalid_examples": self.invalid_examples,
            "blank_lines": self.blank_lines,
            "errors": [issue.to_json() for issue in self.errors],
            "warnings": [issue.to_json() for issue in self.warnings],
            "error_counts": dict(self.error_counts),
            "warning_counts": dict(self.warning_counts),
            "issues_truncated": self.issues_truncated,
            "tokens": tokens,
            "context_limit": self.context_limit,
            "epochs": self.epochs,
            "epochs_source": self.epochs_source,
            "billed_tokens": self.billed_tokens,
            "estimated_cost_usd": None if self.estimated_cost_usd is None else round(self.estimated_cost_usd, 4),
            "training_price_per_1m_tokens": self.training_price_per_1m,
            "prices_as_of": self.prices_as_of,
            "prices_file": self.prices_file,
            "seconds": round(self.seconds, 3),
            "workers": self.workers,
            "notes": list(self.notes),
        }


def build_report(
    source: Iterable[tuple[int, Any]] | Iterable[tuple[int, Any, Issue | None]] | str | os.PathLike[str],
    *,
    model: str,
    epochs: int | None = None,
    kind: str = "auto",
    pii: bool = True,
    workers: int | None = None,
    progress: Callable[[int, int], None] | None = None,
    prices: PriceTable | None = None,
    unit: str | None = None,
    near_duplicate_threshold: float = 0.7,
    label: str | None = None,
    max_line_bytes: int = DEFAULT_MAX_LINE_BYTES,
) -> DatasetReport:
    """Validate, count tokens and price ``source`` (a JSONL path, or ``(line, value)`` items) for ``model``.

    ``epochs`` None: OpenAI's automatic rule. ``workers``: processes for big files (default: the CPU
    count, at most 4; 1 disables the pool). ``progress(done, total)`` is called with bytes for files and
    item counts for iterables (total 0 when unknown). ``unit`` names positions in messages ("line" for
    files; pass "example" for database ids). ``label`` names the source in the report (default: the path, or "items").
    ``max_line_bytes``: a longer line is reported as ``line_too_long`` without being read.
    """
    started = time.perf_counter()
    table = prices or load_price_table()
    entry = table.find(model)
    context_limit = entry.context_limit if entry else table.context_limit(model)
    encoding_name = encoding_name_for_model(model)
    ensure_encoding_cache(encoding_name)  # seed the offline cache once, before any worker starts
    merger = BlockMerger(context_limit=context_limit, unit=unit or "line", near_threshold=near_duplicate_threshold)
    notes: list[str] = []
    used_workers = 1
    if isinstance(source, (str, os.PathLike)):
        path = Path(source)
        label = label or str(path)
        used_workers = analyze_file(path, model, kind, pii, workers, merger, progress, context_limit, max_line_bytes)
        if merger.examples == 0 and merger.blank == 0:
            raise DataFileError(f"{label}: the file is empty; add one JSON example per line")
        if merger.examples == 0:
            raise DataFileError(f"{label}: the file has only blank lines; add one JSON example per line")
    else:
        label = label or "items"
        analyze_items(source, model, kind, pii, merger, progress, context_limit)
    merger.finish_system_prompts()
    if entry is None:
        notes.append(f"{model!r} is not in the price table ({table.path}); no cost, context limit assumed {context_limit:,}")
    if merger.exact.saturated:
        notes.append("exact-duplicate tracking stopped remembering new examples after 1,000,000")
    if merger.valid < MIN_EXAMPLES:
        merger.errors.add(
            Issue(None, "too_few_examples", f"only {merger.valid} valid example(s); OpenAI needs at least {MIN_EXAMPLES} "
                  "(50-100 recommended): add more examples or fix the lines with errors")
        )
    chosen_epochs = epochs if epochs is not None else (default_epochs(merger.valid) if merger.valid else None)
    billed = (chosen_epochs or 0) * merger.tokens.capped_total(context_limit)
    cost = training_cost(entry, billed) if entry is not None else None
    if merger.tools_estimated:
        notes.append(f"{merger.tools_estimated} example(s) define tools: their token counts include an estimate for the tool definitions")
    return DatasetReport(
        source=label,
        model=model,
        encoding=encoding_name,
        kind=merger.kind,
        examples=merger.examples,
        valid_examples=merger.valid,
        blank_lines=merger.blank,
        errors=merger.errors.sorted_items(),
        warnings=merger.warnings.sorted_items(),
        error_counts=dict(merger.errors.counts),
        warning_counts=dict(merger.warnings.counts),
        issues_truncated=merger.errors.truncated or merger.warnings.truncated,
        tokens=merger.tokens,
        assistant_tokens=merger.assistant,
        tools_estimated_examples=merger.tools_estimated,
        context_limit=context_limit,
        epochs=chosen_epochs,
        epochs_source="given" if epochs is not None else "auto",
        billed_tokens=billed,
        estimated_cost_usd=cost,
        training_price_per_1m=entry.training if entry else None,
        prices_as_of=table.as_of,
        prices_file=str(table.path),
        seconds=time.perf_counter() - started,
        workers=used_workers,
        notes=notes,
    )


def quote_models(
    source_factory: Callable[[], Iterable[tuple[int, Any]] | str | os.PathLike[str]],
    models: Iterable[str],
    *,
    epochs: int | None = None,
    prices: PriceTable | None = None,
    **options: Any,
) -> tuple[dict[str, DatasetReport], list[TrainingQuote]]:
    """Quotes for several models: one pass per distinct encoding (``source_factory`` re-opens the source)."""
    table = prices or load_price_table()
    by_encoding: dict[str, list[str]] = {}
    for model in models:
        by_encoding.setdefault(encoding_name_for_model(model), []).append(model)
    reports: dict[str, DatasetReport] = {}
    quotes: list[TrainingQuote] = []
    for encoding, names in by_encoding.items():
        report = build_report(source_factory(), model=names[0], epochs=epochs, prices=table, **options)
        reports[encoding] = report
        for name in names:
            quotes.append(report.quote(name, prices=table, epochs=report.epochs))
    return reports, quotes


def iter_items(values: Iterable[Any]) -> Iterator[tuple[int, Any]]:
    """Number plain values 1, 2, ... as ``(line, value)`` items."""
    yield from enumerate(values, start=1)

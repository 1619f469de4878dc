"""One pass over a dataset that validates, counts tokens, finds duplicates and prices the fine-tune.

``build_report`` is the engine behind ``ftbot validate``/``ftbot price``, ``/ft validate``, ``/ft price`` and
the training quote. Memory stays flat in the size of the input: lines are read in blocks, per-example
token counts are kept as a histogram, duplicate detection keeps hashes in capped structures, and the
issue lists are capped (the counts by code are always complete). Big files are analysed by a pool of
processes (one per core) that each parse, check and tokenize whole blocks; the parent only merges.
"""

from __future__ import annotations

import hashlib
import multiprocessing
import os
import threading
import time
from collections import Counter, deque
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from trainers.duplicates import ExactDuplicates, NearDuplicateIndex, band_keys, minhash_signatures
from trainers.errors import DataFileError
from trainers.pricing import PriceTable, TrainingQuote, default_epochs, load_price_table, training_cost
from trainers.records import canonical_json
from trainers.tokens import TokenCounter, encoding_for_model, encoding_name_for_model
from trainers.validate import InvalidUtf8, Issue, check_record, detect_kind, iter_blocks, split_block

__all__ = ["DatasetReport", "TokenStats", "build_report", "quote_models", "MIN_EXAMPLES", "PARALLEL_MIN_BYTES"]

MIN_EXAMPLES = 10
PARALLEL_MIN_BYTES = 4 * 1024 * 1024
MAX_ISSUES_PER_CODE = 100
MAX_ISSUES = 1000
_ITEM_BATCH = 1024
_BLOCK_BYTES = 1 << 20


# ---------------------------------------------------------------------------------------------------
# Results


def _nearest_rank(histogram: Counter[int], fraction: float) -> int:
    """The nearest-rank percentile of a histogram of integers (fraction in (0, 1])."""
    total = sum(histogram.values())
    if total == 0:
        return 0
    rank = max(1, -(-int(fraction * total * 1_000_000) // 1_000_000))  # ceil without float surprises
    seen = 0
    for value in sorted(histogram):
        seen += histogram[value]
        if seen >= rank:
            return value
    return max(histogram)


@dataclass
class TokenStats:
    """Distribution of per-example token counts (valid examples only)."""

    histogram: Counter[int] = field(default_factory=Counter)

    def add(self, tokens: int) -> None:
        self.histogram[tokens] += 1

    @property
    def count(self) -> int:
        return sum(self.histogram.values())

    @property
    def total(self) -> int:
        return sum(value * count for value, count in self.histogram.items())

    def capped_total(self, limit: int) -> int:
        return sum(min(value, limit) * count for value, count in self.histogram.items())

    def over(self, limit: int) -> int:
        return sum(count for value, count in self.histogram.items() if value > limit)

    def to_json(self) -> dict[str, Any]:
        count = self.count
        return {
            "total": self.total,
            "min": min(self.histogram) if count else 0,
            "median": _nearest_rank(self.histogram, 0.5),
            "p90": _nearest_rank(self.histogram, 0.9),
            "max": max(self.histogram) if count else 0,
            "mean": round(self.total / count, 1) if count else 0.0,
        }


@dataclass
class _IssueLog:
    """Every issue counted by code; the first ``per_code`` of each code (``limit`` in all) kept in full."""

    per_code: int = MAX_ISSUES_PER_CODE
    limit: int = MAX_ISSUES
    unit: str = "line"
    items: list[Issue] = field(default_factory=list)
    counts: Counter[str] = field(default_factory=Counter)

    def add(self, issue: Issue) -> None:
        self.counts[issue.code] += 1
        if self.counts[issue.code] <= self.per_code and len(self.items) < self.limit:
            if self.unit != "line" and issue.message.startswith("line "):
                issue = Issue(issue.line, issue.code, self.unit + issue.message[4:])
            self.items.append(issue)

    @property
    def truncated(self) -> bool:
        return sum(self.counts.values()) > len(self.items)

    def sorted_items(self) -> list[Issue]:
        return sorted(self.items, key=lambda issue: (issue.line is not None, issue.line or 0))


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


# ---------------------------------------------------------------------------------------------------
# Per-line analysis (runs in worker processes for big files)

# One analysed line: (line, kind, errors, warnings, tokens, assistant tokens, tools estimated,
#                     content digest, system-prompt digest or 0)
_Row = tuple[int, str, tuple[Issue, ...], tuple[Issue, ...], int, int, bool, int, int]


@dataclass
class _Block:
    rows: list[_Row]
    signature_rows: Any  # numpy int64: indices into rows that have a reply signature
    signatures: Any
    keys: Any
    blank_lines: int
    failure: DataFileError | None  # invalid UTF-8: stops the report at that line


def _digest(text: str) -> int:
    return int.from_bytes(hashlib.blake2b(text.encode("utf-8"), digest_size=8).digest(), "little")


class _Analyzer:
    """Parses, checks and tokenizes lines; one per process."""

    def __init__(self, model: str, kind: str, pii: bool, source: str):
        self.counter = TokenCounter(encoding_for_model(model))
        self.kind = kind
        self.pii = pii
        self.source = source

    def row(self, line: int, value: Any, reply_tokens: list[int], text: str | None = None) -> _Row:
        """Analyse one parsed line; ``text`` is the line as read (its hash finds exact duplicates cheaply)."""
        checked = check_record(value, line, self.kind, pii=self.pii)
        errors = tuple(checked.errors)
        warnings = tuple(checked.warnings) if checked.warnings else ()
        if errors:
            return (line, checked.kind, errors, warnings, 0, 0, False, 0, 0)
        record = checked.record
        assert record is not None
        counted = self.counter.count_record(record, reply_tokens)
        # Files: identical lines are duplicates (hashing the line costs ~1 µs; canonical JSON ~8 µs).
        digest = _digest(text if text is not None else canonical_json(record))
        prompt = record.get("input", record) if checked.kind == "dpo" else record
        system = [
            message.get("content")
            for message in prompt.get("messages") or ()
            if isinstance(message, dict) and message.get("role") == "system"
        ]
        if not system:
            system_digest = 0
        elif len(system) == 1 and isinstance(system[0], str):
            system_digest = _digest(system[0]) or 1
        else:
            system_digest = _digest(canonical_json(system))
        return (line, checked.kind, errors, warnings, counted.total, counted.assistant, counted.tools_estimated, digest, system_digest)

    def finish(self, rows: list[_Row], flat: list[int], lengths: list[int], blank: int, failure: DataFileError | None) -> _Block:
        indices, signatures = minhash_signatures(flat, lengths)
        return _Block(rows, indices.tolist(), signatures, band_keys(signatures).tolist(), blank, failure)

    def analyze_block(self, first_line: int, block: bytes) -> _Block:
        import json

        rows: list[_Row] = []
        flat: list[int] = []  # token ids of every trained reply, back to back (near-duplicate sketch)
        lengths: list[int] = []
        blank = 0
        failure: DataFileError | None = None
        loads = json.loads
        for line, raw in split_block(block, first_line):
            if not raw or raw.isspace():
                blank += 1
                continue
            try:
                text = raw.decode("utf-8")
            except UnicodeDecodeError as exc:
                failure = InvalidUtf8.at(self.source, line, exc)
                break
            try:
                value = loads(text)
            except (ValueError, RecursionError) as exc:
                message = getattr(exc, "msg", "nested too deeply")
                column = getattr(exc, "colno", None)
                where = f" at column {column}" if column else ""
                issue = Issue(line, "invalid_json", f"line {line}: not valid JSON ({message}{where}); each line must be one JSON object")
                rows.append((line, "sft", (issue,), (), 0, 0, False, 0, 0))
                lengths.append(0)
                continue
            before = len(flat)
            rows.append(self.row(line, value, flat, text.strip()))
            lengths.append(len(flat) - before)
        return self.finish(rows, flat, lengths, blank, failure)

    def analyze_items(self, items: list[tuple[int, Any, Issue | None]]) -> _Block:
        rows: list[_Row] = []
        flat: list[int] = []
        lengths: list[int] = []
        for line, value, issue in items:
            before = len(flat)
            if issue is not None:
                rows.append((line, "sft", (issue,), (), 0, 0, False, 0, 0))
            else:
                rows.append(self.row(line, value, flat))
            lengths.append(len(flat) - before)
        return self.finish(rows, flat, lengths, 0, None)


_WORKER: _Analyzer | None = None


def _init_worker(model: str, kind: str, pii: bool, source: str) -> None:
    global _WORKER
    _WORKER = _Analyzer(model, kind, pii, source)


def _work(first_line: int, block: bytes) -> _Block:
    assert _WORKER is not None
    return _WORKER.analyze_block(first_line, block)


def _pool_context() -> multiprocessing.context.BaseContext:
    # fork shares the already-loaded encoding with the workers for free, but is only safe in a
    # single-threaded process; the Slack bot (thread pools) gets forkserver.
    methods = multiprocessing.get_all_start_methods()
    if "fork" in methods and threading.active_count() == 1:
        return multiprocessing.get_context("fork")
    return multiprocessing.get_context("forkserver" if "forkserver" in methods else "spawn")


# ---------------------------------------------------------------------------------------------------
# Merging (parent process): cross-line checks and totals


class _Merger:
    def __init__(self, *, context_limit: int, unit: str, near_threshold: float):
        self.context_limit = context_limit
        self.unit = unit
        self.errors = _IssueLog(unit=unit)
        self.warnings = _IssueLog(unit=unit)
        self.examples = 0
        self.valid = 0
        self.blank = 0
        self.kind: str | None = None
        self.tokens = TokenStats()
        self.assistant = TokenStats()
        self.tools_estimated = 0
        self.exact = ExactDuplicates()
        self.near = NearDuplicateIndex(threshold=near_threshold)
        self.system_prompts: dict[int, list[Any]] = {}  # digest -> [count, first line, sample lines]
        self.system_prompts_overflow = 0

    def _label(self, line: int) -> str:
        return f"{self.unit} {line}"

    def add(self, block: _Block) -> None:
        signature_at = {row: position for position, row in enumerate(block.signature_rows)}
        self.blank += block.blank_lines
        for position, row in enumerate(block.rows):
            line, kind, errors, warnings, total, assistant, tools_estimated, digest, system_digest = row
            self.examples += 1
            for issue in warnings:
                self.warnings.add(issue)
            if not errors and self.kind is not None and kind != self.kind:
                names = {"sft": "a chat (SFT) line", "dpo": "a preference (DPO) line"}
                errors = (
                    Issue(line, "data_type", f"line {line}: is {names[kind]} but the file's first valid example is {names[self.kind]}; one file holds one kind: split it"),
                )
            if errors:
                for issue in errors:
                    self.errors.add(issue)
                continue
            if self.kind is None:
                self.kind = kind
            self.valid += 1
            self.tokens.add(total)
            self.assistant.add(assistant)
            if tools_estimated:
                self.tools_estimated += 1
            if total > self.context_limit:
                self.warnings.add(
                    Issue(line, "too_long", f"line {line}: {total:,} tokens, over the {self.context_limit:,}-token limit of this model; "
                          f"OpenAI truncates it (billed at {self.context_limit:,}): shorten the conversation or split it")
                )
            earlier = self.exact.check(digest, line)
            if earlier is not None:
                self.warnings.add(
                    Issue(line, "duplicate_example", f"line {line}: exact duplicate of {self._label(earlier)}; remove the copy (duplicates overweight one reply)")
                )
            else:
                signature_position = signature_at.get(position)
                if signature_position is not None:
                    match = self.near.check(line, block.signatures[signature_position], block.keys[signature_position])
                    if match is not None:
                        self.warnings.add(
                            Issue(line, "near_duplicate", f"line {line}: the assistant reply is ~{match.similarity:.0%} similar to {self._label(match.line)}'s "
                                  "(a canned macro?); keep a few varied examples of it, not many copies")
                        )
            if system_digest:
                entry = self.system_prompts.get(system_digest)
                if entry is not None:
                    entry[0] += 1
                    if len(entry[2]) < 5:
                        entry[2].append(line)
                elif len(self.system_prompts) < 1000:
                    self.system_prompts[system_digest] = [1, line, [line]]
                else:
                    self.system_prompts_overflow += 1

    def finish_system_prompts(self) -> None:
        if len(self.system_prompts) < 2:
            return
        ranked = sorted(self.system_prompts.values(), key=lambda entry: (-entry[0], entry[1]))
        main_count, main_line, _ = ranked[0]
        total = sum(entry[0] for entry in ranked) + self.system_prompts_overflow
        for count, first_line, samples in ranked[1:]:
            others = f" (also {', '.join(str(line) for line in samples[1:])}{', ...' if count > len(samples) else ''})" if count > 1 else ""
            self.warnings.add(
                Issue(first_line, "inconsistent_system_prompt",
                      f"{self._label(first_line)}: uses a different system prompt than {main_count} of {total} examples (first at {self._label(main_line)}); "
                      f"{count} example(s) use this one{others}. Train with the prompt you will send in production, or ignore if it differs on purpose")
            )


# ---------------------------------------------------------------------------------------------------
# The engine


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
) -> DatasetReport:
    """Validate, count tokens and price ``source`` (a JSONL path, or ``(line, value)`` items) for ``model``.

    ``epochs`` None: OpenAI's automatic rule. ``workers``: processes for big files (default: the CPU
    count, at most 4; 1 disables the pool). ``progress(done, total)`` is called with bytes for files and
    item counts for iterables (total 0 when unknown). ``unit`` names positions in messages ("line" for
    files; pass "example" for database ids).
    """
    started = time.perf_counter()
    table = prices or load_price_table()
    entry = table.find(model)
    context_limit = entry.context_limit if entry else table.context_limit(model)
    encoding_name = encoding_name_for_model(model)
    encoding_for_model(model)  # load (and seed the offline cache) once, before any worker forks
    is_path = isinstance(source, (str, os.PathLike))
    merger = _Merger(context_limit=context_limit, unit=unit or "line", near_threshold=near_duplicate_threshold)
    notes: list[str] = []
    used_workers = 1
    if is_path:
        path = Path(source)  # type: ignore[arg-type]
        label = str(path)
        used_workers = _analyze_file(path, model, kind, pii, workers, merger, progress)
        if merger.examples == 0 and merger.blank == 0:
            raise DataFileError(f"{label}: the file is empty; add one JSON example per line")
        if merger.examples == 0:
            raise DataFileError(f"{label}: the file has only blank lines; add one JSON example per line")
    else:
        label = "items"
        _analyze_items(source, model, kind, pii, merger, progress)  # type: ignore[arg-type]
    merger.finish_system_prompts()
    if entry is None:
        notes.append(f"{model!r} is not in the price table ({table.path}); no cost, context limit assumed {context_limit:,}")
    if merger.exact.saturated:
        notes.append("exact-duplicate tracking stopped remembering new examples after 1,000,000")
    if merger.valid < MIN_EXAMPLES:
        merger.errors.add(
            Issue(None, "too_few_examples", f"only {merger.valid} valid example(s); OpenAI needs at least {MIN_EXAMPLES} (50-100 recommended): add more or fix the errors above")
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


def _analyze_file(
    path: Path,
    model: str,
    kind: str,
    pii: bool,
    workers: int | None,
    merger: _Merger,
    progress: Callable[[int, int], None] | None,
) -> int:
    try:
        size = path.stat().st_size
    except OSError:
        size = 0  # iter_blocks raises the clear error
    wanted = workers if workers is not None else min(os.cpu_count() or 1, 4)
    done = 0
    blocks = iter_blocks(path, block_size=_BLOCK_BYTES)
    if wanted <= 1 or size < PARALLEL_MIN_BYTES:
        analyzer = _Analyzer(model, kind, pii, str(path))
        for first_line, block in blocks:
            _merge(merger, analyzer.analyze_block(first_line, block))
            done += len(block)
            if progress:
                progress(done, size)
        return 1
    from concurrent.futures import ProcessPoolExecutor

    with ProcessPoolExecutor(
        max_workers=wanted, mp_context=_pool_context(), initializer=_init_worker, initargs=(model, kind, pii, str(path))
    ) as pool:
        pending: deque[tuple[Any, int]] = deque()
        try:
            for first_line, block in blocks:
                pending.append((pool.submit(_work, first_line, block), len(block)))
                # Bounded read-ahead: memory holds a few blocks, however big the file.
                while len(pending) >= 2 * wanted:
                    done += _drain_one(pending, merger)
                    if progress:
                        progress(done, size)
            while pending:
                done += _drain_one(pending, merger)
                if progress:
                    progress(done, size)
        except BaseException:
            for future, _ in pending:
                future.cancel()
            raise
    return wanted


def _drain_one(pending: deque[tuple[Any, int]], merger: _Merger) -> int:
    future, size = pending.popleft()
    _merge(merger, future.result())
    return size


def _merge(merger: _Merger, block: _Block) -> None:
    merger.add(block)
    if block.failure is not None:
        raise block.failure


def _analyze_items(
    items: Iterable[Any], model: str, kind: str, pii: bool, merger: _Merger, progress: Callable[[int, int], None] | None
) -> None:
    analyzer = _Analyzer(model, kind, pii, "items")
    batch: list[tuple[int, Any, Issue | None]] = []
    done = 0
    for item in items:
        if len(item) == 3:
            batch.append(item)  # (line, value, issue) from read_jsonl
        else:
            batch.append((item[0], item[1], None))
        if len(batch) >= _ITEM_BATCH:
            merger.add(analyzer.analyze_items(batch))
            done += len(batch)
            batch = []
            if progress:
                progress(done, 0)
    if batch:
        merger.add(analyzer.analyze_items(batch))
        done += len(batch)
        if progress:
            progress(done, 0)


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
    for index, value in enumerate(values, start=1):
        yield index, value

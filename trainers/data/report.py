"""One pass over a dataset that validates, counts tokens, finds duplicates and prices the fine-tune.

``build_report`` is the engine behind ``ftbot validate``/``ftbot price``, ``/ft validate``, ``/ft price`` and
the training quote. Memory stays flat in the size of the input: lines are read in blocks, per-example
token counts are kept as a histogram, duplicate detection keeps hashes in capped structures, and the
issue lists are capped (the counts by code are always complete). Big files are analysed by a pool of
processes (one per core) that each parse, check and tokenize whole blocks; the parent only merges.
"""

from __future__ import annotations

import json
import multiprocessing
import os
import threading
import time
from collections import Counter, deque
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import orjson
from xxhash import xxh3_64_intdigest

from trainers.data.duplicates import ExactDuplicates, NearDuplicateIndex, band_keys, reply_sketches
from storage.errors import DataFileError, FtbotError
from trainers.data.pii import find_pii
from trainers.data.pricing import PriceTable, TrainingQuote, default_epochs, load_price_table, training_cost
from storage.records import canonical_json
from trainers.data.tokens import TokenCounter, encoding_for_model, encoding_name_for_model, ensure_encoding_cache
from trainers.data.validate import SHORT_REPLY_WORDS, InvalidUtf8, Issue, _Checker, check_record, iter_blocks, split_block, system_has_pii

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
    """What a worker sends back for a block of lines: issues per line, and per valid line the facts the
    parent needs for totals and cross-line checks (columns, so merging is mostly C-speed bulk work)."""

    examples: int
    blank_lines: int
    issues: list[tuple[int, tuple[Issue, ...], tuple[Issue, ...]]]  # (line, errors, warnings) with any issue
    lines: list[int]  # valid lines, in order
    kinds: str  # "s" (SFT) or "d" (DPO) per valid line
    totals: list[int]
    assistant: list[int]
    tools_estimated: int
    digests: list[int]
    system_digests: list[int]
    signature_rows: list[int]  # indices into ``lines`` of replies with a MinHash signature
    signatures: Any
    keys: Any  # numpy uint64, one row of BANDS band keys per signature
    sketches: list[bytes]
    failure: DataFileError | None  # invalid UTF-8: stops the report at that line


def _digest(text: str | bytes) -> int:
    """64-bit hash for exact-duplicate and system-prompt tracking (xxh3: ~0.06 µs a line, blake2b ~0.9 µs)."""
    return xxh3_64_intdigest(text.encode("utf-8") if isinstance(text, str) else text)


class _Analyzer:
    """Parses, checks and tokenizes lines; one per process."""

    def __init__(self, model: str, kind: str, pii: bool, source: str, context_limit: int):
        encoding = encoding_for_model(model)
        self.counter = TokenCounter(encoding)
        self.encode = self.counter.encode
        # tiktoken's Rust encoder without its Python wrapper (which only adds a retry for lone surrogates:
        # the fast path leaves such lines to the general path, which goes through the wrapper).
        core = getattr(encoding, "_core_bpe", None)
        self._core_encode = getattr(core, "encode_ordinary", None) or encoding.encode_ordinary
        self._role_tokens = {role: len(encoding.encode_ordinary(role)) for role in ("system", "user", "assistant")}
        self._text_digests: dict[str, int] = {}  # system prompt -> digest (it repeats on every line)
        self.kind = kind
        self.pii = pii
        self.source = source
        self.context_limit = context_limit

    def row(self, line: int, value: Any, reply_tokens: list[int], text: str | bytes | None = None) -> _Row:
        """Analyse one parsed line; ``text`` is the line as read, stripped (its hash finds exact duplicates cheaply)."""
        if self.kind != "dpo":
            fast = self._fast_row(line, value, reply_tokens, text)
            if fast is not None:
                return fast
        return self._general_row(line, value, reply_tokens, text)

    def _system_digest(self, text: str) -> int:
        digest = self._text_digests.get(text)
        if digest is None:
            if len(self._text_digests) >= 1024:
                self._text_digests.clear()
            digest = self._text_digests[text] = _digest(text) or 1
        return digest

    def _general_row(self, line: int, value: Any, reply_tokens: list[int], text: str | bytes | None = None) -> _Row:
        """Any line: ``check_record`` then ``TokenCounter.count_record``."""
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
            system_digest = self._system_digest(system[0])
        else:
            system_digest = _digest(canonical_json(system))
        return (line, checked.kind, errors, warnings, counted.total, counted.assistant, counted.tools_estimated, digest, system_digest)

    def _fast_row(self, line: int, value: Any, reply_tokens: list[int], text: str | bytes | None) -> _Row | None:
        """The common shape checked and counted in one loop, with the same results as the general path:
        ``{"messages": [...]}`` of system/user/assistant messages with non-empty text content (assistant:
        optional weight 0/1), at most one system message, at least one trained reply. None: anything else
        (and ``reply_tokens`` as it was). Warnings are rare: their messages are only built when one is due."""
        if type(value) is not dict or len(value) != 1:
            return None
        messages = value.get("messages")
        if type(messages) is not list or not messages:
            return None
        encode = self._core_encode
        role_tokens = self._role_tokens
        total = 3  # per example
        assistant = 0
        has_user = False
        trained_any = False
        system_text: str | None = None
        short: list[int] = []  # indices of trained replies with fewer than SHORT_REPLY_WORDS words
        scanned: list[int] = []  # indices of the messages whose text goes to the PII scan
        before = len(reply_tokens)
        try:
            for index, message in enumerate(messages):
                if type(message) is not dict:
                    break
                role = message.get("role")
                content = message.get("content")
                if type(content) is not str or not content or content.isspace():
                    break
                size = len(message)
                if role == "assistant":
                    trained = True
                    if size != 2:
                        weight = message.get("weight")
                        if size != 3 or type(weight) is not int or (weight != 0 and weight != 1):
                            break
                        trained = weight == 1
                    if trained:
                        trained_any = True
                        ids = encode(content)
                        reply_tokens.extend(ids)
                        tokens = len(ids)
                        assistant += tokens
                        if len(content.split(None, SHORT_REPLY_WORDS)) < SHORT_REPLY_WORDS:
                            short.append(index)
                    else:
                        tokens = len(encode(content))
                    scanned.append(index)
                elif size != 2:
                    break
                elif role == "user":
                    has_user = True
                    tokens = len(encode(content))
                    scanned.append(index)
                elif role == "system":
                    if system_text is not None:
                        break
                    system_text = content
                    tokens = self.counter.count_repeated(content)
                    if self.pii and system_has_pii(content):
                        scanned.append(index)
                else:
                    break
                total += 3 + role_tokens[role] + tokens
            else:
                if trained_any:
                    return self._fast_result(line, value, messages, text, total, assistant, has_user, system_text, short, scanned)
        except UnicodeEncodeError:
            pass  # a lone surrogate: the general path encodes it as tiktoken does
        del reply_tokens[before:]
        return None

    def _fast_result(
        self, line: int, value: dict[str, Any], messages: list[dict[str, Any]], text: str | bytes | None, total: int,
        assistant: int, has_user: bool, system_text: str | None, short: list[int], scanned: list[int],
    ) -> _Row:
        warnings: tuple[Issue, ...] = ()
        findings = None
        if self.pii and scanned:
            texts = [messages[index]["content"] for index in scanned]
            findings = find_pii(texts[0] if len(texts) == 1 else "\n\n".join(texts))
        if short or system_text is None or not has_user or findings:
            # The same checks, in the same order, as ``check_record`` makes them.
            checker = _Checker(line, self.pii)
            for index in short:
                checker.check_reply(messages[index]["content"], f"messages[{index}]")
            checker.conversation_warnings(["system"] * (system_text is not None) + ["user"] * has_user + ["assistant"])
            if findings:
                checker.pii_parts = [(f"messages[{index}]", messages[index]["content"]) for index in scanned]
                checker.scan_pii(findings)
            warnings = tuple(checker.warnings)
        digest = _digest(text if text is not None else canonical_json(value))
        system_digest = self._system_digest(system_text) if system_text is not None else 0
        return (line, "sft", (), warnings, total, assistant, False, digest, system_digest)

    def block(self, rows: list[_Row], flat: list[int], lengths: list[int], blank: int, failure: DataFileError | None) -> _Block:
        """Columns for the parent, and the per-line token limit check (which needs no other line)."""
        limit = self.context_limit
        issues: list[tuple[int, tuple[Issue, ...], tuple[Issue, ...]]] = []
        lines: list[int] = []
        kinds: list[str] = []
        totals: list[int] = []
        assistant: list[int] = []
        digests: list[int] = []
        system_digests: list[int] = []
        tools_estimated = 0
        for (line, kind, errors, warnings, total, trained, tools, digest, system_digest), length in zip(rows, lengths):
            if not errors and total > limit:
                warnings = warnings + (
                    Issue(line, "too_long", f"line {line}: {total:,} tokens, over the {limit:,}-token limit of this model; "
                          f"OpenAI truncates it (billed at {limit:,}): shorten the conversation or split it"),
                )
            if errors or warnings:
                issues.append((line, errors, warnings))
            if errors:
                continue
            lines.append(line)
            kinds.append("d" if kind == "dpo" else "s")
            totals.append(total)
            assistant.append(trained)
            digests.append(digest)
            system_digests.append(system_digest)
            tools_estimated += tools
        indices, signatures, sketches = reply_sketches(flat, lengths)  # lines with errors added no reply tokens
        # Map signature rows (indices into all rows) to indices into the valid lines.
        valid_index = {}
        position = 0
        for i, row in enumerate(rows):
            if not row[2]:
                valid_index[i] = position
                position += 1
        signature_rows = [valid_index[i] for i in indices.tolist()]
        return _Block(
            examples=len(rows), blank_lines=blank, issues=issues, lines=lines, kinds="".join(kinds), totals=totals,
            assistant=assistant, tools_estimated=tools_estimated, digests=digests, system_digests=system_digests,
            signature_rows=signature_rows, signatures=signatures, keys=band_keys(signatures), sketches=sketches,
            failure=failure,
        )

    def analyze_block(self, first_line: int, block: bytes) -> _Block:
        rows: list[_Row] = []
        flat: list[int] = []  # token ids of every trained reply, back to back (near-duplicate sketch)
        lengths: list[int] = []
        blank = 0
        failure: DataFileError | None = None
        fast_loads = orjson.loads
        loads = json.loads
        fast_row = self._fast_row if self.kind != "dpo" else None
        general_row = self._general_row
        for line, raw in split_block(block, first_line):
            if not raw or raw.isspace():
                blank += 1
                continue
            # Valid JSON starts and ends with JSON whitespace at most: the stripped bytes are the stripped text.
            before = len(flat)
            if fast_row is not None:
                try:
                    value = fast_loads(raw)  # checks UTF-8 too
                except orjson.JSONDecodeError:
                    pass
                else:
                    fast = fast_row(line, value, flat, raw.strip())
                    if fast is not None:
                        rows.append(fast)
                        lengths.append(len(flat) - before)
                        continue
            # Every other line is read by the standard library, as orjson differs at the edges (it refuses NaN and
            # lone surrogate escapes, reads integers over 64 bits as floats): same values and error messages.
            # The fast path only accepts lines whose every value is a string or a 0/1 weight, read alike by both.
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
            rows.append(general_row(line, value, flat, raw.strip()))
            lengths.append(len(flat) - before)
        return self.block(rows, flat, lengths, blank, failure)

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
        return self.block(rows, flat, lengths, 0, None)


_WORKER: _Analyzer | None = None


def _init_worker(model: str, kind: str, pii: bool, source: str, context_limit: int) -> None:
    global _WORKER
    _WORKER = _Analyzer(model, kind, pii, source, context_limit)


def _work(first_line: int, block: bytes) -> _Block:
    assert _WORKER is not None
    return _WORKER.analyze_block(first_line, block)


def _pool_context() -> multiprocessing.context.BaseContext:
    # fork starts workers at once, but is only safe in a single-threaded process; the Slack bot
    # (thread pools) gets forkserver.
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
        self.system_counts: Counter[int] = Counter()
        self.system_samples: dict[int, list[int]] = {}  # digest -> first lines using it (at most 5)

    def _label(self, line: int) -> str:
        return f"{self.unit} {line}"

    def add(self, block: _Block) -> None:
        self.blank += block.blank_lines
        self.examples += block.examples
        for _line, errors, warnings in block.issues:
            for issue in warnings:
                self.warnings.add(issue)
            for issue in errors:
                self.errors.add(issue)
        if not block.lines:
            return
        if self.kind is None:
            self.kind = "dpo" if block.kinds[0] == "d" else "sft"
        locked = "d" if self.kind == "dpo" else "s"
        if block.kinds.count(locked) != len(block.kinds):
            block = self._drop_other_kind(block, locked)
        lines = block.lines
        self.valid += len(lines)
        self.tokens.histogram.update(block.totals)
        self.assistant.histogram.update(block.assistant)
        self.tools_estimated += block.tools_estimated
        duplicates = self.exact.check_many(block.digests, lines)
        label = self._label
        for index, earlier in duplicates.items():
            line = lines[index]
            self.warnings.add(Issue(line, "duplicate_example", f"line {line}: exact duplicate of {label(earlier)}; remove the copy (duplicates overweight one reply)"))
        positions = [position for position, index in enumerate(block.signature_rows) if index not in duplicates]
        if positions:
            checked_lines = [lines[block.signature_rows[position]] for position in positions]
            signatures = block.signatures[positions] if len(positions) != len(block.signature_rows) else block.signatures
            keys = block.keys[positions] if len(positions) != len(block.signature_rows) else block.keys
            sketches = [block.sketches[position] for position in positions]
            for line, match in zip(checked_lines, self.near.check_many(checked_lines, signatures, keys, sketches)):
                if match is not None:
                    self.warnings.add(
                        Issue(line, "near_duplicate", f"line {line}: the assistant reply is ~{match.similarity:.0%} similar to {label(match.line)}'s "
                              "(a canned macro?); keep a few varied examples of it, not many copies")
                    )
        self._track_system_prompts(block.system_digests, lines)

    def _drop_other_kind(self, block: _Block, locked: str) -> _Block:
        names = {"s": "a chat (SFT) line", "d": "a preference (DPO) line"}
        keep = [kind == locked for kind in block.kinds]
        for line, kind in zip(block.lines, block.kinds):
            if kind != locked:
                self.errors.add(Issue(line, "data_type", f"line {line}: is {names[kind]} but the file's first valid example is "
                                      f"{names[locked]}; one file holds one kind: split it"))
        position_of: dict[int, int] = {}
        for index, kept in enumerate(keep):
            if kept:
                position_of[index] = len(position_of)
        rows = [(position_of[index], position) for position, index in enumerate(block.signature_rows) if index in position_of]

        def pick(values: list[Any]) -> list[Any]:
            return [value for value, kept in zip(values, keep) if kept]

        return _Block(
            examples=block.examples, blank_lines=0, issues=[], lines=pick(block.lines), kinds=locked * len(position_of),
            totals=pick(block.totals), assistant=pick(block.assistant), tools_estimated=block.tools_estimated,
            digests=pick(block.digests), system_digests=pick(block.system_digests),
            signature_rows=[new for new, _ in rows], signatures=block.signatures[[old for _, old in rows]] if rows else block.signatures[:0],
            keys=block.keys[[old for _, old in rows]] if rows else block.keys[:0], sketches=[block.sketches[old] for _, old in rows], failure=None,
        )

    def _track_system_prompts(self, digests: list[int], lines: list[int]) -> None:
        counts = self.system_counts
        counts.update(digests)
        samples = self.system_samples
        for digest in set(digests):
            if not digest:
                continue
            known = samples.get(digest)
            if known is None:
                if len(samples) >= 1000:
                    continue  # bounded: the report names at most 1000 variants
                known = samples[digest] = []
            if len(known) < 5:
                known.extend(line for line, value in zip(lines, digests) if value == digest)
                del known[5:]

    def finish_system_prompts(self) -> None:
        variants = [(count, self.system_samples[digest]) for digest, count in self.system_counts.items() if digest and digest in self.system_samples]
        if len(variants) < 2:
            return
        ranked = sorted(variants, key=lambda entry: (-entry[0], entry[1][0]))
        main_count, main_samples = ranked[0]
        total = sum(count for digest, count in self.system_counts.items() if digest)
        for count, samples in ranked[1:]:
            first_line = samples[0]
            others = f" (also {', '.join(str(line) for line in samples[1:])}{', ...' if count > len(samples) else ''})" if count > 1 else ""
            self.warnings.add(
                Issue(first_line, "inconsistent_system_prompt",
                      f"{self._label(first_line)}: uses a different system prompt than {main_count} of {total} examples (first at {self._label(main_samples[0])}); "
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
    label: str | None = None,
) -> DatasetReport:
    """Validate, count tokens and price ``source`` (a JSONL path, or ``(line, value)`` items) for ``model``.

    ``epochs`` None: OpenAI's automatic rule. ``workers``: processes for big files (default: the CPU
    count, at most 4; 1 disables the pool). ``progress(done, total)`` is called with bytes for files and
    item counts for iterables (total 0 when unknown). ``unit`` names positions in messages ("line" for
    files; pass "example" for database ids). ``label`` names the source in the report (default: the path, or "items").
    """
    started = time.perf_counter()
    table = prices or load_price_table()
    entry = table.find(model)
    context_limit = entry.context_limit if entry else table.context_limit(model)
    encoding_name = encoding_name_for_model(model)
    ensure_encoding_cache(encoding_name)  # seed the offline cache once, before any worker starts
    is_path = isinstance(source, (str, os.PathLike))
    merger = _Merger(context_limit=context_limit, unit=unit or "line", near_threshold=near_duplicate_threshold)
    notes: list[str] = []
    used_workers = 1
    if is_path:
        path = Path(source)  # type: ignore[arg-type]
        label = label or str(path)
        used_workers = _analyze_file(path, model, kind, pii, workers, merger, progress, context_limit)
        if merger.examples == 0 and merger.blank == 0:
            raise DataFileError(f"{label}: the file is empty; add one JSON example per line")
        if merger.examples == 0:
            raise DataFileError(f"{label}: the file has only blank lines; add one JSON example per line")
    else:
        label = label or "items"
        _analyze_items(source, model, kind, pii, merger, progress, context_limit)  # type: ignore[arg-type]
    merger.finish_system_prompts()
    if entry is None:
        notes.append(f"{model!r} is not in the price table ({table.path}); no cost, context limit assumed {context_limit:,}")
    if merger.exact.saturated:
        notes.append("exact-duplicate tracking stopped remembering new examples after 1,000,000")
    if merger.valid < MIN_EXAMPLES:
        merger.errors.add(
            Issue(None, "too_few_examples", f"only {merger.valid} valid example(s); OpenAI needs at least {MIN_EXAMPLES} (50-100 recommended): add more examples or fix the lines with errors")
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
    context_limit: int,
) -> int:
    try:
        size = path.stat().st_size
    except OSError:
        size = 0  # iter_blocks raises the clear error
    wanted = workers if workers is not None else min(os.cpu_count() or 1, 4)
    done = 0
    blocks = iter_blocks(path, block_size=_BLOCK_BYTES)
    if wanted <= 1 or size < PARALLEL_MIN_BYTES:
        analyzer = _Analyzer(model, kind, pii, str(path), context_limit)
        for first_line, block in blocks:
            _merge(merger, analyzer.analyze_block(first_line, block))
            done += len(block)
            if progress:
                progress(done, size)
        return 1
    from concurrent.futures import ProcessPoolExecutor
    from concurrent.futures.process import BrokenProcessPool

    context = _pool_context()
    if context.get_start_method() == "fork":
        encoding_for_model(model)  # forked workers share the parent's loaded encoding instead of loading it each
    with ProcessPoolExecutor(
        max_workers=wanted, mp_context=context, initializer=_init_worker, initargs=(model, kind, pii, str(path), context_limit)
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
        except BrokenProcessPool:
            raise FtbotError(
                f"{path}: a checking worker process stopped unexpectedly (out of memory or killed); "
                "free some memory and run it again"
            ) from None
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
    items: Iterable[Any], model: str, kind: str, pii: bool, merger: _Merger, progress: Callable[[int, int], None] | None,
    context_limit: int,
) -> None:
    analyzer = _Analyzer(model, kind, pii, "items", context_limit)
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

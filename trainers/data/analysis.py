"""Analysis of lines for the dataset report: check, count tokens and hash each line of a block.

A ``LineAnalyzer`` turns a block of raw lines (or a batch of parsed items) into an ``AnalyzedBlock``: the
issues of each line, and per valid line the facts the merger needs for totals and cross-line checks. Big
files are analysed in worker processes (``trainers.data.report_workers``), one analyzer per process.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

import numpy as np
import orjson
from xxhash import xxh3_64_intdigest

from storage.errors import DataFileError
from storage.records import canonical_json
from trainers.data.duplicates import band_keys, reply_sketches
from trainers.data.issues import Issue
from trainers.data.jsonl import InvalidUtf8, split_block
from trainers.data.pii import find_pii
from trainers.data.tokens import TokenCounter, encoding_for_model
from trainers.data.validate import SHORT_REPLY_WORDS, RecordChecker, check_record, system_has_pii

__all__ = ["AnalyzedRow", "AnalyzedBlock", "LineAnalyzer"]

# One analysed line: (line, kind, errors, warnings, tokens, assistant tokens, tools estimated,
#                     content digest, system-prompt digest or 0)
AnalyzedRow = tuple[int, str, tuple[Issue, ...], tuple[Issue, ...], int, int, bool, int, int]


@dataclass
class AnalyzedBlock:
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
    signatures: np.ndarray  # uint64 MinHash signatures, one row per reply in ``signature_rows``
    keys: np.ndarray  # uint64, one row of BANDS band keys per signature
    sketches: list[bytes]
    failure: DataFileError | None  # invalid UTF-8: stops the report at that line


def _content_digest(text: str | bytes) -> int:
    """64-bit hash for exact-duplicate and system-prompt tracking (xxh3: ~0.06 µs a line, blake2b ~0.9 µs)."""
    return xxh3_64_intdigest(text.encode("utf-8") if isinstance(text, str) else text)


class LineAnalyzer:
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

    def row(self, line: int, value: Any, reply_tokens: list[int], text: str | bytes | None = None) -> AnalyzedRow:
        """Analyse one parsed line; ``text`` is the line as read, stripped (its hash finds exact duplicates cheaply)."""
        if self.kind != "dpo":
            fast = self.fast_row(line, value, reply_tokens, text)
            if fast is not None:
                return fast
        return self.general_row(line, value, reply_tokens, text)

    def _system_digest(self, text: str) -> int:
        digest = self._text_digests.get(text)
        if digest is None:
            if len(self._text_digests) >= 1024:
                self._text_digests.clear()
            digest = self._text_digests[text] = _content_digest(text) or 1
        return digest

    def general_row(self, line: int, value: Any, reply_tokens: list[int], text: str | bytes | None = None) -> AnalyzedRow:
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
        digest = _content_digest(text if text is not None else canonical_json(record))
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
            system_digest = _content_digest(canonical_json(system))
        return (line, checked.kind, errors, warnings, counted.total, counted.assistant, counted.tools_estimated, digest, system_digest)

    def fast_row(self, line: int, value: Any, reply_tokens: list[int], text: str | bytes | None) -> AnalyzedRow | None:
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
    ) -> AnalyzedRow:
        warnings: tuple[Issue, ...] = ()
        findings = None
        if self.pii and scanned:
            texts = [messages[index]["content"] for index in scanned]
            findings = find_pii(texts[0] if len(texts) == 1 else "\n\n".join(texts))
        if short or system_text is None or not has_user or findings:
            # The same checks, in the same order, as ``check_record`` makes them.
            checker = RecordChecker(line, self.pii)
            for index in short:
                checker.check_reply(messages[index]["content"], f"messages[{index}]")
            checker.conversation_warnings(["system"] * (system_text is not None) + ["user"] * has_user + ["assistant"])
            if findings:
                checker.pii_parts = [(f"messages[{index}]", messages[index]["content"]) for index in scanned]
                checker.scan_pii(findings)
            warnings = tuple(checker.warnings)
        digest = _content_digest(text if text is not None else canonical_json(value))
        system_digest = self._system_digest(system_text) if system_text is not None else 0
        return (line, "sft", (), warnings, total, assistant, False, digest, system_digest)

    def block(
        self, rows: list[AnalyzedRow], flat: list[int], lengths: list[int], blank: int, failure: DataFileError | None
    ) -> AnalyzedBlock:
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
        for line, kind, errors, warnings, total, trained, tools, digest, system_digest in rows:
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
        return AnalyzedBlock(
            examples=len(rows), blank_lines=blank, issues=issues, lines=lines, kinds="".join(kinds), totals=totals,
            assistant=assistant, tools_estimated=tools_estimated, digests=digests, system_digests=system_digests,
            signature_rows=signature_rows, signatures=signatures, keys=band_keys(signatures), sketches=sketches,
            failure=failure,
        )

    def analyze_block(self, first_line: int, block: bytes) -> AnalyzedBlock:
        rows: list[AnalyzedRow] = []
        flat: list[int] = []  # token ids of every trained reply, back to back (near-duplicate sketch)
        lengths: list[int] = []
        blank = 0
        failure: DataFileError | None = None
        fast_loads = orjson.loads
        loads = json.loads
        fast_row = self.fast_row if self.kind != "dpo" else None
        general_row = self.general_row
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

    def analyze_items(self, items: list[tuple[int, Any, Issue | None]]) -> AnalyzedBlock:
        rows: list[AnalyzedRow] = []
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

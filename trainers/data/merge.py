"""Merging analysed blocks in the parent process: the totals and the checks that need other lines.

A ``BlockMerger`` receives each ``AnalyzedBlock`` in file order and keeps the counts, the token
histograms (``TokenStats``) and the capped issue logs; it finds exact and near duplicates, lines of
the other kind (SFT vs DPO) than the file's first, and system prompts that differ from the usual one.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from typing import Any

from trainers.data.analysis import AnalyzedBlock
from trainers.data.duplicates import ExactDuplicates, NearDuplicateIndex
from trainers.data.issues import Issue, IssueLog

__all__ = ["BlockMerger", "TokenStats"]


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


class BlockMerger:
    """Totals and cross-line checks over the analysed blocks of one source, added in order with ``add``."""

    def __init__(self, *, context_limit: int, unit: str, near_threshold: float):
        self.context_limit = context_limit
        self.unit = unit
        self.errors = IssueLog(unit=unit)
        self.warnings = IssueLog(unit=unit)
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

    def add(self, block: AnalyzedBlock) -> None:
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
            self.warnings.add(Issue(
                line, "duplicate_example",
                f"line {line}: exact duplicate of {label(earlier)}; remove the copy (duplicates overweight one reply)",
            ))
        positions = [position for position, index in enumerate(block.signature_rows) if index not in duplicates]
        if positions:
            checked_lines = [lines[block.signature_rows[position]] for position in positions]
            signatures = block.signatures[positions] if len(positions) != len(block.signature_rows) else block.signatures
            keys = block.keys[positions] if len(positions) != len(block.signature_rows) else block.keys
            sketches = [block.sketches[position] for position in positions]
            matches = self.near.check_many(checked_lines, signatures, keys, sketches)
            for line, match in zip(checked_lines, matches, strict=True):
                if match is not None:
                    self.warnings.add(Issue(
                        line, "near_duplicate",
                        f"line {line}: the assistant reply is ~{match.similarity:.0%} similar to {label(match.line)}'s "
                        "(a canned macro?); keep a few varied examples of it, not many copies",
                    ))
        self._track_system_prompts(block.system_digests, lines)

    def _drop_other_kind(self, block: AnalyzedBlock, locked: str) -> AnalyzedBlock:
        names = {"s": "a chat (SFT) line", "d": "a preference (DPO) line"}
        keep = [kind == locked for kind in block.kinds]
        for line, kind in zip(block.lines, block.kinds, strict=True):
            if kind != locked:
                self.errors.add(Issue(line, "data_type", f"line {line}: is {names[kind]} but the file's first valid example is "
                                      f"{names[locked]}; one file holds one kind: split it"))
        position_of: dict[int, int] = {}
        for index, kept in enumerate(keep):
            if kept:
                position_of[index] = len(position_of)
        rows = [(position_of[index], position) for position, index in enumerate(block.signature_rows) if index in position_of]

        def pick(values: list[Any]) -> list[Any]:
            return [value for value, kept in zip(values, keep, strict=True) if kept]

        return AnalyzedBlock(
            examples=block.examples, blank_lines=0, issues=[], lines=pick(block.lines), kinds=locked * len(position_of),
            totals=pick(block.totals), assistant=pick(block.assistant), tools_estimated=block.tools_estimated,
            digests=pick(block.digests), system_digests=pick(block.system_digests),
            signature_rows=[new for new, _ in rows],
            signatures=block.signatures[[old for _, old in rows]] if rows else block.signatures[:0],
            keys=block.keys[[old for _, old in rows]] if rows else block.keys[:0],
            sketches=[block.sketches[old] for _, old in rows], failure=None,
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
                known.extend(line for line, value in zip(lines, digests, strict=True) if value == digest)
                del known[5:]

    def finish_system_prompts(self) -> None:
        variants = [
            (count, self.system_samples[digest])
            for digest, count in self.system_counts.items() if digest and digest in self.system_samples
        ]
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
                      f"{self._label(first_line)}: uses a different system prompt than {main_count} of {total} examples "
                      f"(first at {self._label(main_samples[0])}); {count} example(s) use this one{others}. "
                      "Train with the prompt you will send in production, or ignore if it differs on purpose")
            )

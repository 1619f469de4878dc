"""Exact and near-duplicate detection: bounded structures, trigram Jaccard, and the bulk index against a plain rule."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest

from tests.fixtures.records import conversation, write_jsonl
from trainers.data.duplicates import NUM_PERM, SKETCH_SIZE, ExactDuplicates, NearDuplicateIndex, band_keys, reply_sketches, sketch_jaccard
from trainers.data.report import build_report
from trainers.data.tokens import encoding_for_model


def test_near_duplicate_index_stays_bounded_and_keeps_recurring_macros() -> None:
    rng = np.random.default_rng(1)
    macro = rng.integers(0, 200_000, size=60).tolist()
    index = NearDuplicateIndex(capacity=50)
    matches = 0
    for line in range(1, 2001):
        if line % 10 == 0:
            tokens = list(macro)
            tokens[5] = int(rng.integers(0, 200_000))  # a name changed in the macro
        else:
            tokens = rng.integers(0, 200_000, size=60).tolist()
        rows, signatures, sketches = reply_sketches(tokens, [len(tokens)])
        assert rows.tolist() == [0] and signatures.shape == (1, NUM_PERM)
        match = index.check(line, signatures[0], band_keys(signatures)[0].tolist(), sketches[0])
        assert len(index) <= 50
        if match is not None:
            matches += 1
            assert match.line == 10 and match.similarity >= 0.7
    assert matches >= 190  # 199 recurrences of the macro, MinHash may miss a few
    assert index.evictions > 0


def test_exact_duplicates_capacity() -> None:
    seen = ExactDuplicates(capacity=2)
    assert seen.check(1, 1) is None and seen.check(2, 2) is None and seen.check(3, 3) is None
    assert seen.saturated
    assert seen.check(1, 4) == 1 and seen.check(3, 5) is None


def test_near_duplicates_are_confirmed_by_exact_trigram_jaccard(tmp_path: Path) -> None:
    encoding = encoding_for_model("gpt-4o-mini")
    openers = ["Hi there,", "Hello,", "Thanks for writing,", "Sorry about that,"]
    steps = ["open Settings and choose Security.", "restart the client and wait a minute.", "check the spam folder for our email.",
             "update the app from the store.", "remove the device and add it again.", "clear the cache under Storage."]
    closers = ["Let us know if that helps.", "Have a great day!", "We are here if you need more help.", ""]
    lines = [
        conversation(f"Question {index}?",
                     f"{openers[index % 4]} {steps[(index * 7) % 6]} {steps[(index * 5) % 6]} {closers[(index * 3) % 4]}")
        for index in range(200)
    ]
    report = build_report(write_jsonl(tmp_path / "templated.jsonl", lines), model="gpt-4o-mini")

    def trigrams(line: int) -> set[tuple[int, ...]]:
        tokens = encoding.encode_ordinary(lines[line - 1]["messages"][2]["content"])
        return set(zip(tokens, tokens[1:], tokens[2:], strict=False))  # trigrams: the shifted slices are shorter

    flagged = [w for w in report.warnings if w.code == "near_duplicate"]
    assert flagged
    for warning in flagged:
        earlier = int(warning.message.split("similar to line ")[1].split("'")[0])
        a, b = trigrams(warning.line), trigrams(earlier)
        assert len(a & b) / len(a | b) >= 0.7, warning.message


def test_sketch_jaccard_is_exact_for_short_replies() -> None:
    rng = np.random.default_rng(3)
    first = rng.integers(0, 50_000, size=60).tolist()
    second = first[:40] + rng.integers(0, 50_000, size=20).tolist()
    _, _, sketches = reply_sketches(first + second, [len(first), len(second)])
    # Trigrams: the shifted slices are shorter, so zip stops at the last full window.
    a, b = set(zip(first, first[1:], first[2:], strict=False)), set(zip(second, second[1:], second[2:], strict=False))
    assert sketch_jaccard(sketches[0], sketches[1]) == pytest.approx(len(a & b) / len(a | b))


def _reference_near_duplicates(batches: list[tuple[list[int], np.ndarray, np.ndarray, list[bytes]]], capacity: int) -> list[Any]:
    """The near-duplicate rule spelled out with plain dicts, one reply at a time (the bulk index must agree).

    Candidates of a reply: the representatives that held one of its band keys when its batch started, then
    those added by earlier replies of the batch (latest per key); nominated when >= min_agreement MinHash
    values agree, confirmed by sketch Jaccard >= threshold (best first match wins). Unmatched replies become
    representatives; when full, the index evicts, and the rest of the batch starts afresh."""
    index = NearDuplicateIndex(capacity=capacity)  # used for its thresholds only
    minimum, threshold = index.min_agreement, index.threshold
    bands: dict[int, int] = {}  # key -> line
    reps: dict[int, tuple[np.ndarray, bytes, int]] = {}  # line -> (signature, sketch, matches), in insertion order
    out: list[Any] = []

    def similarity(a: bytes, b: bytes) -> float:  # exact Jaccard when both sketches are complete, else bottom-k
        first, second = set(np.frombuffer(a, dtype=np.uint64).tolist()), set(np.frombuffer(b, dtype=np.uint64).tolist())
        if len(first) < SKETCH_SIZE and len(second) < SKETCH_SIZE:
            return len(first & second) / len(first | second)
        union = sorted(first | second)[:SKETCH_SIZE]
        return sum(1 for value in union if value in first and value in second) / len(union)

    def run(lines, signatures, keys, sketches):
        nonlocal bands
        before = {row: [bands[k] for k in dict.fromkeys(keys[row].tolist()) if k in bands] for row in range(len(lines))}
        added: dict[int, int] = {}
        for row, line in enumerate(lines):
            candidates = list(dict.fromkeys(before[row]))
            nominated = [c for c in candidates if c in reps and np.count_nonzero(reps[c][0] == signatures[row]) >= minimum]
            for c in dict.fromkeys(added.get(k) for k in keys[row].tolist()):
                if c is not None and np.count_nonzero(reps[c][0] == signatures[row]) >= minimum:
                    nominated.append(c)
            best = None
            for c in nominated:
                value = similarity(sketches[row], reps[c][1])
                if value >= threshold and (best is None or value > best[0]):
                    best = (value, c)
            if best is not None:
                signature, sketch, matches = reps[best[1]]
                reps[best[1]] = (signature, sketch, matches + 1)
                out.append((best[1], best[0]))
                continue
            evicted = len(reps) >= capacity
            if evicted:
                matched = (line_ for line_, rep in reps.items() if rep[2] > 0)
                ranked = sorted(matched, key=lambda rep_line: -reps[rep_line][2])[: capacity // 2]
                kept = [rep_line for rep_line in reps if rep_line in set(ranked)]
                reps_new = {rep_line: (reps[rep_line][0], reps[rep_line][1], reps[rep_line][2] // 2) for rep_line in kept}
                reps.clear()
                reps.update(reps_new)
                bands = {}
                for rep_line in kept:
                    bands.update(dict.fromkeys(band_keys(reps[rep_line][0].reshape(1, -1))[0].tolist(), rep_line))
            reps[line] = (signatures[row], sketches[row], 0)
            mapping = dict.fromkeys(keys[row].tolist(), line)
            bands.update(mapping)
            added.update(mapping)
            out.append(None)
            if evicted:
                run(lines[row + 1 :], signatures[row + 1 :], keys[row + 1 :], sketches[row + 1 :])
                return

    for batch in batches:
        run(*batch)
    return out


@pytest.mark.parametrize("capacity", [7, 40, 20_000])
def test_bulk_near_duplicate_index_equals_the_one_at_a_time_rule(capacity: int) -> None:
    rng = np.random.default_rng(capacity)
    macros = [rng.integers(0, 3000, size=int(rng.integers(10, 80))).tolist() for _ in range(12)]
    batches, line = [], 1
    for _ in range(6):
        lines, flat, lengths = [], [], []
        for _ in range(int(rng.integers(20, 150))):
            if rng.random() < 0.6:  # a macro with a few words changed
                tokens = list(macros[int(rng.integers(len(macros)))])
                for _ in range(int(rng.integers(0, 4))):
                    tokens[int(rng.integers(len(tokens)))] = int(rng.integers(0, 3000))
            else:
                tokens = rng.integers(0, 3000, size=int(rng.integers(8, 60))).tolist()
            lines.append(line)
            line += 1
            flat += tokens
            lengths.append(len(tokens))
        rows, signatures, sketches = reply_sketches(flat, lengths)
        batches.append(([lines[i] for i in rows.tolist()], signatures, band_keys(signatures), sketches))
    index = NearDuplicateIndex(capacity=capacity)
    bulk = []
    for lines, signatures, keys, sketches in batches:
        bulk += [None if match is None else (match.line, match.similarity) for match in index.check_many(lines, signatures, keys, sketches)]
    assert bulk == _reference_near_duplicates(batches, capacity)
    assert sum(match is not None for match in bulk) > 20
    if capacity < 100:
        assert index.evictions > 0

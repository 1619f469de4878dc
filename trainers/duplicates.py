"""Exact and near-duplicate detection in bounded memory.

Exact duplicates: a 64-bit hash of each example's canonical JSON, first line kept, up to a cap.

Near duplicates ("macro" replies pasted with small edits): MinHash signatures of the assistant reply's
token trigrams (the token ids come free from token counting), banded for locality-sensitive hashing,
then confirmed by the signature agreement (an estimate of Jaccard similarity). Signatures are computed
a block of examples at a time with numpy. The index keeps at most ``capacity`` representative replies;
when full it forgets the ones nothing has matched yet (lossy counting), so replies that keep recurring,
which is what macros do, stay found while memory stays flat.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

__all__ = [
    "NUM_PERM",
    "BANDS",
    "MIN_SHINGLE_TOKENS",
    "minhash_signatures",
    "band_keys",
    "ExactDuplicates",
    "NearDuplicateIndex",
    "NearMatch",
]

NUM_PERM = 32
BANDS = 8
ROWS = NUM_PERM // BANDS
MIN_SHINGLE_TOKENS = 8  # replies shorter than this are flagged by short_assistant_reply instead
SAMPLE = 4  # power of two
_SHINGLE = 3
_MAX_BATCH_SHINGLES = 4096  # keeps the NUM_PERM × batch temporaries (1 MB) in cache: 4x faster than 64k

_rng = np.random.default_rng(20261101)
# Multiply-shift hashing: (a*x + b) mod 2^64, top 32 bits; odd multipliers.
_A = (_rng.integers(1, 2**63 - 1, size=NUM_PERM, dtype=np.uint64) << np.uint64(1)) | np.uint64(1)
_B = _rng.integers(0, 2**63 - 1, size=NUM_PERM, dtype=np.uint64)
_P = np.array([0x9E3779B97F4A7C15, 0xC2B2AE3D27D4EB4F, 0x165667B19E3779F9], dtype=np.uint64)
_BAND_MIX = (_rng.integers(1, 2**63 - 1, size=ROWS, dtype=np.uint64) << np.uint64(1)) | np.uint64(1)


def minhash_signatures(flat_tokens: Sequence[int], lengths: Sequence[int]) -> tuple[np.ndarray, np.ndarray]:
    """MinHash signatures (uint32, n×NUM_PERM) of the token-trigram sets of consecutive replies.

    ``flat_tokens`` holds the token ids of every reply back to back, ``lengths`` each reply's count.
    Only one trigram in ``1/SAMPLE`` (chosen by its hash, so the same trigrams everywhere) enters the
    sketch: the Jaccard estimate stays unbiased and the work drops accordingly.
    Returns (indices of the replies that got a signature, their signatures).
    """
    empty = (np.empty(0, dtype=np.int64), np.empty((0, NUM_PERM), dtype=np.uint32))
    if not lengths:
        return empty
    sizes = np.asarray(lengths, dtype=np.int64)
    flat = np.asarray(flat_tokens, dtype=np.uint64)
    if len(flat) < _SHINGLE:
        return empty
    with np.errstate(over="ignore"):
        shingles = flat[:-2] * _P[0] + flat[1:-1] * _P[1] + flat[2:] * _P[2]
        shingles ^= shingles >> np.uint64(29)
    owner = np.repeat(np.arange(len(sizes)), sizes)[: len(shingles)]
    ends = np.cumsum(sizes)
    # A trigram belongs to one reply: drop those that cross into the next, and short replies.
    keep = (owner == np.repeat(np.arange(len(sizes)), sizes)[2:]) & (sizes[owner] >= MIN_SHINGLE_TOKENS)
    keep &= (shingles & np.uint64(SAMPLE - 1)) == 0
    shingles = shingles[keep]
    owner = owner[keep]
    del ends
    if len(shingles) == 0:
        return empty
    rows, starts = np.unique(owner, return_index=True)
    signatures = np.empty((len(rows), NUM_PERM), dtype=np.uint32)
    # Slices of whole replies keep the temporary NUM_PERM × shingles matrix small.
    bounds = list(starts) + [len(shingles)]
    first = 0
    while first < len(rows):
        last = first + 1
        while last < len(rows) and bounds[last + 1] - bounds[first] <= _MAX_BATCH_SHINGLES:
            last += 1
        lo, hi = bounds[first], bounds[last]
        with np.errstate(over="ignore"):
            hashed = (_A[:, None] * shingles[None, lo:hi] + _B[:, None]) >> np.uint64(32)
        reduced = np.minimum.reduceat(hashed, np.asarray(bounds[first:last]) - lo, axis=1)
        signatures[first:last] = reduced.T.astype(np.uint32)
        first = last
    return rows.astype(np.int64), signatures


def band_keys(signatures: np.ndarray) -> np.ndarray:
    """One 64-bit key per band (shape n×BANDS); equal keys mean the band's rows all agree."""
    if len(signatures) == 0:
        return np.empty((0, BANDS), dtype=np.uint64)
    grouped = signatures.astype(np.uint64).reshape(len(signatures), BANDS, ROWS)
    with np.errstate(over="ignore"):
        keys = (grouped * _BAND_MIX).sum(axis=2, dtype=np.uint64)
        keys ^= np.arange(BANDS, dtype=np.uint64) * np.uint64(0x9E3779B97F4A7C15)
    return keys


class ExactDuplicates:
    """First line of each example hash; stops remembering new hashes after ``capacity`` (still matches old ones)."""

    def __init__(self, capacity: int = 1_000_000):
        self.capacity = capacity
        self._first_line: dict[int, int] = {}
        self.saturated = False

    def check(self, digest: int, line: int) -> int | None:
        """The earlier line with the same hash, or None (and remember this one)."""
        earlier = self._first_line.get(digest)
        if earlier is not None:
            return earlier
        if len(self._first_line) < self.capacity:
            self._first_line[digest] = line
        else:
            self.saturated = True
        return None


@dataclass(frozen=True, slots=True)
class NearMatch:
    line: int  # the earlier example whose reply is similar
    similarity: float  # estimated Jaccard similarity of the reply trigram sets


class NearDuplicateIndex:
    """LSH index of reply signatures with bounded size."""

    def __init__(self, threshold: float = 0.7, capacity: int = 20_000):
        self.threshold = threshold
        self.capacity = capacity
        self._min_same = math.ceil(threshold * NUM_PERM)
        self._bands: dict[int, int] = {}  # band key -> representative line
        self._reps: dict[int, list] = {}  # line -> [signature, band keys, matches]
        self.evictions = 0

    def __len__(self) -> int:
        return len(self._reps)

    def check(self, line: int, signature: np.ndarray, keys: Sequence[int]) -> NearMatch | None:
        """An earlier representative whose reply is similar above the threshold, else None (and index this reply)."""
        bands = self._bands
        reps = self._reps
        tried: list[int] = []
        for key in keys:
            candidate = bands.get(key)
            if candidate is None or candidate in tried:
                continue
            rep = reps.get(candidate)
            if rep is None:
                continue
            same = int(np.count_nonzero(rep[0] == signature))
            if same >= self._min_same:
                rep[2] += 1
                return NearMatch(candidate, same / NUM_PERM)
            tried.append(candidate)
        if len(reps) >= self.capacity:
            self._evict()
        reps[line] = [signature, keys, 0]
        for key in keys:
            bands.setdefault(key, line)
        return None

    def _evict(self) -> None:
        # Lossy counting: drop representatives nothing has matched; halve everyone's count so old
        # macros that stopped recurring eventually make room too.
        survivors: dict[int, list] = {}
        for line, (signature, keys, matches) in self._reps.items():
            if matches > 0:
                survivors[line] = [signature, keys, matches // 2]
        if len(survivors) >= self.capacity // 2:
            ranked = sorted(survivors.items(), key=lambda item: item[1][2], reverse=True)
            survivors = dict(ranked[: self.capacity // 2])
        self.evictions += len(self._reps) - len(survivors)
        self._reps = survivors
        self._bands = {}
        for line, (_, keys, _) in survivors.items():
            for key in keys:
                self._bands.setdefault(key, line)

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
_SHINGLE = 3
_MAX_BATCH_SHINGLES = 1 << 16

_rng = np.random.default_rng(20261101)
# Multiply-shift hashing: (a*x + b) mod 2^64, top 32 bits; odd multipliers.
_A = (_rng.integers(1, 2**63 - 1, size=NUM_PERM, dtype=np.uint64) << np.uint64(1)) | np.uint64(1)
_B = _rng.integers(0, 2**63 - 1, size=NUM_PERM, dtype=np.uint64)
_P = np.array([0x9E3779B97F4A7C15, 0xC2B2AE3D27D4EB4F, 0x165667B19E3779F9], dtype=np.uint64)
_BAND_MIX = (_rng.integers(1, 2**63 - 1, size=ROWS, dtype=np.uint64) << np.uint64(1)) | np.uint64(1)


def minhash_signatures(token_lists: Sequence[Sequence[int]]) -> tuple[np.ndarray, np.ndarray]:
    """MinHash signatures (uint32, shape n×NUM_PERM) of the token-trigram sets of each list.

    Returns (indices into ``token_lists`` that were long enough, signatures in that order).
    """
    keep = [index for index, tokens in enumerate(token_lists) if len(tokens) >= MIN_SHINGLE_TOKENS]
    if not keep:
        return np.empty(0, dtype=np.int64), np.empty((0, NUM_PERM), dtype=np.uint32)
    lengths = np.fromiter((len(token_lists[index]) for index in keep), dtype=np.int64, count=len(keep))
    flat = np.fromiter(
        (token for index in keep for token in token_lists[index]), dtype=np.uint64, count=int(lengths.sum())
    )
    # Trigram hash at every position, then drop the positions whose trigram crosses into the next reply.
    with np.errstate(over="ignore"):
        shingles = flat[:-2] * _P[0] + flat[1:-1] * _P[1] + flat[2:] * _P[2]
    ends = np.cumsum(lengths)
    starts = ends - lengths
    valid = np.ones(len(shingles), dtype=bool)
    for offset in (1, 2):
        boundary = ends[:-1] - offset
        valid[boundary[boundary < len(valid)]] = False
    shingles = shingles[valid]
    counts = lengths - (_SHINGLE - 1)
    shingle_starts = np.concatenate(([0], np.cumsum(counts)[:-1]))
    signatures = np.empty((len(keep), NUM_PERM), dtype=np.uint32)
    # Work in slices of whole replies so the temporary NUM_PERM × shingles matrix stays small.
    first = 0
    while first < len(keep):
        last = first + 1
        budget = counts[first]
        while last < len(keep) and budget + counts[last] <= _MAX_BATCH_SHINGLES:
            budget += counts[last]
            last += 1
        lo = shingle_starts[first]
        hi = lo + budget
        with np.errstate(over="ignore"):
            hashed = (_A[:, None] * shingles[None, lo:hi] + _B[:, None]) >> np.uint64(32)
        reduced = np.minimum.reduceat(hashed, shingle_starts[first:last] - lo, axis=1)
        signatures[first:last] = reduced.T.astype(np.uint32)
        first = last
    del starts
    return np.asarray(keep, dtype=np.int64), signatures


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
        self._bands: dict[int, int] = {}  # band key -> representative line
        self._reps: dict[int, tuple[np.ndarray, list[int], int]] = {}  # line -> (signature, band keys, matches)
        self.evictions = 0

    def __len__(self) -> int:
        return len(self._reps)

    def check(self, line: int, signature: np.ndarray, keys: Sequence[int]) -> NearMatch | None:
        """The most similar earlier representative above the threshold, else None (and index this reply)."""
        best: NearMatch | None = None
        tried: set[int] = set()
        bands = self._bands
        for key in keys:
            candidate = bands.get(key)
            if candidate is None or candidate in tried:
                continue
            tried.add(candidate)
            rep = self._reps.get(candidate)
            if rep is None:
                continue
            similarity = float(np.count_nonzero(rep[0] == signature)) / NUM_PERM
            if similarity >= self.threshold and (best is None or similarity > best.similarity):
                best = NearMatch(candidate, similarity)
        if best is not None:
            signature_rep, rep_keys, matches = self._reps[best.line]
            self._reps[best.line] = (signature_rep, rep_keys, matches + 1)
            return best
        if len(self._reps) >= self.capacity:
            self._evict()
        key_list = [int(key) for key in keys]
        self._reps[line] = (signature.copy(), key_list, 0)
        for key in key_list:
            bands.setdefault(key, line)
        return None

    def _evict(self) -> None:
        # Lossy counting: drop representatives nothing has matched; halve everyone's count so old
        # macros that stopped recurring eventually make room too.
        survivors: dict[int, tuple[np.ndarray, list[int], int]] = {}
        for line, (signature, keys, matches) in self._reps.items():
            if matches > 0:
                survivors[line] = (signature, keys, matches // 2)
        if len(survivors) >= self.capacity // 2:
            ranked = sorted(survivors.items(), key=lambda item: item[1][2], reverse=True)
            survivors = dict(ranked[: self.capacity // 2])
        self.evictions += len(self._reps) - len(survivors)
        self._reps = survivors
        self._bands = {}
        for line, (_, keys, _) in survivors.items():
            for key in keys:
                self._bands.setdefault(key, line)

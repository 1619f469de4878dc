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
from itertools import repeat

import numpy as np

__all__ = [
    "NUM_PERM",
    "BANDS",
    "MIN_SHINGLE_TOKENS",
    "minhash_signatures",
    "reply_sketches",
    "sketch_jaccard",
    "pair_similarities",
    "band_keys",
    "ExactDuplicates",
    "NearDuplicateIndex",
    "NearMatch",
]

NUM_PERM = 32
BANDS = 8
ROWS = NUM_PERM // BANDS
MIN_SHINGLE_TOKENS = 8  # replies shorter than this are flagged by short_assistant_reply instead
SAMPLE = 1  # power of two; 1 = every trigram (sampling made short replies' estimates too noisy)
SKETCH_SIZE = 128  # trigram hashes kept per reply to confirm a near duplicate
_SHINGLE = 3
_MAX_PAIRS = 1 << 15  # pair index in the top 16 bits of a sketch value
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
    Returns (indices of the replies that got a signature, their signatures).
    """
    rows, signatures, _ = reply_sketches(flat_tokens, lengths)
    return rows, signatures


def reply_sketches(flat_tokens: Sequence[int], lengths: Sequence[int]) -> tuple[np.ndarray, np.ndarray, list[bytes]]:
    """MinHash signatures for finding candidates, plus each reply's bottom-``SKETCH_SIZE`` trigram hashes
    (sorted uint64 bytes) for checking them: exact Jaccard for replies up to ~SKETCH_SIZE tokens, a
    bottom-k estimate (error ~0.04) above. MinHash with 32 values alone is too noisy (±0.09) to be trusted.
    """
    empty: tuple[np.ndarray, np.ndarray, list[bytes]] = (np.empty(0, dtype=np.int64), np.empty((0, NUM_PERM), dtype=np.uint32), [])
    if not lengths:
        return empty
    sizes = np.asarray(lengths, dtype=np.int64)
    if isinstance(flat_tokens, list):
        flat = np.fromiter(flat_tokens, dtype=np.uint64, count=len(flat_tokens))  # ~40% faster than asarray
    else:
        flat = np.asarray(flat_tokens, dtype=np.uint64)
    if len(flat) < _SHINGLE:
        return empty
    with np.errstate(over="ignore"):
        shingles = flat[:-2] * _P[0] + flat[1:-1] * _P[1] + flat[2:] * _P[2]
        shingles ^= shingles >> np.uint64(29)
    owner_of_token = np.repeat(np.arange(len(sizes)), sizes)
    owner = owner_of_token[: len(shingles)]
    # A trigram belongs to one reply: drop those that cross into the next, and short replies.
    keep = (owner == owner_of_token[2:]) & (sizes[owner] >= MIN_SHINGLE_TOKENS)
    if SAMPLE > 1:
        keep &= (shingles & np.uint64(SAMPLE - 1)) == 0
    shingles = shingles[keep]
    owner = owner[keep]
    if len(shingles) == 0:
        return empty
    starts = np.flatnonzero(np.diff(owner, prepend=-1))  # owners are sorted: np.unique without its sort
    rows = owner[starts]
    signatures = np.empty((len(rows), NUM_PERM), dtype=np.uint32)
    # Slices of whole replies keep the temporary NUM_PERM × shingles matrix small. The hash is
    # ((a*x + b) mod 2^64) >> 32; the shift is monotone, so it is applied to the 32 minima only, and the
    # products are written into one reused buffer (same values as the plain expression, fewer passes).
    bounds = starts.tolist() + [len(shingles)]
    buffer = np.empty((NUM_PERM, _MAX_BATCH_SHINGLES), dtype=np.uint64)
    a_column, b_column = _A[:, None], _B[:, None]
    first = 0
    while first < len(rows):
        last = first + 1
        while last < len(rows) and bounds[last + 1] - bounds[first] <= _MAX_BATCH_SHINGLES:
            last += 1
        lo, hi = bounds[first], bounds[last]
        hashed = buffer[:, : hi - lo] if hi - lo <= _MAX_BATCH_SHINGLES else np.empty((NUM_PERM, hi - lo), dtype=np.uint64)
        np.multiply(a_column, shingles[None, lo:hi], out=hashed)
        np.add(hashed, b_column, out=hashed)
        reduced = np.minimum.reduceat(hashed, np.asarray(bounds[first:last]) - lo, axis=1)
        reduced >>= np.uint64(32)
        signatures[first:last] = reduced.T
        first = last
    # Bottom-k sets: one sort of (reply, hash) keys, duplicates dropped, the k smallest of each reply kept.
    keys = np.sort((owner.astype(np.uint64) << np.uint64(48)) | (shingles >> np.uint64(16)))
    distinct = np.ones(len(keys), dtype=bool)
    distinct[1:] = keys[1:] != keys[:-1]
    keys = keys[distinct]
    owners = (keys >> np.uint64(48)).astype(np.int64)
    values = (keys & np.uint64((1 << 48) - 1)).tobytes()
    first_of = np.searchsorted(owners, rows)
    ends = np.minimum(np.append(first_of[1:], len(owners)), first_of + SKETCH_SIZE)
    sketches = [values[start:end] for start, end in zip((first_of * 8).tolist(), (ends * 8).tolist(), strict=True)]
    return rows.astype(np.int64), signatures, sketches


def sketch_jaccard(first: bytes, second: bytes) -> float:
    """Jaccard similarity of two replies from their bottom-k sketches (exact when both are small)."""
    return _bottom_k_jaccard(set(np.frombuffer(first, dtype=np.uint64).tolist()), set(np.frombuffer(second, dtype=np.uint64).tolist()))


def pair_similarities(first: Sequence[bytes], second: Sequence[bytes]) -> np.ndarray:
    """``sketch_jaccard(first[i], second[i])`` for every i, computed in bulk (float64, the same values):
    both sketches tagged with the pair's index, sorted together; equal neighbours are shared hashes."""
    count = len(first)
    result = np.empty(count, dtype=np.float64)
    for lo in range(0, count, _MAX_PAIRS):
        hi = min(count, lo + _MAX_PAIRS)
        result[lo:hi] = _pair_similarities(first[lo:hi], second[lo:hi])
    return result


def _pair_similarities(first: Sequence[bytes], second: Sequence[bytes]) -> np.ndarray:
    count = len(first)
    sizes_a = np.fromiter(map(len, first), dtype=np.int64, count=count) // 8
    sizes_b = np.fromiter(map(len, second), dtype=np.int64, count=count) // 8
    pairs = np.arange(count, dtype=np.uint64) << np.uint64(48)  # sketch values are below 2**48
    keys = np.concatenate((
        np.frombuffer(b"".join(first), dtype=np.uint64) | np.repeat(pairs, sizes_a),
        np.frombuffer(b"".join(second), dtype=np.uint64) | np.repeat(pairs, sizes_b),
    ))
    keys.sort()
    repeat_of_previous = keys[1:] == keys[:-1]  # each sketch holds distinct values: a repeat is shared
    distinct = np.ones(len(keys), dtype=bool)
    distinct[1:] = ~repeat_of_previous
    shared = np.zeros(len(keys), dtype=bool)
    shared[:-1] = repeat_of_previous
    shared = shared[distinct]
    owner = (keys[distinct] >> np.uint64(48)).astype(np.int64)
    rank = np.arange(len(owner)) - np.searchsorted(owner, np.arange(count))[owner]
    union = np.minimum(np.bincount(owner, minlength=count), SKETCH_SIZE)
    shared_all = np.bincount(owner[shared], minlength=count)
    shared_bottom = np.bincount(owner[shared & (rank < SKETCH_SIZE)], minlength=count)
    complete = (sizes_a < SKETCH_SIZE) & (sizes_b < SKETCH_SIZE)
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.where(complete, shared_all / (sizes_a + sizes_b - shared_all), shared_bottom / union)


def _bottom_k_jaccard(a: set[int], b: set[int]) -> float:
    union = sorted(a | b)[:SKETCH_SIZE]
    if not union:
        return 0.0
    both = a & b
    return sum(1 for value in union if value in both) / len(union)


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
    """First line of each example hash, in ~12 bytes per example.

    Recent hashes live in a dict; when it grows past a quarter of the archive they move into sorted numpy
    arrays (hash, line) searched in bulk. After ``capacity`` examples new hashes are no longer remembered
    (earlier ones still match) and ``saturated`` is set.
    """

    def __init__(self, capacity: int = 4_000_000):
        self.capacity = capacity
        self._recent: dict[int, int] = {}
        self._keys = np.empty(0, dtype=np.uint64)
        self._lines = np.empty(0, dtype=np.int64)
        self.saturated = False

    def __len__(self) -> int:
        return len(self._recent) + len(self._keys)

    def check(self, digest: int, line: int) -> int | None:
        """The earlier line with the same hash, or None (and remember this one)."""
        return self.check_many([digest], [line]).get(0)

    def check_many(self, digests: Sequence[int], lines: Sequence[int]) -> dict[int, int]:
        """{index in ``digests``: earlier line} for the duplicates among them (earlier = before, or earlier in the list)."""
        found: dict[int, int] = {}
        archived: list[int] | None = None
        if len(self._keys):
            wanted = np.asarray(digests, dtype=np.uint64)
            slots = np.minimum(np.searchsorted(self._keys, wanted), len(self._keys) - 1)
            hits = np.flatnonzero(self._keys[slots] == wanted)
            if len(hits):
                archived = [-1] * len(digests)
                for index, slot in zip(hits.tolist(), slots[hits].tolist(), strict=True):
                    archived[index] = int(self._lines[slot])
        recent = self._recent
        room = self.capacity - len(self)
        for index, (digest, line) in enumerate(zip(digests, lines, strict=True)):
            earlier = archived[index] if archived is not None else -1
            if earlier < 0:
                earlier = recent.get(digest, -1)
            if earlier >= 0:
                found[index] = earlier
            elif room > 0:
                recent[digest] = line
                room -= 1
            else:
                self.saturated = True
        if len(recent) >= max(65536, len(self._keys) // 4):
            self._compact()
        return found

    def _compact(self) -> None:
        keys = np.concatenate((self._keys, np.fromiter(self._recent.keys(), dtype=np.uint64, count=len(self._recent))))
        lines = np.concatenate((self._lines, np.fromiter(self._recent.values(), dtype=np.int64, count=len(self._recent))))
        order = np.argsort(keys, kind="stable")
        self._keys, self._lines = keys[order], lines[order]
        self._recent = {}


@dataclass(frozen=True, slots=True)
class NearMatch:
    line: int  # the earlier example whose reply is similar
    similarity: float  # estimated Jaccard similarity of the reply trigram sets


class NearDuplicateIndex:
    """LSH index of reply signatures with bounded size (``capacity`` representatives)."""

    def __init__(self, threshold: float = 0.7, capacity: int = 20_000):
        self.threshold = threshold
        self.capacity = capacity
        # MinHash agreement only nominates candidates (generously); bottom-k sketches confirm them.
        self.min_agreement = math.ceil(max(threshold - 0.15, 0.0) * NUM_PERM)
        self._bands: dict[int, int] = {}  # band key -> slot of the representative that last had it
        self._size = 0  # representatives live in slots 0 .. _size-1, in the order they were added
        self._matrix = np.zeros((capacity, NUM_PERM), dtype=np.uint32)  # representatives' signatures
        self._matches = np.zeros(capacity, dtype=np.int64)
        self._line_of = [0] * capacity  # slot -> representative line
        self._sketch_of: list[bytes] = [b""] * capacity  # slot -> bottom-k sketch
        self.evictions = 0

    def __len__(self) -> int:
        return self._size

    def check(self, line: int, signature: np.ndarray, keys: Sequence[int], sketch: bytes) -> NearMatch | None:
        """The most similar earlier representative at or above the threshold, else None (and index this reply)."""
        return self.check_many([line], signature.reshape(1, NUM_PERM), np.asarray(keys, dtype=np.uint64).reshape(1, BANDS), [sketch])[0]

    def check_many(
        self, lines: Sequence[int], signatures: np.ndarray, keys: np.ndarray | Sequence[Sequence[int]], sketches: Sequence[bytes]
    ) -> list[NearMatch | None]:
        """``check`` for consecutive replies (``keys``: their ``band_keys``, n×BANDS).

        Each reply is compared with the representatives that share a band key with it: those indexed
        before this call (looked up and compared in bulk), then those added by earlier replies of this
        call (the latest one per key). Nominees whose MinHash agreement is high enough are confirmed with
        the bottom-k sketches; a reply that matches none becomes a representative itself.
        """
        count = len(lines)
        if count == 0:
            return []
        key_matrix = np.asarray(keys, dtype=np.uint64).reshape(count, BANDS)
        flat_keys = key_matrix.ravel()
        minimum = self.min_agreement
        threshold = self.threshold
        # 1. Representatives indexed before this call: bulk lookup, candidates in band order without repeats.
        bands = self._bands
        found = np.fromiter(map(bands.get, flat_keys.tolist(), repeat(-1)), dtype=np.int64, count=count * BANDS).reshape(count, BANDS)
        usable = found >= 0
        for band in range(1, BANDS):
            for earlier in range(band):
                usable[:, band] &= found[:, band] != found[:, earlier]
        pair_rows, pair_bands = np.nonzero(usable)
        nominated: dict[int, list[tuple[int, float]]] = {}  # row -> (slot, sketch similarity) of earlier representatives
        if len(pair_rows):
            pair_slots = found[pair_rows, pair_bands]
            agreement = np.count_nonzero(self._matrix[pair_slots] == signatures[pair_rows], axis=1)
            strong = agreement >= minimum
            strong_rows, strong_slots = pair_rows[strong].tolist(), pair_slots[strong].tolist()
            similarities = pair_similarities(
                [sketches[row] for row in strong_rows], [self._sketch_of[slot] for slot in strong_slots]
            ).tolist()
            for row, rep_slot, value in zip(strong_rows, strong_slots, similarities, strict=True):
                nominated.setdefault(row, []).append((rep_slot, value))
        # 2. Representatives added by earlier replies of this call. For a key of this reply, that is the
        #    latest earlier reply with the same key that became a representative: walk back through the
        #    earlier occurrences of the key (``previous``: flat position of the last one, -1 for none).
        #    Almost every reply becomes a representative, so the candidate is nearly always the previous
        #    occurrence itself: its MinHash agreement is computed in bulk, and a reply none of whose
        #    previous occurrences agrees enough (and all of which are representatives) needs no lookup.
        order = np.argsort(flat_keys, kind="stable")
        same = flat_keys[order[1:]] == flat_keys[order[:-1]]
        previous = np.full(count * BANDS, -1, dtype=np.int64)
        previous[order[1:][same]] = order[:-1][same]
        entry_positions = np.flatnonzero(previous >= 0)
        entry_rows = entry_positions // BANDS
        entry_previous_rows = previous[entry_positions] // BANDS
        entry_agreement = np.count_nonzero(signatures[entry_rows] == signatures[entry_previous_rows], axis=1)
        needs_walk = np.zeros(count, dtype=bool)
        needs_walk[entry_rows[(entry_agreement >= minimum) | (entry_previous_rows == entry_rows)]] = True
        close = np.flatnonzero((entry_agreement >= minimum) & (entry_previous_rows != entry_rows))
        close_rows, close_earlier = entry_rows[close].tolist(), entry_previous_rows[close].tolist()
        in_call_similarity = dict(zip(zip(close_rows, close_earlier, strict=True), pair_similarities(
            [sketches[row] for row in close_rows], [sketches[row] for row in close_earlier]).tolist(), strict=True))
        # Entries are in row order: a row's entries are one slice, turned into tuples only for the rows that
        # need them (close to an earlier reply, or whose earlier reply turned out not to be a representative).
        entry_bounds = np.searchsorted(entry_rows, np.arange(count + 1)).tolist()
        entry_columns = (entry_positions.tolist(), entry_previous_rows.tolist(), entry_agreement.tolist())
        walk_rows = set(np.flatnonzero(needs_walk).tolist())
        # 3. One reply at a time: confirm nominees, or add the reply as a representative.
        slot_of_row: dict[int, int] = {}  # rows of this call that became representatives -> slot
        new_rows: list[int] = []
        self._matches[self._size :] = 0
        results: list[NearMatch | None] = []
        for row in range(count):
            slots = nominated.get(row, [])
            if row in walk_rows:
                chosen: list[int] = []
                lo, hi = entry_bounds[row], entry_bounds[row + 1]
                for position, earlier_row, agreement in zip(*(column[lo:hi] for column in entry_columns), strict=True):
                    if earlier_row not in slot_of_row:
                        # Not a representative: the latest earlier occurrence that is one, if any.
                        walk = int(previous[position])
                        while walk >= 0 and walk // BANDS not in slot_of_row:
                            walk = int(previous[walk])
                        if walk < 0:
                            continue
                        earlier_row = walk // BANDS
                        agreement = int(np.count_nonzero(signatures[earlier_row] == signatures[row]))
                    if agreement >= minimum and earlier_row not in chosen:
                        chosen.append(earlier_row)
                slots = slots + [
                    (slot_of_row[earlier_row], in_call_similarity[(row, earlier_row)] if (row, earlier_row) in in_call_similarity
                     else float(pair_similarities([sketches[row]], [sketches[earlier_row]])[0]))
                    for earlier_row in chosen
                ]
            best = None
            for rep_slot, value in slots:
                if value >= threshold and (best is None or value > best[0]):
                    best = (value, rep_slot)
            if best is not None:
                self._matches[best[1]] += 1
                results.append(NearMatch(self._line_of[best[1]], best[0]))
                # Later replies whose previous occurrence of a key is this one must look further back.
                walk_rows.update(entry_rows[entry_previous_rows == row].tolist())
                continue
            evicted = self._size >= self.capacity
            if evicted:
                self._store(new_rows, signatures, key_matrix, slot_of_row)
                new_rows, slot_of_row = [], {}
                self._evict()
            position = self._size
            self._size += 1
            self._line_of[position] = lines[row]
            self._sketch_of[position] = sketches[row]
            slot_of_row[row] = position
            new_rows.append(row)
            results.append(None)
            if evicted:
                self._store(new_rows, signatures, key_matrix, slot_of_row)
                if row + 1 < count:
                    # Slots were renumbered: check the remaining replies against the new state.
                    results.extend(self.check_many(lines[row + 1 :], signatures[row + 1 :], key_matrix[row + 1 :], sketches[row + 1 :]))
                return results
        self._store(new_rows, signatures, key_matrix, slot_of_row)
        return results

    def _store(self, new_rows: list[int], signatures: np.ndarray, key_matrix: np.ndarray, slot_of_row: dict[int, int]) -> None:
        """Write the signatures and band keys of the representatives added by one ``check_many`` call."""
        if not new_rows:
            return
        slots = [slot_of_row[row] for row in new_rows]
        self._matrix[slots] = signatures[new_rows]
        # Later rows overwrite earlier ones for the same key, as one-by-one updates would.
        self._bands.update(zip(key_matrix[new_rows].ravel().tolist(), np.repeat(slots, BANDS).tolist(), strict=True))

    def _evict(self) -> None:
        # Lossy counting: drop representatives nothing has matched; halve everyone's count so old
        # macros that stopped recurring eventually make room too.
        size = self._size
        counts = self._matches[:size]
        keep = np.flatnonzero(counts > 0)
        if len(keep) > self.capacity // 2:
            keep = keep[np.argsort(-counts[keep], kind="stable")[: self.capacity // 2]]
        keep.sort()
        kept = keep.tolist()
        survivors = [self._line_of[index] for index in kept]
        sketches = [self._sketch_of[index] for index in kept]
        matrix = self._matrix[keep].copy()
        matches = counts[keep] // 2
        self.evictions += size - len(survivors)
        self._size = len(survivors)
        self._matrix[: len(survivors)] = matrix
        self._matches[: len(survivors)] = matches
        self._matches[len(survivors) :] = 0
        self._line_of[: len(survivors)] = survivors
        self._sketch_of[: len(survivors)] = sketches
        self._bands = {}
        for position, row_keys in enumerate(band_keys(matrix).tolist()):
            self._bands.update(dict.fromkeys(row_keys, position))

"""The report's pass over its source: a file's blocks, analysed in worker processes when the file is big.

Small files are analysed in this process; a big file is read block by block and each block analysed by a
pool of processes (one per core, at most 4), with a bounded read-ahead so memory holds a few blocks
whatever the file's size. Items (e.g. examples from the database) are analysed here in batches. Every
``AnalyzedBlock`` goes to the ``BlockMerger`` in order.
"""

from __future__ import annotations

import multiprocessing
import os
import threading
from collections import deque
from collections.abc import Callable, Iterable
from concurrent.futures import ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from pathlib import Path
from typing import Any

from storage.errors import FtbotError
from trainers.data.analysis import AnalyzedBlock, LineAnalyzer
from trainers.data.issues import Issue
from trainers.data.jsonl import iter_blocks
from trainers.data.merge import BlockMerger
from trainers.data.tokens import encoding_for_model

__all__ = ["analyze_file", "analyze_items", "analyze_block_in_worker", "PARALLEL_MIN_BYTES", "BLOCK_BYTES"]

PARALLEL_MIN_BYTES = 4 * 1024 * 1024  # smaller files are analysed in this process: starting workers costs more
BLOCK_BYTES = 1 << 20  # bytes read (and sent to a worker) at a time
_ITEM_BATCH = 1024


def analyze_file(
    path: Path,
    model: str,
    kind: str,
    pii: bool,
    workers: int | None,
    merger: BlockMerger,
    progress: Callable[[int, int], None] | None,
    context_limit: int,
    max_line_bytes: int,
) -> int:
    """Analyse the JSONL file at ``path`` block by block into ``merger``; returns the number of processes used.

    ``progress(done, total)`` gets bytes. Invalid UTF-8 stops the pass at that line (``InvalidUtf8``).
    """
    try:
        size = path.stat().st_size
    except OSError:
        size = 0  # iter_blocks raises the clear error
    wanted = workers if workers is not None else min(os.cpu_count() or 1, 4)
    done = 0
    blocks = iter_blocks(path, block_size=BLOCK_BYTES, max_line_bytes=max_line_bytes)
    if wanted <= 1 or size < PARALLEL_MIN_BYTES:
        analyzer = LineAnalyzer(model, kind, pii, str(path), context_limit)
        for first_line, block in blocks:
            _merge(merger, analyzer.analyze_block(first_line, block))
            done += len(block)
            if progress:
                progress(done, size)
        return 1
    context = _pool_context()
    if context.get_start_method() == "fork":
        encoding_for_model(model)  # forked workers share the parent's loaded encoding instead of loading it each
    with ProcessPoolExecutor(
        max_workers=wanted, mp_context=context, initializer=_init_worker, initargs=(model, kind, pii, str(path), context_limit)
    ) as pool:
        pending: deque[tuple[Any, int]] = deque()
        try:
            for first_line, block in blocks:
                pending.append((pool.submit(analyze_block_in_worker, first_line, block), len(block)))
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


def _drain_one(pending: deque[tuple[Any, int]], merger: BlockMerger) -> int:
    future, size = pending.popleft()
    _merge(merger, future.result())
    return size


def _merge(merger: BlockMerger, block: AnalyzedBlock) -> None:
    merger.add(block)
    if block.failure is not None:
        raise block.failure


def analyze_items(
    items: Iterable[Any], model: str, kind: str, pii: bool, merger: BlockMerger, progress: Callable[[int, int], None] | None,
    context_limit: int,
) -> None:
    """Analyse ``(line, value)`` or ``(line, value, issue)`` items into ``merger`` in batches, in this process."""
    analyzer = LineAnalyzer(model, kind, pii, "items", context_limit)
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


_WORKER: LineAnalyzer | None = None  # this worker process's analyzer, made once by the pool's initializer


def _init_worker(model: str, kind: str, pii: bool, source: str, context_limit: int) -> None:
    global _WORKER
    _WORKER = LineAnalyzer(model, kind, pii, source, context_limit)


def analyze_block_in_worker(first_line: int, block: bytes) -> AnalyzedBlock:
    """The task a pool worker runs for one block (module-level, so the pool can pickle it by name)."""
    assert _WORKER is not None
    return _WORKER.analyze_block(first_line, block)


def _pool_context() -> multiprocessing.context.BaseContext:
    # fork starts workers at once, but is only safe in a single-threaded process; the Slack bot
    # (thread pools) gets forkserver.
    methods = multiprocessing.get_all_start_methods()
    if "fork" in methods and threading.active_count() == 1:
        return multiprocessing.get_context("fork")
    return multiprocessing.get_context("forkserver" if "forkserver" in methods else "spawn")

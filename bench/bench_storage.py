"""Import and export throughput of the example store, on SQLite and PostgreSQL.

    .venv/bin/python bench/bench_storage.py            # 100k examples (a few minutes on 2 cores)
    .venv/bin/python bench/bench_storage.py --quick    # 10k examples
    .venv/bin/python bench/bench_storage.py --rows 50000 --backends sqlite

Measured in the same run, on fresh databases:
- import (bulk): ``storage.examples.import_records`` — content-hash dedup with one ``IN (...)`` lookup and one
  executemany INSERT per 1,000 rows, one transaction.
- import (naive baseline): the straightforward version of the same semantics — per row, look the hash up with
  a SELECT, then ``session.add(Example(...))`` one ORM object at a time (autoflush turns each into its own INSERT).
  Run on ``--baseline-rows`` rows (default 10% of --rows, at least 2,000): its rate per row is flat.
- re-import: the same rows again (all duplicates: nothing added).
- file import: ``trainers.data.imports.import_file`` — read + validate every line (``trainers.data.validate``, PII scan
  included) + bulk store: what ``ftbot import`` does.
- export (stream): ``iter_records`` (``yield_per``) to JSONL vs export (naive): load every ORM object, then write.
PostgreSQL runs on the server in ``FTBOT_TEST_POSTGRES_URL`` (default the local test server) in a throwaway
database; it is skipped with a note when unreachable.
"""

from __future__ import annotations

import argparse
import os
import random
import secrets
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from sqlalchemy import create_engine, select, text  # noqa: E402

from storage.db import Database  # noqa: E402
from storage.examples import example_record, import_records, iter_records  # noqa: E402
from storage.exports import write_jsonl  # noqa: E402
from storage.models import Example, utcnow  # noqa: E402
from storage.records import content_hash, sft_record  # noqa: E402
from storage.vocabulary import ExampleStatus
from trainers.data.imports import import_file  # noqa: E402

DEFAULT_ADMIN_URL = "postgresql+psycopg://postgres@127.0.0.1:5432/test"
TOPICS = ["password reset", "refund", "invoice", "shipping delay", "API key", "SSO login", "plan upgrade", "data export"]


def make_records(count: int, seed: int = 7) -> list[dict[str, Any]]:
    """Support conversations of ~600-900 characters, all distinct."""
    rng = random.Random(seed)
    records = []
    for i in range(count):
        topic = rng.choice(TOPICS)
        question = f"Hi, ticket #{i}: I have a problem with my {topic}. " + " ".join(
            rng.choice(["It fails", "since Monday", "on the web app", "with error 502", "for my whole team", "again"])
            for _ in range(rng.randint(6, 14))
        )
        answer = f"Thanks for reaching out about your {topic}. " + " ".join(
            rng.choice(["Please open Settings", "then Billing", "and click Retry", "I have reset it for you", "it can take 5 minutes",
                        "let me know if it persists"])
            for _ in range(rng.randint(8, 20))
        )
        records.append({"messages": [
            {"role": "system", "content": "You are Acme's friendly support assistant."},
            {"role": "user", "content": question},
            {"role": "assistant", "content": answer},
        ]})
    return records


def naive_import(db: Database, items: list[tuple[int, dict[str, Any]]]) -> int:
    """Baseline: one SELECT and one ORM object per row (same dedup semantics as import_records)."""
    added = 0
    with db.session() as session:
        for line, record in items:
            normalized = sft_record(record["messages"], record.get("tools"), record.get("parallel_tool_calls"))
            digest = content_hash(normalized)
            if session.scalar(select(Example.id).where(Example.content_hash == digest)) is not None:
                continue
            now = utcnow()
            session.add(Example(
                content_hash=digest, messages=normalized["messages"], status=ExampleStatus.APPROVED,
                source_kind="import", source_file="bench.jsonl", source_line=line, approved_by="bench",
                approved_at=now, created_at=now, updated_at=now,
            ))
            added += 1
    return added


def naive_export(db: Database, out: Path) -> int:
    with db.session() as session:
        examples = list(session.scalars(select(Example).where(Example.status == ExampleStatus.APPROVED).order_by(Example.id)))
    with out.open("w", encoding="utf-8") as handle:
        return write_jsonl((example_record(example) for example in examples), handle)


def stream_export(db: Database, out: Path) -> int:
    with out.open("w", encoding="utf-8") as handle:
        return write_jsonl((record for _, record in iter_records(db)), handle)


def timed(action: Callable[[], int]) -> tuple[int, float]:
    start = time.perf_counter()
    rows = action()
    return rows, time.perf_counter() - start


class Backend:
    def __init__(self, name: str, new_url: Callable[[], str], cleanup: Callable[[], None]):
        self.name, self.new_url, self.cleanup = name, new_url, cleanup


def sqlite_backend(workdir: Path) -> Backend:
    counter = iter(range(1_000_000))
    return Backend("sqlite", lambda: f"sqlite:///{workdir / f'bench{next(counter)}.sqlite3'}", lambda: None)


def postgres_backend(admin_url: str) -> Backend | None:
    try:
        admin = create_engine(admin_url, isolation_level="AUTOCOMMIT")
        with admin.connect() as connection:
            connection.execute(text("SELECT 1"))
    except Exception as error:  # noqa: BLE001
        print(f"note: PostgreSQL skipped ({admin_url} unreachable: {error.__class__.__name__})", file=sys.stderr)
        return None
    created: list[str] = []

    def new_url() -> str:
        name = f"ftbot_bench_{os.getpid()}_{secrets.token_hex(3)}"
        with admin.connect() as connection:
            connection.execute(text(f'CREATE DATABASE "{name}"'))
        created.append(name)
        return admin.url.set(database=name).render_as_string(hide_password=False)

    def cleanup() -> None:
        with admin.connect() as connection:
            for name in created:
                connection.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        admin.dispose()

    return Backend("postgres", new_url, cleanup)


def run_backend(backend: Backend, records: list[dict[str, Any]], baseline_rows: int, jsonl: Path, workdir: Path) -> list[tuple]:
    items = list(enumerate(records, start=1))
    results: list[tuple] = []

    # Naive baseline import on its own fresh database.
    db = Database.open(backend.new_url())
    rows, seconds = timed(lambda: naive_import(db, items[:baseline_rows]))
    naive_rate = rows / seconds
    results.append((backend.name, "import (naive ORM, per-row)", rows, seconds, naive_rate, 1.0))
    db.close()

    db = Database.open(backend.new_url())
    rows, seconds = timed(lambda: import_records(db, items, source_file="bench.jsonl", approved_by="bench").added)
    results.append((backend.name, "import (bulk, import_records)", rows, seconds, rows / seconds, rows / seconds / naive_rate))
    rows, seconds = timed(lambda: import_records(db, items, source_file="bench.jsonl", approved_by="bench").unchanged)
    results.append((backend.name, "re-import (all duplicates)", rows, seconds, rows / seconds, rows / seconds / naive_rate))

    rows, seconds = timed(lambda: naive_export(db, workdir / "naive.jsonl"))
    naive_export_rate = rows / seconds
    results.append((backend.name, "export (naive: load all ORM)", rows, seconds, naive_export_rate, 1.0))
    rows, seconds = timed(lambda: stream_export(db, workdir / "stream.jsonl"))
    results.append((backend.name, "export (stream, yield_per)", rows, seconds, rows / seconds, rows / seconds / naive_export_rate))
    assert (workdir / "stream.jsonl").read_bytes() == (workdir / "naive.jsonl").read_bytes() == jsonl.read_bytes()
    db.close()

    db = Database.open(backend.new_url())
    rows, seconds = timed(lambda: import_file(db, jsonl, approved_by="bench").examples.added)
    results.append((backend.name, "file import (validate+store)", rows, seconds, rows / seconds, rows / seconds / naive_rate))
    db.close()
    return results


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rows", type=int, default=100_000)
    parser.add_argument("--quick", action="store_true", help="10,000 rows")
    parser.add_argument("--baseline-rows", type=int, default=None)
    parser.add_argument("--backends", default="sqlite,postgres")
    parser.add_argument("--postgres-url", default=os.environ.get("FTBOT_TEST_POSTGRES_URL", DEFAULT_ADMIN_URL))
    args = parser.parse_args(argv)
    count = 10_000 if args.quick else args.rows
    baseline_rows = min(count, args.baseline_rows or max(2_000, count // 10))

    records = make_records(count)
    with tempfile.TemporaryDirectory(prefix="ftbot-bench-") as tmp:
        workdir = Path(tmp)
        jsonl = workdir / "bench.jsonl"
        with jsonl.open("w", encoding="utf-8") as handle:
            write_jsonl(records, handle)
        size_mb = jsonl.stat().st_size / 1e6
        print(f"{count:,} examples, {size_mb:.1f} MB of JSONL; naive import baseline on {baseline_rows:,} rows\n")

        backends: list[Backend] = []
        wanted = {name.strip() for name in args.backends.split(",")}
        if "sqlite" in wanted:
            backends.append(sqlite_backend(workdir))
        if "postgres" in wanted and (pg := postgres_backend(args.postgres_url)) is not None:
            backends.append(pg)

        rows_out: list[tuple] = []
        for backend in backends:
            try:
                rows_out += run_backend(backend, records, baseline_rows, jsonl, workdir)
            finally:
                backend.cleanup()

    header = f"{'backend':<9} {'operation':<31} {'rows':>8} {'seconds':>8} {'rows/s':>9} {'× baseline':>10}"
    print(header)
    print("-" * len(header))
    for name, operation, rows, seconds, rate, ratio in rows_out:
        print(f"{name:<9} {operation:<31} {rows:>8,} {seconds:>8.2f} {rate:>9,.0f} {ratio:>9.1f}×")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

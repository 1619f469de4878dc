"""Slack event ack latency while bulk work runs on the embedded SQLite database (issue 9, item 6).

A server process runs the real Bolt app (``bot.app.build_app``) behind uvicorn (``bot.http``) on a fresh SQLite
database, against the fake Slack Web API. This process sends signed ``reaction_added`` events at a steady rate
(open loop: each event is sent at its scheduled time on its own thread, so one slow ack never delays the next send)
and measures the time until each is acknowledged:

- ``idle``: nothing else runs (the baseline, measured in the same run);
- ``import``: ``ftbot import`` of a generated JSONL file (``--lines``, 150,000 by default) runs in another process
  on the same database file, for as long as that import runs.

Each row counts the acks over Slack's 3 s, and checks every acknowledged event was stored in the inbox.

    .venv/bin/python bench/bench_ack_latency.py [--quick] [--lines 150000] [--rate 20] [--idle-seconds 5]
"""

from __future__ import annotations

import argparse
import http.client
import json
import multiprocessing as mp
import os
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from slack_sdk.signature import SignatureVerifier  # noqa: E402

SECRET = "bench-signing-secret"
TOKEN = "xoxb-bench-not-real"
SLACK_ACK_LIMIT_MS = 3000.0


# ---- the server process: the fake Slack and the real app behind uvicorn ----
def _server(conn: Any, database_url: str) -> None:
    import logging

    logging.disable(logging.CRITICAL)  # a refused event is counted in 'errors', not printed
    from sqlalchemy import func, select

    from bot.app import bot_context, build_app
    from bot.console.fake_slack import FakeSlack
    from bot.executor import TrackingExecutor
    from bot.http import BackgroundServer, build_asgi
    from storage.config import Settings
    from storage.db import Database
    from storage.models import SlackEvent

    fake = FakeSlack(token=TOKEN).start()
    fake.add_channel("C_SUPPORT", "support")
    fake.add_user("U_AGENT", "alex")
    db = Database.open(database_url)
    settings = Settings(slack_bot_token=TOKEN, slack_signing_secret=SECRET, slack_api_url=fake.base_url)
    app = build_app(settings, db, listener_executor=TrackingExecutor(max_workers=8))
    server = BackgroundServer(build_asgi(app)).start()
    conn.send({"port": server.port})
    while conn.recv() != "stop":
        with bot_context(app).inbox.db.session() as session:  # wherever the inbox lives
            conn.send(int(session.scalar(select(func.count()).select_from(SlackEvent)) or 0))
    server.stop()
    fake.stop()


# ---- the load generator ----------------------------------------------------------------------------------------------
def _event(n: int) -> tuple[str, dict[str, str]]:
    event = {"type": "reaction_added", "user": "U_AGENT", "reaction": "thumbsup", "event_ts": f"{time.time():.6f}",
             "item": {"type": "message", "channel": "C_SUPPORT", "ts": "1700000000.000100"}, "item_user": "U_AGENT"}
    body = json.dumps({"token": "x", "team_id": "T0FTBOT", "api_app_id": "A0FTBOT", "event": event, "type": "event_callback",
                       "event_id": f"EvBench{n:07d}", "event_time": int(time.time())})
    timestamp = str(int(time.time()))
    return body, {"Content-Type": "application/json", "X-Slack-Request-Timestamp": timestamp,
                  "X-Slack-Signature": SignatureVerifier(SECRET).generate_signature(timestamp=timestamp, body=body) or ""}


class Sender:
    """Sends events at ``rate`` per second until told to stop; records each ack's latency in ms."""

    def __init__(self, port: int, rate: float, first_id: int):
        self.port, self.rate, self.next_id = port, rate, first_id
        self.latencies: list[float] = []
        self.errors: list[str] = []
        self._lock = threading.Lock()
        self._pool = ThreadPoolExecutor(max_workers=256)

    def _send(self, n: int) -> None:
        body, headers = _event(n)
        connection = http.client.HTTPConnection("127.0.0.1", self.port, timeout=60)
        started = time.perf_counter()
        try:
            connection.request("POST", "/slack/events", body=body.encode(), headers=headers)
            response = connection.getresponse()
            response.read()
            status = response.status
        except OSError as error:
            status = 0
            self.errors.append(str(error))
        finally:
            connection.close()
        elapsed_ms = (time.perf_counter() - started) * 1000
        with self._lock:
            self.latencies.append(elapsed_ms)
            if status != 200:
                self.errors.append(f"HTTP {status}")

    def run(self, until: Any) -> int:
        """Send until ``until()`` is true; returns how many were sent."""
        sent, start = 0, time.perf_counter()
        futures = []
        while not until():
            futures.append(self._pool.submit(self._send, self.next_id))
            self.next_id += 1
            sent += 1
            delay = start + sent / self.rate - time.perf_counter()
            if delay > 0:
                time.sleep(delay)
        for future in futures:
            future.result()
        return sent


def _write_jsonl(path: Path, lines: int) -> None:
    from trainers.tiny_model import sample_conversations

    with path.open("w") as out:
        for chunk in range(0, lines, 10_000):
            for index, record in enumerate(sample_conversations(min(10_000, lines - chunk), seed=chunk)):
                record["messages"][1]["content"] += f" [line {chunk + index}]"  # every line distinct: all are added
                out.write(json.dumps(record) + "\n")


def _row(name: str, latencies: list[float], seconds: float, stored: int, errors: int) -> str:
    ordered = sorted(latencies)
    p99 = ordered[min(len(ordered) - 1, int(len(ordered) * 0.99))] if ordered else 0.0
    over = sum(1 for value in ordered if value > SLACK_ACK_LIMIT_MS)
    return (f"{name:<22}{seconds:>7.1f}{len(ordered):>7}{statistics.median(ordered) if ordered else 0:>9.1f}{p99:>9.1f}"
            f"{max(ordered, default=0):>9.1f}{over:>7}{errors:>7}{stored:>8}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--lines", type=int, default=150_000, help="lines in the imported JSONL file")
    parser.add_argument("--rate", type=float, default=20.0, help="events per second")
    parser.add_argument("--idle-seconds", type=float, default=5.0, help="length of the idle baseline")
    parser.add_argument("--quick", action="store_true", help="20,000 lines and a 3 s baseline")
    args = parser.parse_args()
    if args.quick:
        args.lines, args.idle_seconds = 20_000, 3.0

    work = Path(tempfile.mkdtemp(prefix="ftbot-bench-ack-"))
    database_url = f"sqlite:///{work / 'bench.sqlite3'}"
    data = work / "import.jsonl"
    _write_jsonl(data, args.lines)

    ctx = mp.get_context("spawn")
    parent, child = ctx.Pipe()
    server = ctx.Process(target=_server, args=(child, database_url), daemon=True)
    server.start()
    port = parent.recv()["port"]

    def stored() -> int:
        parent.send("count")
        return int(parent.recv())

    sender = Sender(port, args.rate, 0)
    sender.run(lambda: sender.next_id >= 5)  # warm-up: 5 events
    warm = stored()

    rows = []
    sender.latencies.clear()
    started = time.perf_counter()
    sender.run(lambda: time.perf_counter() - started >= args.idle_seconds)
    idle_seconds = time.perf_counter() - started
    rows.append(_row("idle", sender.latencies, idle_seconds, stored() - warm, len(sender.errors)))

    before = stored()
    env = {**os.environ, "FTBOT_DATABASE_URL": database_url, "FTBOT_HOME": str(work / "home")}
    sender.latencies.clear()
    errors_before = len(sender.errors)
    started = time.perf_counter()
    importer = subprocess.Popen([sys.executable, "-c", "from bot.cli import main; main()", "import", str(data), "--by", "bench",
                                 "--json"], env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    sender.run(lambda: importer.poll() is not None)
    import_seconds = time.perf_counter() - started
    out, err = importer.communicate()
    if importer.returncode != 0:
        raise SystemExit(f"ftbot import failed ({importer.returncode}): {err.decode()[-2000:]}")
    added = json.loads(out)["examples"]["added"] if out.strip().startswith(b"{") else "?"
    rows.append(_row(f"import {args.lines:,} lines", sender.latencies, import_seconds, stored() - before,
                     len(sender.errors) - errors_before))
    parent.send("stop")
    server.join(timeout=30)

    print(f"\nSlack event ack latency (ms), {args.rate:g} signed reaction_added events/s over HTTP, SQLite at {work}")
    print(f"{'while':<22}{'secs':>7}{'sent':>7}{'p50':>9}{'p99':>9}{'max':>9}{'>3s':>7}{'errors':>7}{'stored':>8}")
    for row in rows:
        print(row)
    print(f"(import added {added} examples; 'stored': events in the inbox afterwards, should equal 'sent' less 'errors')")


if __name__ == "__main__":
    main()

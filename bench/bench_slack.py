"""Slack ack latency and event deduplication, over real HTTP.

A server process runs the real Bolt app (``bot.app.build_app``) behind uvicorn (``bot.http``) against the fake
Slack Web API, on a fresh SQLite database. It also has a no-op ``/noop`` command that only acks: the baseline,
measured on the same server in the same run. The load generator (this process) keeps 50 concurrent clients
on keep-alive connections sending signed requests, and reports p50/p99 of the time until Slack would get its
ack, for ``/noop``, ``/ft help`` and ``/ft add <link>`` (which then opens a modal and reads the thread after
the ack). Each round sends a shuffled mix of the three kinds, so background load hits them alike.

Then 1,000 ``app_home_opened`` events are each delivered 4 times (the original plus retries with
``X-Slack-Retry-Num``, shuffled, concurrently) and the App Home publishes are counted: exactly 1,000 is right.

    .venv/bin/python bench/bench_slack.py [--quick] [--requests N] [--clients 50] [--events 1000]
"""

from __future__ import annotations

import argparse
import http.client
import json
import multiprocessing as mp
import queue
import random
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any
from urllib.parse import urlencode

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from slack_sdk.signature import SignatureVerifier  # noqa: E402

SECRET = "bench-signing-secret"
TOKEN = "xoxb-bench-not-real"


# ---- the fake Slack process (Slack's API is remote in production: keep its CPU out of the app's process) ----
def _fake_slack(conn: Any) -> None:
    from bot.console.fake_slack import FakeSlack

    fake = FakeSlack(token=TOKEN).start()
    fake.add_channel("C_SUPPORT", "support")
    fake.add_user("U_CUSTOMER", "carla")
    fake.add_user("U_AGENT", "alex")
    parent = fake.post_message("C_SUPPORT", "U_CUSTOMER", "My invoice shows the wrong VAT number, can you fix it?")
    reply = fake.post_message("C_SUPPORT", "U_AGENT", "Done: I corrected the VAT number and sent you a new invoice.",
                              thread_ts=parent["ts"])
    conn.send({"base_url": fake.base_url, "permalink": fake.permalink("C_SUPPORT", reply["ts"], parent["ts"]),
               "response_url": fake.response_url("bench")})
    while conn.recv() != "stop":
        conn.send({method: len(fake.calls_to(method)) for method in ("views.publish", "views.open", "views.update",
                                                                     "response_url")})
    fake.stop()


# ---- the server process: the real app behind uvicorn ----
def _server(conn: Any, base_url: str) -> None:
    import logging

    logging.disable(logging.WARNING)
    from bot.app import build_app
    from bot.executor import TrackingExecutor, wait_all_idle
    from bot.http import BackgroundServer, build_asgi
    from storage.config import Settings
    from storage.db import Database

    db = Database.open(f"sqlite:///{tempfile.mkdtemp()}/bench.sqlite3")
    settings = Settings(slack_bot_token=TOKEN, slack_signing_secret=SECRET, slack_api_url=base_url)
    executor = TrackingExecutor(max_workers=16)
    app = build_app(settings, db, listener_executor=executor)

    @app.command("/noop")
    def noop(ack):  # the baseline: Bolt's full path (signature, parsing, listener, ack) and nothing else
        ack()

    server = BackgroundServer(build_asgi(app)).start()
    conn.send({"port": server.port})
    while conn.recv() != "stop":
        wait_all_idle(executor, app.ftbot.work, timeout=300)
        conn.send("idle")
    server.stop()


# ---- the load generator ----------------------------------------------------------------------------------------------
def _signed(body: str, content_type: str, retry: int | None = None) -> dict[str, str]:
    timestamp = str(int(time.time()))
    headers = {"Content-Type": content_type, "X-Slack-Request-Timestamp": timestamp,
               "X-Slack-Signature": SignatureVerifier(SECRET).generate_signature(timestamp=timestamp, body=body)}
    if retry:
        headers.update({"X-Slack-Retry-Num": str(retry), "X-Slack-Retry-Reason": "http_timeout"})
    return headers


def _command(command: str, text: str, response_url: str, n: int) -> tuple[str, dict[str, str]]:
    body = urlencode({"token": "x", "team_id": "T0FTBOT", "team_domain": "ftbot-demo", "channel_id": "C_SUPPORT",
                      "channel_name": "support", "user_id": "U_AGENT", "user_name": "alex", "command": command,
                      "text": text, "api_app_id": "A0FTBOT", "response_url": response_url,
                      "trigger_id": f"{n}.bench{random.getrandbits(32)}"})
    return body, _signed(body, "application/x-www-form-urlencoded")


def _fire(port: int, requests: list[tuple[str, str, dict[str, str]]], clients: int) -> dict[str, list[float]]:
    """Send ``(kind, body, headers)`` with ``clients`` concurrent keep-alive connections; latency per kind in ms."""
    work: queue.Queue = queue.Queue()
    for item in requests:
        work.put(item)
    latencies: dict[str, list[float]] = {}
    errors: list[str] = []
    lock = threading.Lock()

    def client() -> None:
        connection = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
        while True:
            try:
                kind, body, headers = work.get_nowait()
            except queue.Empty:
                break
            started = time.perf_counter()
            connection.request("POST", "/slack/events", body=body.encode(), headers=headers)
            response = connection.getresponse()
            response.read()
            elapsed = (time.perf_counter() - started) * 1000
            with lock:
                if response.status != 200:
                    errors.append(f"{kind}: HTTP {response.status}")
                latencies.setdefault(kind, []).append(elapsed)
        connection.close()

    threads = [threading.Thread(target=client) for _ in range(clients)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    if errors:
        raise SystemExit(f"{len(errors)} requests failed, e.g. {errors[:3]}")
    return latencies


def _pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, int(round(q / 100 * len(ordered) + 0.5)) - 1))]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="small sizes (about 20 s)")
    parser.add_argument("--requests", type=int, default=None, help="requests per kind (default 1500; --quick 300)")
    parser.add_argument("--clients", type=int, default=50)
    parser.add_argument("--events", type=int, default=None, help="distinct events (default 1000; --quick 200)")
    parser.add_argument("--rounds", type=int, default=5, help="rounds (each a shuffled mix of the kinds)")
    args = parser.parse_args(argv)
    per_kind = args.requests or (300 if args.quick else 1500)
    events = args.events or (200 if args.quick else 1000)

    ctx = mp.get_context("spawn")
    fake_conn, fake_child = ctx.Pipe()
    fake = ctx.Process(target=_fake_slack, args=(fake_child,), daemon=True)
    fake.start()
    info = fake_conn.recv()
    permalink, response_url = info["permalink"], info["response_url"]
    parent_conn, child_conn = ctx.Pipe()
    server = ctx.Process(target=_server, args=(child_conn, info["base_url"]), daemon=True)
    server.start()
    port = parent_conn.recv()["port"]

    def drain() -> dict[str, int]:
        parent_conn.send("drain")
        parent_conn.recv()
        fake_conn.send("count")
        return fake_conn.recv()

    kinds = {"no-op handler (/noop)": ("/noop", ""), "/ft help": ("/ft", "help"), "/ft add <link>": ("/ft", f"add <{permalink}>")}
    # warm-up: first requests pay auth.test and lazy imports
    _fire(port, [(k, *_command(c, t, response_url, i)) for i, (k, (c, t)) in enumerate(kinds.items()) for _ in range(5)], 5)
    drain()

    latencies: dict[str, list[float]] = {k: [] for k in kinds}
    per_round = max(1, per_kind // args.rounds)
    n = 0
    rng = random.Random(11)
    for _round in range(args.rounds):
        # One shuffled mix per round: every kind meets the same server load at the same moments.
        batch = []
        for kind, (command, text) in kinds.items():
            for _ in range(per_round):
                n += 1
                batch.append((kind, *_command(command, text, response_url, n)))
        rng.shuffle(batch)
        for k, values in _fire(port, batch, args.clients).items():
            latencies[k].extend(values)
        drain()  # let the work after the acks finish before the next round

    base_p99 = _pct(latencies["no-op handler (/noop)"], 99)
    base_p50 = _pct(latencies["no-op handler (/noop)"], 50)
    print(f"\nAck latency over HTTP, {args.clients} concurrent clients, {per_round * args.rounds} requests per kind "
          f"({args.rounds} rounds of a shuffled mix)\n")
    print("| request | p50 ms | p99 ms | mean ms | p50 / no-op | p99 / no-op | goal p99 ≤ 1.5× |")
    print("|---|---:|---:|---:|---:|---:|---|")
    for kind, values in latencies.items():
        p50, p99 = _pct(values, 50), _pct(values, 99)
        ok = "baseline" if kind.startswith("no-op") else ("yes" if p99 <= 1.5 * base_p99 else "NO")
        print(f"| {kind} | {p50:.1f} | {p99:.1f} | {statistics.fmean(values):.1f} | {p50 / base_p50:.2f} | "
              f"{p99 / base_p99:.2f} | {ok} |")

    # ---- at-least-once delivery: each event 4 times ----
    before = drain()["views.publish"]
    deliveries = []
    for i in range(events):
        body = json.dumps({"token": "x", "team_id": "T0FTBOT", "api_app_id": "A0FTBOT", "type": "event_callback",
                           "event_id": f"EvBench{i:06d}", "event_time": int(time.time()),
                           "event": {"type": "app_home_opened", "user": f"U{i:08d}", "channel": "D1", "tab": "home",
                                     "event_ts": f"{time.time():.6f}"}})
        for retry in (None, 1, 2, 3):
            deliveries.append(("event", body, _signed(body, "application/json", retry)))
    random.Random(7).shuffle(deliveries)
    started = time.perf_counter()
    event_latency = _fire(port, deliveries, args.clients)["event"]
    elapsed = time.perf_counter() - started
    effects = drain()["views.publish"] - before
    print(f"\nAt-least-once delivery: {events} distinct events × 4 deliveries = {len(deliveries)} requests "
          f"in {elapsed:.1f} s (ack p99 {_pct(event_latency, 99):.1f} ms)\n")
    print("| distinct events | deliveries | effects (views.publish) | duplicates | lost |")
    print("|---:|---:|---:|---:|---:|")
    print(f"| {events} | {len(deliveries)} | {effects} | {max(0, effects - events)} | {max(0, events - effects)} |")
    parent_conn.send("stop")
    fake_conn.send("stop")
    server.join(timeout=30)
    fake.join(timeout=30)
    return 0 if effects == events else 1


if __name__ == "__main__":
    raise SystemExit(main())

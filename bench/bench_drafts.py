"""Drafts (issue 11): ftbot's own overhead per draft, and the embedded model's time to the first and the next drafts.

1. **Overhead.** The real Bolt app (``bot.app.build_app``) behind uvicorn (``bot.http``) in a process of its own, on
   a fresh SQLite database, against the fake Slack Web API (in this process: Slack is elsewhere too). The model in use
   is an OpenAI model whose API is a fake OpenAI-compatible server answering after ``--generation-ms`` (a model's
   time). Rounds of ``--concurrency`` signed ``@ftbot draft`` events are sent at once over HTTP, each in its own
   thread. Per event: the ack's time, and the time from sending the event to the private draft reaching Slack
   (``chat.postEphemeral`` at the fake). The overhead is that time less the model's own (``generation_ms``, stored
   with each draft): the inbox, reading the thread, the database, Block Kit, Slack calls, queueing. Goals: p99
   overhead < 300 ms, every ack < 1 s.
2. **Embedded.** ``ftbot:smollm2`` (the bundled SmolLM2-135M-Instruct) with a fresh LoRA adapter (its B matrices are
   zero: the base model's answers) drafting in ftbot's own drafting process (``trainers.drafts.server``), no inference
   server: the first draft (starts the process, loads the model) and the next ones, one at a time.

    .venv/bin/python bench/bench_drafts.py [--quick] [--rounds 3] [--concurrency 20] [--generation-ms 200]
                                           [--embedded-drafts 4] [--max-tokens 48] [--no-embedded]
"""

from __future__ import annotations

import argparse
import http.client
import json
import logging
import os
import statistics
import sys
import tempfile
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from slack_sdk.signature import SignatureVerifier  # noqa: E402

SECRET = "bench-signing-secret"
TOKEN = "xoxb-bench-not-real"
CHANNEL = "C_SUPPORT"
ANSWER = "Sorry about the double charge! I refunded the second one; it shows on your statement within 5 days."


# ---- a fake OpenAI-compatible server: answers chat completions after a model's time ----------------------------------
def start_fake_model(generation_ms: float) -> ThreadingHTTPServer:
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"
        disable_nagle_algorithm = True  # headers and body are two writes: no 40 ms wait for a delayed ACK

        def log_message(self, *args: Any) -> None:
            pass

        def do_POST(self) -> None:
            request = json.loads(self.rfile.read(int(self.headers.get("Content-Length") or 0)) or b"{}")
            time.sleep(generation_ms / 1000)
            body = json.dumps({
                "id": "chatcmpl-bench", "object": "chat.completion", "created": int(time.time()), "model": request.get("model"),
                "choices": [{"index": 0, "finish_reason": "stop", "logprobs": None,
                             "message": {"role": "assistant", "content": ANSWER, "refusal": None}}],
                "usage": {"prompt_tokens": 60, "completion_tokens": 24, "total_tokens": 84},
            }).encode()
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler, bind_and_activate=False)
    server.daemon_threads = True
    server.request_queue_size = 128  # socketserver's backlog of 5 would make 20 clients at once wait 1 s to connect
    server.server_bind()
    server.server_activate()
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server


# ---- the bot, in a process of its own (as in production: Slack and the model are elsewhere) ---------------------------
def _bot_process(conn: Any, database_url: str, slack_api_url: str, home: str, max_tokens: int) -> None:
    logging.disable(logging.WARNING)
    from bot.app import bot_context, build_app
    from bot.http import BackgroundServer, build_asgi
    from storage.config import Settings
    from storage.db import Database

    db = Database.open(database_url)
    settings = Settings(slack_bot_token=TOKEN, slack_signing_secret=SECRET, slack_api_url=slack_api_url, home=Path(home),
                        draft_max_tokens=max_tokens)
    app = build_app(settings, db)  # Bolt's own listener pool, as `ftbot run --http` has it
    server = BackgroundServer(build_asgi(app)).start()
    conn.send(server.port)
    while (message := conn.recv()) != "stop":
        conn.send(bot_context(app).wait_idle(float(message)))
    bot_context(app).close()
    server.stop()
    db.close()
    conn.send("stopped")


class Bench:
    """The bot (another process) behind uvicorn, the fake Slack here, and when each private draft reached Slack."""

    def __init__(self, work: Path, *, home: Path, max_tokens: int, model_url: str):
        import multiprocessing

        from bot.console.fake_slack import FakeSlack
        from storage.db import Database

        self.fake = FakeSlack(token=TOKEN).start()
        self.fake.add_channel(CHANNEL, "support", members=["U_CUSTOMER", "U_AGENT"])
        self.fake.add_user("U_CUSTOMER", "carla")
        self.fake.add_user("U_AGENT", "alex")
        database_url = f"sqlite:///{work / 'bench.sqlite3'}"
        self.db = Database.open(database_url)  # migrated here, before the bot opens it
        self.shown: dict[str, float] = {}  # thread ts -> when its private draft reached Slack
        self._lock = threading.Lock()
        self.fake.subscribe(self._on_call)
        context = multiprocessing.get_context("spawn")
        self._conn, child = context.Pipe()
        # The bot's OpenAI client reads these: the fake model stands in for OpenAI.
        environment = {"OPENAI_BASE_URL": model_url, "OPENAI_API_KEY": "sk-bench"}
        previous = {name: os.environ.get(name) for name in environment}
        os.environ.update(environment)
        try:
            self._process = context.Process(target=_bot_process, args=(child, database_url, self.fake.base_url, str(home),
                                                                       max_tokens), daemon=True)
            self._process.start()
        finally:
            for name, value in previous.items():
                if value is None:
                    os.environ.pop(name, None)
                else:
                    os.environ[name] = value
        self.port = int(self._conn.recv())

    def _on_call(self, call: Any, _response: dict[str, Any]) -> None:
        if call.method == "chat.postEphemeral" and "ft_draft_send" in json.dumps(call.args.get("blocks") or []):
            with self._lock:
                self.shown.setdefault(str(call.args.get("thread_ts")), time.monotonic())

    def wait_idle(self, timeout: float = 60) -> None:
        self._conn.send(str(timeout))
        self._conn.recv()

    def thread(self, n: int) -> tuple[str, str]:
        """A customer's question and an agent's `@ftbot draft` under it: (thread ts, mention ts)."""
        root = self.fake.post_message(CHANNEL, "U_CUSTOMER", f"My card was charged twice for order {1000 + n}. Please help!")
        mention = self.fake.post_message(CHANNEL, "U_AGENT", "<@U0FTBOT> draft", thread_ts=root["ts"])
        return root["ts"], mention["ts"]

    def send_mention(self, thread_ts: str, mention_ts: str) -> tuple[float, float, int]:
        """POST the signed app_mention event; (when it was sent, time.monotonic(); ack ms; HTTP status)."""
        event = {"type": "app_mention", "user": "U_AGENT", "text": "<@U0FTBOT> draft", "ts": mention_ts,
                 "thread_ts": thread_ts, "channel": CHANNEL, "event_ts": mention_ts}
        body = json.dumps({"token": "x", "team_id": "T0FTBOT", "api_app_id": "A0FTBOT", "event": event,
                           "type": "event_callback", "event_id": f"EvBench{mention_ts.replace('.', '')}",
                           "event_time": int(time.time()),
                           "authorizations": [{"team_id": "T0FTBOT", "user_id": "U0FTBOT", "is_bot": True}]})
        timestamp = str(int(time.time()))
        headers = {"Content-Type": "application/json", "X-Slack-Request-Timestamp": timestamp,
                   "X-Slack-Signature": SignatureVerifier(SECRET).generate_signature(timestamp=timestamp, body=body) or ""}
        connection = http.client.HTTPConnection("127.0.0.1", self.port, timeout=60)
        sent = time.monotonic()  # system-wide on Linux: comparable with the bot process's clock
        try:
            connection.request("POST", "/slack/events", body=body.encode(), headers=headers)
            response = connection.getresponse()
            response.read()
            status = response.status
        finally:
            connection.close()
        return sent, (time.monotonic() - sent) * 1000, status

    def wait_shown(self, threads: list[str], timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            with self._lock:
                if all(ts in self.shown for ts in threads):
                    return
            time.sleep(0.01)
        raise SystemExit(f"only {sum(ts in self.shown for ts in threads)} of {len(threads)} drafts were shown "
                         f"within {timeout:.0f} s")

    def generation_ms(self, mention_ts: str) -> int:
        from storage.drafts import find_draft

        draft = find_draft(self.db, f"mention:{CHANNEL}:{mention_ts}")
        if draft is None or draft.generation_ms is None:
            raise SystemExit(f"no draft stored for the mention {mention_ts}")
        return draft.generation_ms

    def close(self) -> None:
        self._conn.send("stop")
        self._conn.recv()
        self._process.join(timeout=30)
        self.fake.stop()
        self.db.close()


# ---- 1. overhead at N concurrent requests ------------------------------------------------------------------------------
def overhead(bench: Bench, *, rounds: int, concurrency: int) -> dict[str, list[float]]:
    from storage.jobs import register_model, use_model

    register_model(bench.db, name="acme-sft-job1", backend="openai", base_model="gpt-4o-mini-2024-07-18",
                   location="ft:gpt-4o-mini-2024-07-18:acme::bench")
    use_model(bench.db, "acme-sft-job1")
    results: dict[str, list[float]] = {"ack": [], "to_draft": [], "generation": [], "overhead": [], "app_latency": []}
    warm = [bench.thread(-1)]  # warm-up: first connections, imports, the client pool
    bench.send_mention(*warm[0])
    bench.wait_shown([warm[0][0]], 30)
    for _round in range(rounds):
        pairs = [bench.thread(n) for n in range(concurrency)]
        barrier = threading.Barrier(concurrency)
        sent: dict[str, tuple[float, float, int]] = {}

        def send(pair: tuple[str, str], barrier: threading.Barrier = barrier,
                 sent: dict[str, tuple[float, float, int]] = sent) -> None:
            barrier.wait(30)
            sent[pair[0]] = bench.send_mention(*pair)

        threads = [threading.Thread(target=send, args=(pair,)) for pair in pairs]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        bench.wait_shown([root for root, _ in pairs], 120)
        bench.wait_idle()  # the latency is stored just after the draft is shown
        for root, mention in pairs:
            started, ack_ms, status = sent[root]
            if status != 200:
                raise SystemExit(f"an event was answered HTTP {status}")
            to_draft = (bench.shown[root] - started) * 1000
            generation = bench.generation_ms(mention)
            results["ack"].append(ack_ms)
            results["to_draft"].append(to_draft)
            results["generation"].append(generation)
            results["overhead"].append(to_draft - generation)
    from storage.drafts import list_drafts

    results["app_latency"] = [float(d.latency_ms) - (d.generation_ms or 0) for d in list_drafts(bench.db)
                              if d.latency_ms is not None]
    return results


# ---- 2. the embedded drafting process with ftbot:smollm2 ---------------------------------------------------------------
def smollm2_adapter(home: Path, target: Path) -> None:
    """A LoRA adapter for ftbot:smollm2 whose B matrices are zero (peft's default): it answers as the base model."""
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from trainers.training.local.base_models import resolve_base_model

    base = resolve_base_model("ftbot:smollm2", home / "models")  # converted once from the bundled GGUF (~20 s)
    model = get_peft_model(AutoModelForCausalLM.from_pretrained(base), LoraConfig(r=8, lora_alpha=16,
                                                                                  target_modules=["q_proj", "v_proj"]))
    model.save_pretrained(target)
    AutoTokenizer.from_pretrained(base).save_pretrained(target)


def embedded(bench: Bench, work: Path, home: Path, *, drafts: int) -> list[tuple[float, int]]:
    """(time to the private draft in ms, the model's ms) of the first draft, then of each next one."""
    from storage.jobs import register_model, use_model

    adapter = work / "smollm2-adapter"
    smollm2_adapter(home, adapter)
    register_model(bench.db, name="smollm2-bench", backend="local", base_model="ftbot:smollm2", location=str(adapter))
    use_model(bench.db, "smollm2-bench")
    timings = []
    for n in range(drafts):
        root, mention = bench.thread(100 + n)
        started, _ack, _status = bench.send_mention(root, mention)
        bench.wait_shown([root], 600)
        bench.wait_idle()
        timings.append(((bench.shown[root] - started) * 1000, bench.generation_ms(mention)))
    return timings


# ---- the report --------------------------------------------------------------------------------------------------------
def _pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(len(ordered) * q))] if ordered else float("nan")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=3, help="rounds of concurrent requests")
    parser.add_argument("--concurrency", type=int, default=20, help="`@ftbot draft` events sent at once per round")
    parser.add_argument("--generation-ms", type=float, default=200.0, help="the fake model's time per draft")
    parser.add_argument("--embedded-drafts", type=int, default=4, help="drafts with ftbot:smollm2 (the first, then the next)")
    parser.add_argument("--max-tokens", type=int, default=48, help="FTBOT_DRAFT_MAX_TOKENS for the embedded drafts")
    parser.add_argument("--home", type=Path, default=None, help="FTBOT_HOME (the converted SmolLM2 is kept there); "
                        "default: ftbot's usual home")
    parser.add_argument("--no-embedded", action="store_true", help="only the overhead part")
    parser.add_argument("--quick", action="store_true", help="1 round, 2 embedded drafts")
    args = parser.parse_args()
    if args.quick:
        args.rounds, args.embedded_drafts = 1, 2
    logging.disable(logging.WARNING)  # the bot's own INFO/WARNING lines would interleave with the table

    from storage.config import Settings

    home = args.home or Settings.from_env().home
    work = Path(tempfile.mkdtemp(prefix="ftbot-bench-drafts-"))
    model_server = start_fake_model(args.generation_ms)
    bench = Bench(work, home=home, max_tokens=args.max_tokens,
                  model_url=f"http://127.0.0.1:{model_server.server_address[1]}/v1")
    try:
        results = overhead(bench, rounds=args.rounds, concurrency=args.concurrency)
        timings = [] if args.no_embedded else embedded(bench, work, home, drafts=args.embedded_drafts)
    finally:
        bench.close()
        model_server.shutdown()

    samples = len(results["overhead"])
    print(f"\nDrafts: {args.rounds} round(s) of {args.concurrency} `@ftbot draft` events at once over HTTP, the model "
          f"a fake OpenAI-compatible server answering in {args.generation_ms:g} ms ({samples} drafts)")
    print(f"{'ms':<46}{'p50':>9}{'p99':>9}{'max':>9}  goal")
    rows = [
        ("ack of the event", results["ack"], "every ack < 1000"),
        ("event sent → private draft in Slack", results["to_draft"], ""),
        ("  of which the model (generation_ms)", results["generation"], ""),
        ("overhead: event → draft, minus the model", results["overhead"], "p99 < 300"),
        ("  as the bot records it (listener → shown)", results["app_latency"], ""),
    ]
    for name, values, goal in rows:
        print(f"{name:<46}{_pct(values, 0.5):>9.1f}{_pct(values, 0.99):>9.1f}{max(values, default=float('nan')):>9.1f}  {goal}")
    verdict_ack = "met" if max(results["ack"]) < 1000 else "MISSED"
    verdict_overhead = "met" if _pct(results["overhead"], 0.99) < 300 else "MISSED"
    print(f"goals: acks < 1 s {verdict_ack}; p99 overhead < 300 ms {verdict_overhead}")
    if timings:
        print(f"\nEmbedded drafting process, ftbot:smollm2 + LoRA, max {args.max_tokens} tokens, one draft at a time")
        print(f"{'draft':<12}{'to the draft (s)':>18}{'model (s)':>12}")
        for n, (to_draft, model_ms) in enumerate(timings, 1):
            label = "first" if n == 1 else f"next #{n - 1}"
            print(f"{label:<12}{to_draft / 1000:>18.2f}{model_ms / 1000:>12.2f}")
        if len(timings) > 1:
            print(f"the next drafts: median {statistics.median(t for t, _ in timings[1:]) / 1000:.2f} s to the draft")
    print(f"(SQLite and the drafting process's log under {work} and {home / 'drafts'})")


if __name__ == "__main__":
    main()

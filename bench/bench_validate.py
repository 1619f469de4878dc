"""Benchmark: validate + price a generated support dataset with ftbot, against a ceiling and a baseline.

Measured in the same run, on the same file, each in a fresh child process (peak RSS from getrusage):
  ceiling   plain tiktoken ``encode_ordinary`` loop over the strings the counting rule encodes, one core
            (strings extracted beforehand, not timed)
  baseline  a straightforward port of the OpenAI cookbook's data-prep notebook: json.loads the whole file
            into a list, its format checks, per-message ``encoding.encode`` (fixed only so that it does not
            crash on weights and tool calls)
  ftbot     ``trainers.data.report.build_report`` (all checks, duplicates, PII, pricing), both cores

Throughput is the file's token count (the ceiling's) divided by each method's wall time.

    .venv/bin/python bench/bench_validate.py            # 100k conversations (~50 MB) + a ~500 MB RSS run
    .venv/bin/python bench/bench_validate.py --quick    # 10k conversations, no big-file run
"""

from __future__ import annotations

import argparse
import json
import os
import random
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
MODEL = "gpt-4o-mini-2024-07-18"

SYSTEM_PROMPTS = [
    "You are Acme's support assistant. Answer politely and concisely, follow the refund policy, and escalate when unsure.",
    "You are the billing support assistant for Acme Cloud. Explain invoices, plan changes and payment "
    "failures clearly. Do not ask for full card numbers.",
    "You are Acme's technical support assistant for the mobile app. Give step-by-step troubleshooting.",
]
PRODUCTS = ["the Acme Pro plan", "the mobile app", "the desktop client", "your subscription", "the API", "the router", "the smart plug"]
ISSUES = [
    "I can't log in since this morning", "my invoice shows a double charge", "the app crashes when I open settings",
    "my order has not arrived yet", "I want to cancel my subscription", "the sync stopped working after the update",
    "I was charged after cancelling", "the password reset email never arrives", "I need a copy of last month's invoice",
    "the device keeps disconnecting from wifi", "how do I add a team member", "my discount code is not accepted",
]
OPENERS = ["Hi {name}, thanks for reaching out!", "Hello {name},", "Thanks for the details, {name}.", "Sorry about the trouble, {name}."]
STEPS = [
    "Please sign out and sign back in, then clear the app cache under Settings > Storage.",
    "I have checked your account and the second charge was a pre-authorization that will drop off within 3 to 5 business days.",
    "Your order {order} left our warehouse on {day} and the carrier shows it out for delivery.",
    "I have issued a refund of ${amount} to the original payment method; it usually appears within 5 to 10 business days.",
    "You can update the app from the store; version 4.{minor} fixes the crash you are seeing.",
    "Go to Admin > Members, click Invite, and enter your colleague's work email address.",
    "The code {code} expired on {day}, but I have applied a 15% discount to your next invoice instead.",
    "I have reset the sync token on our side; please restart the client and give it a few minutes.",
    "Your plan renews on {day}; cancelling now keeps access until then and you will not be charged again.",
    "Please restart the device, hold the reset button for ten seconds, and reconnect it to the 2.4 GHz network.",
]
CLOSERS = [
    "Let me know if there is anything else I can help with.",
    "Have a great day!",
    "If this does not solve it, reply here and I will escalate it to our engineers.",
    "",
]
NAMES = ["Anna", "Ben", "Chen", "Dara", "Emil", "Fatima", "Gus", "Hana", "Ivan", "Jo", "Kofi", "Lena", "Mateo", "Nia"]
DAYS = ["Monday", "Tuesday", "March 3", "April 12", "June 30", "the 15th"]
TOOLS = [{"type": "function", "function": {"name": "lookup_order", "description": "Look up an order by id",
          "parameters": {"type": "object", "properties": {"order_id": {"type": "string"}}, "required": ["order_id"]}}}]


def _fill(template: str, rng: random.Random) -> str:
    return template.format(
        name=rng.choice(NAMES), order=f"#{rng.randint(100000, 999999)}", day=rng.choice(DAYS),
        amount=f"{rng.randint(5, 400)}.{rng.randint(0, 99):02d}", minor=rng.randint(1, 30), code=f"SAVE{rng.randint(10, 99)}",
    )


SUBJECTS = ["Our engineers", "The billing team", "Your account manager", "The sync service", "Our status page", "The latest release",
            "Your workspace admin", "The mobile team", "Our fraud check", "The carrier"]
VERBS = ["confirmed", "reported", "flagged", "resolved", "scheduled", "reviewed", "escalated", "updated", "noted", "tracked"]
OBJECTS = ["a delay in your region", "the duplicate payment", "an outage at 14:05 UTC", "the login issue on Android",
           "a fix for the export bug", "your upgrade request", "the missing invoice", "the slow uploads", "the new seat count",
           "the address change"]
WHENS = ["this morning", "an hour ago", "yesterday evening", "on Tuesday", "last week", "just now", "overnight", "today",
         "at noon", "earlier today"]


def conversation(index: int, rng: random.Random) -> dict:
    """One realistic support conversation as an OpenAI SFT line (some multi-turn, tool calls, weights)."""
    system = SYSTEM_PROMPTS[0] if rng.random() < 0.85 else rng.choice(SYSTEM_PROMPTS[1:])
    messages: list[dict] = [{"role": "system", "content": system}]
    record: dict = {"messages": messages}
    if rng.random() < 0.05:
        order = str(rng.randint(100000, 999999))
        messages.append({"role": "user", "content": f"Where is my order {order}? Ticket {index}."})
        messages.append({"role": "assistant", "content": None, "tool_calls": [
            {"id": f"call_{index}", "type": "function",
             "function": {"name": "lookup_order", "arguments": json.dumps({"order_id": order})}}]})
        messages.append({"role": "tool", "tool_call_id": f"call_{index}",
                         "content": json.dumps({"status": "in_transit", "eta": rng.choice(DAYS)})})
        reply = f"{_fill(rng.choice(OPENERS), rng)} Your order {order} is in transit and should arrive {rng.choice(DAYS)}."
        messages.append({"role": "assistant", "content": reply})
        record["tools"] = TOOLS
        return record
    turns = 1 if rng.random() < 0.8 else 2
    for turn in range(turns):
        question = f"{rng.choice(ISSUES).capitalize()} with {rng.choice(PRODUCTS)} (ticket {index}-{turn})."
        messages.append({"role": "user", "content": question})
        context = " ".join(f"{rng.choice(SUBJECTS)} {rng.choice(VERBS)} {rng.choice(OBJECTS)} {rng.choice(WHENS)}." for _ in range(2))
        closer = rng.choice(CLOSERS) if rng.random() < 0.3 else ""
        reply = " ".join(part for part in (_fill(rng.choice(OPENERS), rng), context, _fill(rng.choice(STEPS), rng), closer) if part)
        message = {"role": "assistant", "content": reply}
        if turns == 2 and turn == 0 and rng.random() < 0.5:
            message["weight"] = 0
        messages.append(message)
    return record


def generate(path: Path, count: int, seed: int = 7) -> int:
    rng = random.Random(seed)
    with path.open("w", encoding="utf-8") as handle:
        for index in range(count):
            handle.write(json.dumps(conversation(index, rng), ensure_ascii=False))
            handle.write("\n")
    return path.stat().st_size


# ---------------------------------------------------------------------------------------------------
# The three measured methods (each runs in its own child process)


def _strings_of(record: dict) -> list[str]:
    strings = []
    for message in record.get("messages", []):
        for key, value in message.items():
            if key == "weight" or value is None:
                continue
            strings.append(value if isinstance(value, str) else json.dumps(value, ensure_ascii=False, separators=(",", ":")))
    if record.get("tools"):
        strings.append(json.dumps(record["tools"], ensure_ascii=False, separators=(",", ":")))
    return strings


def run_ceiling(path: Path) -> dict:
    from trainers.data.tokens import encoding_for_model

    encoding = encoding_for_model(MODEL)
    with path.open(encoding="utf-8") as handle:
        strings = [text for line in handle for text in _strings_of(json.loads(line))]
    encode = encoding.encode_ordinary
    started, cpu = time.perf_counter(), time.process_time()
    tokens = 0
    for text in strings:
        tokens += len(encode(text))
    return {"seconds": time.perf_counter() - started, "tokens": tokens, "timed_cpu": time.process_time() - cpu}


def run_baseline(path: Path) -> dict:
    """The cookbook's chat fine-tuning data-prep notebook, ported as is (plus: encode non-strings as JSON)."""
    from collections import defaultdict

    import numpy as np

    from trainers.data.tokens import encoding_for_model

    encoding = encoding_for_model(MODEL)  # loaded before timing, as for the ceiling
    started, cpu = time.perf_counter(), time.process_time()
    with open(path, encoding="utf-8") as f:
        dataset = [json.loads(line) for line in f]
    format_errors: dict[str, int] = defaultdict(int)
    for ex in dataset:
        if not isinstance(ex, dict):
            format_errors["data_type"] += 1
            continue
        messages = ex.get("messages", None)
        if not messages:
            format_errors["missing_messages_list"] += 1
            continue
        for message in messages:
            if "role" not in message or "content" not in message:
                format_errors["message_missing_key"] += 1
            if any(k not in ("role", "content", "name", "function_call", "weight", "tool_calls", "tool_call_id") for k in message):
                format_errors["message_unrecognized_key"] += 1
            if message.get("role", None) not in ("system", "user", "assistant", "function", "tool"):
                format_errors["unrecognized_role"] += 1
            content = message.get("content", None)
            function_call = message.get("function_call", None)
            if (not content and not function_call and not message.get("tool_calls")) or not isinstance(content, (str, type(None))):
                format_errors["missing_content"] += 1
        if not any(message.get("role", None) == "assistant" for message in messages):
            format_errors["example_missing_assistant_message"] += 1

    def encode_value(value):
        return encoding.encode(value if isinstance(value, str) else json.dumps(value))

    def num_tokens_from_messages(messages, tokens_per_message=3, tokens_per_name=1):
        num_tokens = 0
        for message in messages:
            num_tokens += tokens_per_message
            for key, value in message.items():
                if key == "weight" or value is None:
                    continue
                num_tokens += len(encode_value(value))
                if key == "name":
                    num_tokens += tokens_per_name
        num_tokens += 3
        return num_tokens

    def num_assistant_tokens_from_messages(messages):
        return sum(len(encode_value(m["content"])) for m in messages if m["role"] == "assistant" and m.get("content"))

    n_missing_system = n_missing_user = 0
    n_messages, convo_lens, assistant_message_lens = [], [], []
    for ex in dataset:
        messages = ex["messages"]
        if not any(message["role"] == "system" for message in messages):
            n_missing_system += 1
        if not any(message["role"] == "user" for message in messages):
            n_missing_user += 1
        n_messages.append(len(messages))
        convo_lens.append(num_tokens_from_messages(messages))
        assistant_message_lens.append(num_assistant_tokens_from_messages(messages))
    n_too_long = sum(length > 65536 for length in convo_lens)
    stats = {name: (float(np.min(v)), float(np.median(v)), float(np.quantile(v, 0.9)), float(np.max(v)))
             for name, v in (("messages", n_messages), ("tokens", convo_lens), ("assistant", assistant_message_lens))}
    n_epochs = 3
    n_billing = sum(min(65536, length) for length in convo_lens) * n_epochs
    return {"seconds": time.perf_counter() - started, "timed_cpu": time.process_time() - cpu, "tokens_counted": sum(convo_lens),
            "billed": n_billing, "too_long": n_too_long, "errors": dict(format_errors), "stats": stats}


def run_ftbot(path: Path, workers: int | None) -> dict:
    from trainers.data.report import build_report
    from trainers.data.tokens import encoding_for_model

    encoding_for_model(MODEL)  # loaded before timing, as for the ceiling and the baseline
    started, cpu = time.perf_counter(), time.process_time()
    report = build_report(path, model=MODEL, workers=workers)
    seconds = time.perf_counter() - started
    children = resource.getrusage(resource.RUSAGE_CHILDREN)
    timed_cpu = time.process_time() - cpu + children.ru_utime + children.ru_stime
    data = report.to_json()
    return {"seconds": seconds, "timed_cpu": timed_cpu, "tokens_counted": data["tokens"]["total"], "valid": data["valid_examples"],
            "billed": data["billed_tokens"], "cost": data["estimated_cost_usd"], "workers": data["workers"],
            "warning_counts": data["warning_counts"], "error_counts": data["error_counts"]}


def _child(method: str, path: str, workers: str) -> None:
    if method == "ceiling":
        result = run_ceiling(Path(path))
    elif method == "baseline":
        result = run_baseline(Path(path))
    else:
        result = run_ftbot(Path(path), None if workers == "auto" else int(workers))
    own, children = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    result["rss_self_mb"] = own.ru_maxrss / 1024
    result["rss_children_mb"] = children.ru_maxrss / 1024
    result["cpu_seconds"] = own.ru_utime + own.ru_stime + children.ru_utime + children.ru_stime
    print(json.dumps(result))


def measure(method: str, path: Path, workers: str = "auto") -> dict:
    completed = subprocess.run(
        [sys.executable, __file__, "--child", method, str(path), workers],
        cwd=ROOT, capture_output=True, text=True, check=False,
    )
    if completed.returncode != 0:
        raise SystemExit(f"{method} failed:\n{completed.stderr[-3000:]}")
    return json.loads(completed.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="10k conversations, no 500 MB run")
    parser.add_argument("--count", type=int, default=None, help="conversations in the main file (default 100,000)")
    parser.add_argument("--big-mb", type=int, default=500, help="size of the RSS-only big file (0 to skip)")
    parser.add_argument("--child", nargs=3, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        _child(*args.child)
        return
    count = args.count or (10_000 if args.quick else 100_000)
    cores = os.cpu_count() or 1
    with tempfile.TemporaryDirectory(prefix="ftbot-bench-") as tmp:
        path = Path(tmp) / "support.jsonl"
        size = generate(path, count)
        print(f"generated {count:,} conversations, {size / 1e6:.1f} MB; {cores} cores", flush=True)
        ceiling = measure("ceiling", path)
        baseline = measure("baseline", path)
        ftbot_one = measure("ftbot", path, "1")
        ftbot = measure("ftbot", path)
        tokens = ceiling["tokens"]
        workers = ftbot["workers"]
        rows = [
            ("ceiling: encode_ordinary loop, 1 core", ceiling, 1),
            ("baseline: cookbook port, 1 core", baseline, 1),
            ("ftbot build_report, 1 process", ftbot_one, 1),
            (f"ftbot build_report, {workers} workers", ftbot, min(workers, cores)),
        ]
        print(f"\nfile tokens (ceiling's count): {tokens:,}; ftbot's counted total incl. per-message overhead: {ftbot['tokens_counted']:,}")
        print(f"baseline counted {baseline['tokens_counted']:,}, billed {baseline['billed']:,}; "
              f"ftbot billed {ftbot['billed']:,} (epochs auto), cost ${ftbot['cost']}")
        print(f"ftbot warnings: {ftbot['warning_counts']}; errors: {ftbot['error_counts']}\n")
        header = (f"{'method':38} {'wall s':>7} {'CPU s':>6} {'Mtok/s':>7} {'x ceiling/core':>15} {'x ceiling/CPU-s':>16} "
                  f"{'x baseline':>11} {'RSS MB main/workers':>20}")
        print(header)
        print("-" * len(header))
        ceiling_rate = tokens / ceiling["seconds"]
        ceiling_cpu_rate = tokens / ceiling["timed_cpu"]
        baseline_rate = tokens / baseline["seconds"]
        for name, result, used in rows:
            rate = tokens / result["seconds"]
            cpu_rate = tokens / result["timed_cpu"]
            print(f"{name:38} {result['seconds']:7.2f} {result['timed_cpu']:6.2f} {rate / 1e6:7.2f} {rate / used / ceiling_rate:15.2f} "
                  f"{cpu_rate / ceiling_cpu_rate:16.2f} {rate / baseline_rate:11.2f} "
                  f"{result['rss_self_mb']:9.0f} / {result['rss_children_mb']:<8.0f}")
        load = os.getloadavg()
        print(f"(load average during the run: {load[0]:.2f}, {load[1]:.2f}; x ceiling/core = rate / processes used / ceiling rate; "
              "x ceiling/CPU-s uses CPU time, robust to other load)")
        if not args.quick and args.big_mb:
            big = Path(tmp) / "big.jsonl"
            big_count = int(count * args.big_mb * 1e6 / size)
            big_size = generate(big, big_count, seed=11)
            result = measure("ftbot", big)
            print(f"\nbig file: {big_count:,} conversations, {big_size / 1e6:.0f} MB: ftbot {result['seconds']:.1f} s, "
                  f"{result['valid']:,} valid, peak RSS main {result['rss_self_mb']:.0f} MB, "
                  f"largest worker {result['rss_children_mb']:.0f} MB")
        print("\ngoals: >= 0.8x ceiling per core using all cores, >= 3x baseline, peak RSS <= 300 MB")


if __name__ == "__main__":
    sys.path.insert(0, str(ROOT))
    main()

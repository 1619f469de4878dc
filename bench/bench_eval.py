"""Benchmark: evaluation — local answer generation and the Bradley–Terry bootstrap, each against a baseline in the same run.

1. Local generation on the CPU tiny model (``trainers.tiny_model``), the same prompts and greedy settings:
     baseline  one prompt at a time (batch size 1) through ``trainers.evaluation.inference.LocalGenerator``
     ftbot     batches of 8 (chat template, left padding, length-sorted batches)
   The answers must be identical (greedy decoding); the goal is >= 3x at batch 8.
2. Statistics: Bradley–Terry ratings with bootstrap 95% intervals on 100k votes across 5 models:
     baseline  a plain-Python loop: resample the votes with ``random.choices``, count wins in dicts, and the
               same minorise–maximise iteration in Python, one bootstrap round after another
     ftbot     ``trainers.evaluation.stats.bradley_terry``: multinomial resampling over (pair, outcome) categories and one
               batched numpy fit for all rounds
   Both run the same number of bootstrap rounds; the point estimates must agree.

    .venv/bin/python bench/bench_eval.py            # 32 prompts x 32 new tokens (best of 2); 100k votes, 200 rounds (+1000 for ftbot)
    .venv/bin/python bench/bench_eval.py --quick    # 16 prompts x 16 tokens; 100k votes, 30 rounds
"""

from __future__ import annotations

import argparse
import math
import os
import random
import sys
import tempfile
import time
from collections import defaultdict
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


# --- 1. generation ---------------------------------------------------------------------------------------------


def bench_generation(prompts_n: int, new_tokens: int, batch_size: int, repeats: int) -> list[tuple[str, float, str]]:
    from storage.eval_prompts import split_prompt
    from trainers.evaluation.inference import GenerationSettings, LocalGenerator
    from trainers.tiny_model import build_tiny_model, sample_conversations

    model_dir = build_tiny_model(Path(tempfile.mkdtemp(prefix="ftbot-bench-eval-")) / "tiny")
    generator = LocalGenerator(str(model_dir))
    prompts = [split_prompt(r["messages"])[0] for r in sample_conversations(prompts_n, seed=11)]
    settings = GenerationSettings(max_new_tokens=new_tokens)
    generator.generate(prompts[:2], settings, batch_size=2)  # warm-up (first-call allocations)

    # Interleaved repeats, best time of each: the machine is shared, and a burst of someone else's work during
    # one phase would otherwise decide the ratio.
    single_s = batched_s = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        single = generator.generate(prompts, settings, batch_size=1)
        single_s = min(single_s, time.perf_counter() - start)
        start = time.perf_counter()
        batched = generator.generate(prompts, settings, batch_size=batch_size)
        batched_s = min(batched_s, time.perf_counter() - start)
    same = [g.text for g in single] == [g.text for g in batched]
    tokens = sum(g.completion_tokens for g in batched)
    return [
        ("generation: one prompt at a time (baseline)", single_s,
         f"{prompts_n / single_s:.1f} prompts/s, {tokens / single_s:.0f} tokens/s"),
        (f"generation: batches of {batch_size} (ftbot)", batched_s,
         f"{prompts_n / batched_s:.1f} prompts/s, {tokens / batched_s:.0f} tokens/s; "
         f"{single_s / batched_s:.2f}x; identical answers: {same}"),
    ]


# --- 2. Bradley–Terry ------------------------------------------------------------------------------------------


def synthetic_votes(n: int, models: int, seed: int = 0) -> list[tuple[str, str, float]]:
    rng = random.Random(seed)
    strength = [0.35 * i for i in range(models)]
    names = [f"model-{i}" for i in range(models)]
    votes = []
    for _ in range(n):
        a, b = rng.sample(range(models), 2)
        p = 1 / (1 + math.exp(strength[b] - strength[a]))
        u = rng.random()
        outcome = 0.5 if u < 0.1 else (1.0 if rng.random() < p else 0.0)
        votes.append((names[a], names[b], outcome))
    return votes


def python_fit(votes: list[tuple[str, str, float]], prior: float = 0.01, tol: float = 1e-9) -> dict[str, float]:
    """The plain-Python version: dict win counts and the same MM update, centred log-strengths."""
    wins: dict[tuple[str, str], float] = defaultdict(float)
    models = sorted({m for a, b, _ in votes for m in (a, b)})
    for a, b, outcome in votes:
        wins[(a, b)] += outcome
        wins[(b, a)] += 1.0 - outcome
    for a in models:
        for b in models:
            if a != b:
                wins[(a, b)] += prior / 2
    total = {a: sum(wins[(a, b)] for b in models if b != a) for a in models}
    log_p = {m: 0.0 for m in models}
    for _ in range(10_000):
        p = {m: math.exp(v) for m, v in log_p.items()}
        new = {}
        for a in models:
            denominator = sum((wins[(a, b)] + wins[(b, a)]) / (p[a] + p[b]) for b in models if b != a)
            new[a] = math.log(total[a]) - math.log(denominator)
        mean = sum(new.values()) / len(new)
        new = {m: v - mean for m, v in new.items()}
        change = max(abs(new[m] - log_p[m]) for m in models)
        log_p = new
        if change < tol:
            break
    return {m: 1000 + 400 / math.log(10) * v for m, v in log_p.items()}


def python_bootstrap(votes: list[tuple[str, str, float]], rounds: int, seed: int = 0) -> dict[str, tuple[float, float]]:
    rng = random.Random(seed)
    samples: dict[str, list[float]] = defaultdict(list)
    for _ in range(rounds):
        resample = rng.choices(votes, k=len(votes))
        for model, rating in python_fit(resample).items():
            samples[model].append(rating)
    out = {}
    for model, values in samples.items():
        values.sort()
        out[model] = (values[int(0.025 * (len(values) - 1))], values[int(0.975 * (len(values) - 1))])
    return out


def bench_bradley_terry(votes_n: int, models: int, rounds: int, extra_rounds: int | None) -> list[tuple[str, float, str]]:
    from trainers.evaluation.stats import bradley_terry

    votes = synthetic_votes(votes_n, models)
    start = time.perf_counter()
    point_python = python_fit(votes)
    python_boot = python_bootstrap(votes, rounds)
    python_s = time.perf_counter() - start

    start = time.perf_counter()
    board = bradley_terry(votes, bootstrap_rounds=rounds)
    numpy_s = time.perf_counter() - start
    gap = max(abs(r.rating - point_python[r.model]) for r in board.ratings)
    order = " > ".join(r.model.replace("model-", "m") for r in board.ratings)
    width_python = sum(python_boot[m][1] - python_boot[m][0] for m in python_boot) / len(python_boot)
    width_numpy = sum(r.ci_high - r.ci_low for r in board.ratings) / len(board.ratings)
    rows = [
        (f"Bradley–Terry + {rounds} bootstrap rounds, plain Python (baseline)", python_s,
         f"mean 95% CI width {width_python:.1f} Elo"),
        (f"Bradley–Terry + {rounds} bootstrap rounds, numpy (ftbot)", numpy_s,
         f"{python_s / numpy_s:.0f}x; point ratings differ by {gap:.2e} Elo; mean CI width {width_numpy:.1f}; {order}"),
    ]
    if extra_rounds:
        start = time.perf_counter()
        bradley_terry(votes, bootstrap_rounds=extra_rounds)
        rows.append((f"Bradley–Terry + {extra_rounds} bootstrap rounds, numpy (ftbot)", time.perf_counter() - start, ""))
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="small sizes (under a minute)")
    parser.add_argument("--prompts", type=int)
    parser.add_argument("--new-tokens", type=int)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--votes", type=int, default=100_000)
    parser.add_argument("--models", type=int, default=5)
    parser.add_argument("--rounds", type=int, help="bootstrap rounds for both implementations")
    parser.add_argument("--repeats", type=int, default=2, help="interleaved generation repeats (best time counts)")
    args = parser.parse_args()
    prompts = args.prompts or (16 if args.quick else 32)
    new_tokens = args.new_tokens or (16 if args.quick else 32)
    rounds = args.rounds or (30 if args.quick else 200)

    import torch

    print(f"CPU threads: torch {torch.get_num_threads()}, os {os.cpu_count()}; "
          f"{prompts} prompts x {new_tokens} new tokens; {args.votes:,} votes, {args.models} models", flush=True)
    rows = bench_generation(prompts, new_tokens, args.batch_size, 1 if args.quick else args.repeats)
    rows += bench_bradley_terry(args.votes, args.models, rounds, None if args.quick else 1000)
    width = max(len(name) for name, _, _ in rows)
    print(f"\n| {'what'.ljust(width)} | seconds | notes |")
    print(f"|{'-' * (width + 2)}|--------:|-------|")
    for name, seconds, note in rows:
        print(f"| {name.ljust(width)} | {seconds:7.2f} | {note} |")


if __name__ == "__main__":
    main()

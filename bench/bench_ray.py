"""What running a job on Ray costs against a child process of the bot: the same tiny job, both ways, in one run.

A local Ray head (started and stopped here, never with ``ray stop``) and ftbot's tiny offline model on CPU. Each
round trains the same quoted job twice, alternating the order: as a child process (today's default) and as a Ray job
(``FTBOT_RAY_ADDRESS``). It prints, per way and as medians:

- submit → first step: from ``start_job`` returning to the first training step written to the database;
- total wall time: from ``start_job`` to the registered model;
- and what the Ray head costs: its start-up time and the memory (RSS) of the head and its processes, idle.

Goal: the Ray path adds under 15 s per job on 2 cores.

    .venv/bin/python bench/bench_ray.py             # 3 rounds, ~4 minutes on 2 cores
    .venv/bin/python bench/bench_ray.py --rounds 1
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from dataclasses import dataclass, replace
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ["RAY_USAGE_STATS_ENABLED"] = "0"
for name in ("RAY_ADDRESS", "RAY_API_SERVER_ADDRESS"):
    os.environ.pop(name, None)

GOAL_EXTRA_SECONDS = 15.0


@dataclass(frozen=True)
class Timing:
    first_step: float
    total: float


def run_job(db, base_model: str, settings, *, max_steps: int) -> Timing:
    from storage.examples import import_records
    from storage.jobs import job_metrics
    from trainers.tiny_model import sample_conversations
    from trainers.training.jobs import quote_job, refresh_job, start_job

    import_records(db, enumerate(sample_conversations(12, max_turns=1), 1), source_file="bench.jsonl", approved_by="U1")
    options = dict(max_steps=max_steps, learning_rate=3e-2, batch_size=4, max_length=256, lora_dropout=0.0, lora_r=8,
                   lora_alpha=16)
    job = quote_job(db, backend="local", model=base_model, local_options=options, settings=settings).job
    start_job(db, job.id, settings=settings)
    started = time.perf_counter()
    first_step = None
    while True:
        if first_step is None and job_metrics(db, job.id):
            first_step = time.perf_counter() - started
        update = refresh_job(db, job.id, settings=settings)
        if update.finished:
            if update.job.status != "succeeded":
                raise SystemExit(f"job {job.id} {update.job.status}: {update.job.error}\n{update.job.log_tail}")
            total = time.perf_counter() - started
            return Timing(first_step if first_step is not None else total, total)
        time.sleep(0.1)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--max-steps", type=int, default=10)
    args = parser.parse_args()

    from storage.config import Settings
    from storage.db import Database
    from tests.fixtures.ray_head import start_ray_head, stop_ray_head
    from trainers.tiny_model import build_tiny_model

    work = Path(tempfile.mkdtemp(prefix="ftbot-bench-ray-"))
    os.environ["FTBOT_HOME"] = str(work / "home")
    base_model = str(build_tiny_model(work / "tiny-model"))
    os.environ["FTBOT_RAY_PYTHON"] = sys.executable
    began = time.perf_counter()
    head = start_ray_head()
    head_start = time.perf_counter() - began
    try:
        time.sleep(5)  # let the head's processes settle before reading their memory
        head_rss = head.tree_rss_bytes()
        process_settings = Settings.from_env()
        ray_settings = replace(process_settings, ray_address=head.address, ray_num_gpus=0.0, ray_num_cpus=1.0)
        timings: dict[str, list[Timing]] = {"child process": [], "Ray job": []}
        for round_number in range(args.rounds):
            order = [("child process", process_settings), ("Ray job", ray_settings)]
            if round_number % 2:
                order.reverse()
            for name, settings in order:
                db = Database.open(f"sqlite:///{work / f'{name.split()[0]}-{round_number}.sqlite3'}")
                try:
                    timings[name].append(run_job(db, base_model, settings, max_steps=args.max_steps))
                finally:
                    db.close()
                print(f"round {round_number + 1}: {name}: {timings[name][-1]}", flush=True)
    finally:
        stop_ray_head(head)
    print_table(timings, head_start=head_start, head_rss=head_rss)


def print_table(timings: dict[str, list[Timing]], *, head_start: float, head_rss: int) -> None:
    base = timings["child process"]
    ray = timings["Ray job"]
    base_first, ray_first = statistics.median(t.first_step for t in base), statistics.median(t.first_step for t in ray)
    base_total, ray_total = statistics.median(t.total for t in base), statistics.median(t.total for t in ray)
    extra = ray_total - base_total
    print()
    print(f"| way ({len(base)} runs each, medians) | submit → first step (s) | total wall (s) | ratio to child process |")
    print("| --- | --- | --- | --- |")
    print(f"| child process (baseline) | {base_first:.1f} | {base_total:.1f} | 1.00× |")
    print(f"| Ray job | {ray_first:.1f} | {ray_total:.1f} | {ray_total / base_total:.2f}× |")
    print()
    verdict = "met" if extra < GOAL_EXTRA_SECONDS else "MISSED"
    print(f"Ray adds {ray_first - base_first:+.1f} s before the first step and {extra:+.1f} s per job "
          f"(goal < {GOAL_EXTRA_SECONDS:.0f} s: {verdict}).")
    print(f"Ray head: up in {head_start:.1f} s; idle RSS of the head and its processes {head_rss / 2**20:,.0f} MiB.")


if __name__ == "__main__":
    main()

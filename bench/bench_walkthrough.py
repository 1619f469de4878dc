"""The README walkthrough, timed end to end in the local console: `:sample` → `/ft train local` → `/ft eval`.

Starts `ftbot run` (no Slack credentials: the console, base model `ftbot:smollm2`) in a fresh ftbot home, types the
walkthrough like a person would (clicking *Start training* when the quote arrives, starting the round when the model
is registered) and reports how long each stage took, from `:sample` to the last blind comparison posted. The goal
on 2 CPU cores: under 5 minutes. The first comparison is printed so the answers can be read.

    .venv/bin/python bench/bench_walkthrough.py               # a cold start: converts SmolLM2 once (~20 s) first
    .venv/bin/python bench/bench_walkthrough.py --home DIR    # keep (or reuse) the ftbot home
"""

from __future__ import annotations

import argparse
import os
import queue
import re
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
GOAL_SECONDS = 300


class Console:
    """`ftbot run` in a subprocess, fed line by line; its output read by a thread."""

    def __init__(self, home: Path):
        env = {k: v for k, v in os.environ.items() if not k.startswith(("SLACK_", "OPENAI_", "FTBOT_"))}
        env.update(FTBOT_HOME=str(home), HF_HUB_OFFLINE="1", PYTHONUNBUFFERED="1")
        self.process = subprocess.Popen([str(Path(sys.executable).parent / "ftbot"), "run"], cwd=REPO, env=env, text=True,
                                        stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
        self.lines: queue.Queue[str] = queue.Queue()
        self.transcript: list[str] = []
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self) -> None:
        assert self.process.stdout is not None
        for line in self.process.stdout:
            self.lines.put(line.rstrip("\n"))

    def type(self, line: str) -> None:
        assert self.process.stdin is not None
        self.process.stdin.write(line + "\n")
        self.process.stdin.flush()

    def wait_for(self, pattern: str, timeout: float) -> re.Match[str]:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                line = self.lines.get(timeout=1)
            except queue.Empty:
                if self.process.poll() is not None:
                    break  # the console ended: no more lines will come
                continue
            self.transcript.append(line)
            match = re.search(pattern, line)
            if match:
                return match
        raise TimeoutError(f"no line matching {pattern!r} within {timeout:.0f} s; last lines:\n" + "\n".join(self.transcript[-30:]))

    def close(self) -> None:
        try:
            self.type(":quit")
            self.process.wait(timeout=30)
        except (OSError, subprocess.TimeoutExpired):
            self.process.kill()


def run(home: Path) -> list[tuple[str, float]]:
    console = Console(home)
    stages: list[tuple[str, float]] = []
    try:
        console.wait_for(r"Type a message|:help", 120)
        started = time.perf_counter()

        def mark(stage: str) -> None:
            stages.append((stage, time.perf_counter() - started))

        console.type(":sample")
        console.wait_for(r"sample dataset: \d+ examples", 60)
        mark(":sample loaded")
        console.type(":as lead")
        console.type("/ft train local")
        button = console.wait_for(r"\[(\d+): Start training\]", 120)
        mark("quote shown")
        console.type(f":click {button.group(1)}")
        console.wait_for(r"is registered", 1200)
        mark("model trained and registered")
        console.type("/ft eval")
        total = int(console.wait_for(r"Blind comparison 1 of (\d+)", 1200).group(1))
        mark("first comparison posted")
        first = len(console.transcript)
        console.wait_for(rf"Blind comparison {total} of {total}", 600)
        mark(f"all {total} comparisons posted")
        print("\n".join(console.transcript[first - 1 : first + 14]))
    finally:
        console.close()
    return stages


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--home", type=Path, help="the ftbot home to use (default: a fresh temporary one)")
    args = parser.parse_args()
    home = args.home or Path(tempfile.mkdtemp(prefix="ftbot-walkthrough-"))
    stages = run(home)
    print("\n| stage | seconds since :sample |\n| --- | --- |")
    for stage, seconds in stages:
        print(f"| {stage} | {seconds:.0f} |")
    total = stages[-1][1]
    print(f"\nfrom :sample to the last comparison: {total:.0f} s (goal < {GOAL_SECONDS} s: "
          f"{'met' if total < GOAL_SECONDS else 'missed'}) on {os.cpu_count()} CPU cores")


if __name__ == "__main__":
    main()

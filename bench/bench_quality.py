"""Does fine-tuning teach a real model the team's facts and voice? Base vs fine-tuned SmolLM2 on a fictional shop.

A generated support dataset for "Larkspur Outdoor" (a fictional shop) with consistent facts — a 45-day return window,
the returns page, a 3-year warranty, free shipping over $60, the support address — and a consistent voice (a greeting
and the signature "— Robin, Larkspur Support"), over varied customer questions. Held-out questions share the facts,
never the text: they are built from question templates and products the training set never used.

It trains ``ftbot:smollm2`` with ftbot's own on-prem recipe (``trainers.training.local.train``: LoRA on CPU; QLoRA
4-bit on CUDA) and reports, base vs fine-tuned, in one run:

- held-out loss: mean NLL per assistant token of the held-out replies (``trainers.evaluation.loss``);
- fact recall: share of greedy answers to held-out questions that contain the expected fact string;
- signature: share of answers signed like the team;
- wall time, training tokens/s, and on CUDA the peak GPU memory.

Goals: held-out loss at least 15 % lower; fact recall from near 0 to at least 50 %.

    .venv/bin/python bench/bench_quality.py            # ~10 minutes on 2 CPU cores
    .venv/bin/python bench/bench_quality.py --quick    # fewer examples and questions (~5 minutes), a smoke run
    python bench/bench_quality.py --json out.json      # also write the figures as JSON (the GPU script reads them)
"""

from __future__ import annotations

import argparse
import json
import os
import random
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

SYSTEM = "You are the customer support assistant of Larkspur Outdoor, an online shop for hiking and camping gear."
SIGNATURE = "— Robin, Larkspur Support"


@dataclass(frozen=True)
class Fact:
    topic: str
    expected: str  # the string a correct answer contains
    answer: str  # the team's wording, with {product}


FACTS = [
    Fact("returns", "45 days", "You can return your {product} within 45 days of delivery for a full refund. "
         "Start the return at larkspur.example/returns and we will email you a prepaid label."),
    Fact("returns_page", "larkspur.example/returns", "Returns start at larkspur.example/returns: enter your order "
         "number and the email you ordered with, and a prepaid label for your {product} arrives by email."),
    Fact("warranty", "3-year warranty", "Your {product} is covered by our 3-year warranty against defects in materials "
         "and workmanship. Send a photo of the problem to help@larkspur.example and we will repair or replace it."),
    Fact("shipping", "over $60", "Shipping is free on orders over $60; below that it is a flat $5.95. "
         "Your {product} usually ships within one business day."),
    Fact("contact", "help@larkspur.example", "The quickest way to reach us about your {product} is "
         "help@larkspur.example; a person answers every email within one business day."),
]

TRAIN_PRODUCTS = ["tent", "sleeping bag", "backpack", "headlamp", "rain jacket", "camp stove", "water filter",
                  "trekking poles", "hammock", "sleeping pad"]
HELDOUT_PRODUCTS = ["hiking boots", "down vest", "cooler", "camp chair", "compass"]

QUESTIONS = {
    "returns": ["How long do I have to return my {product}?", "Can I still send back the {product} I bought last month?",
                "What is your return policy for a {product}?", "Is it too late to return a {product} after a few weeks?"],
    "returns_page": ["Where do I start a return for my {product}?", "How do I get a return label for the {product}?",
                     "Which page do I use to send back a {product}?", "How do I begin returning my {product}?"],
    "warranty": ["My {product} broke after a year. Is it covered?", "What warranty comes with the {product}?",
                 "The zipper on my {product} failed, what can I do?", "Do you guarantee the {product} against defects?"],
    "shipping": ["Do you charge for shipping on a {product}?", "How much is delivery for a {product}?",
                 "Is shipping free if I order a {product}?", "What does shipping cost for a {product}?"],
    "contact": ["How can I contact you about my {product}?", "Who do I email about a problem with my {product}?",
                "What is your support email? It is about my {product}.", "How do I reach a person about my {product}?"],
}
# Held-out phrasings: the same facts asked in words the training set never used.
HELDOUT_QUESTIONS = {
    "returns": ["I changed my mind about the {product}. Until when can I give it back?"],
    "returns_page": ["I want to send the {product} back. What website should I go to?"],
    "warranty": ["Part of my {product} came apart. How long are you responsible for defects?"],
    "shipping": ["Before I buy the {product}: will I pay for postage?"],
    "contact": ["I need to talk to someone at Larkspur about the {product}. What address do I write to?"],
}
GREETINGS = ["Hi there!", "Hello!", "Thanks for reaching out!", "Hi, thanks for asking!"]


def reply(fact: Fact, product: str, rng: random.Random) -> str:
    return f"{rng.choice(GREETINGS)} {fact.answer.format(product=product)}\n{SIGNATURE}"


def conversation(question: str, answer: str | None) -> dict:
    messages = [{"role": "system", "content": SYSTEM}, {"role": "user", "content": question}]
    if answer is not None:
        messages.append({"role": "assistant", "content": answer})
    return {"messages": messages}


def build_dataset(quick: bool, seed: int = 0) -> tuple[list[dict], list[tuple[dict, str]]]:
    """(training lines, held-out (line with the team's reply, expected fact))."""
    rng = random.Random(seed)
    products = TRAIN_PRODUCTS[:5] if quick else TRAIN_PRODUCTS
    train = [conversation(q.format(product=p), reply(f, p, rng)) for f in FACTS for q in QUESTIONS[f.topic] for p in products]
    rng.shuffle(train)
    heldout_products = HELDOUT_PRODUCTS[:2] if quick else HELDOUT_PRODUCTS
    heldout = [(conversation(q.format(product=p), reply(f, p, rng)), f.expected)
               for f in FACTS for q in HELDOUT_QUESTIONS[f.topic] for p in heldout_products]
    return train, heldout


def answers(generator, heldout, max_new_tokens: int) -> list[str]:
    from trainers.evaluation.inference import GenerationSettings

    prompts = [line["messages"][:-1] for line, _ in heldout]
    return [g.text for g in generator.generate(prompts, GenerationSettings(max_new_tokens=max_new_tokens), batch_size=8)]


def recall(texts: list[str], heldout) -> float:
    return sum(expected.lower() in text.lower() for text, (_, expected) in zip(texts, heldout, strict=True)) / len(heldout)


def signed(texts: list[str]) -> float:
    return sum("Larkspur Support" in text for text in texts) / len(texts)


def run(args: argparse.Namespace) -> dict:
    import torch

    from trainers.evaluation.inference import LocalGenerator
    from trainers.training.local.base_models import resolve_base_model
    from trainers.training.local.config import SMOLLM2_BASE_MODEL, LocalTrainConfig
    from trainers.training.local.train import train

    train_lines, heldout = build_dataset(args.quick)
    work = Path(args.work or tempfile.mkdtemp(prefix="ftbot-quality-"))
    models_dir = work / "models"
    started = time.perf_counter()
    base_dir = resolve_base_model(SMOLLM2_BASE_MODEL, models_dir)
    convert_seconds = time.perf_counter() - started
    cuda = torch.cuda.is_available()
    if cuda:
        torch.cuda.reset_peak_memory_stats()

    base = LocalGenerator(base_dir)
    base_answers = answers(base, heldout, args.max_new_tokens)
    del base

    config = LocalTrainConfig(base_model=SMOLLM2_BASE_MODEL, epochs=args.epochs, learning_rate=args.lr,
                              batch_size=args.batch, packing=False, lora_r=16, lora_alpha=32, lora_dropout=0.0,
                              logging_steps=5, load_in_4bit=True if cuda else None)
    result = train(config, train_lines, [], models_dir / "run", heldout=[line["messages"] for line, _ in heldout])
    tuned = LocalGenerator(base_dir, str(result.adapter_dir))
    tuned_answers = answers(tuned, heldout, args.max_new_tokens)
    total = time.perf_counter() - started
    assert result.heldout is not None and result.baseline_heldout is not None
    figures = {
        "device": torch.cuda.get_device_name(0) if cuda else f"CPU ({torch.get_num_threads()} threads)",
        "method": "QLoRA 4-bit NF4" if result.quantized else "LoRA fp32",
        "train_examples": len(train_lines), "heldout_questions": len(heldout), "epochs": args.epochs, "lr": args.lr,
        "baseline_loss": result.baseline_heldout.loss, "loss": result.heldout.loss,
        "loss_change": (result.heldout.loss - result.baseline_heldout.loss) / result.baseline_heldout.loss,
        "baseline_recall": recall(base_answers, heldout), "recall": recall(tuned_answers, heldout),
        "baseline_signed": signed(base_answers), "signed": signed(tuned_answers),
        "train_tokens": result.train_tokens, "train_seconds": result.train_seconds,
        "tokens_per_second": result.tokens_per_second, "convert_seconds": convert_seconds, "wall_seconds": total,
        "peak_gpu_memory_gib": torch.cuda.max_memory_allocated() / 2**30 if cuda else None,
        "example": {"question": heldout[0][0]["messages"][1]["content"], "base": base_answers[0], "tuned": tuned_answers[0]},
    }
    return figures


def table(f: dict) -> str:
    loss_goal = "met" if f["loss_change"] <= -0.15 else "missed"
    recall_goal = "met" if f["recall"] >= 0.5 else "missed"
    rows = [
        ("held-out loss (nats/token)", f"{f['baseline_loss']:.3f}", f"{f['loss']:.3f}",
         f"{f['loss_change']:+.0%} (goal ≤ −15 %: {loss_goal})"),
        ("fact recall", f"{f['baseline_recall']:.0%}", f"{f['recall']:.0%}", f"goal ≥ 50 %: {recall_goal}"),
        ("signed like the team", f"{f['baseline_signed']:.0%}", f"{f['signed']:.0%}", ""),
    ]
    lines = [f"{f['device']} · {f['method']} · {f['train_examples']} training conversations, {f['epochs']} epochs, "
             f"lr {f['lr']} · {f['heldout_questions']} held-out questions",
             "", "| measure | SmolLM2 base | fine-tuned | change / goal |", "| --- | --- | --- | --- |"]
    lines += [f"| {a} | {b} | {c} | {d} |" for a, b, c, d in rows]
    memory = f", peak GPU memory {f['peak_gpu_memory_gib']:.2f} GiB" if f["peak_gpu_memory_gib"] is not None else ""
    lines += ["", f"training: {f['train_tokens']:,} tokens in {f['train_seconds']:.0f} s = {f['tokens_per_second']:.0f} tokens/s{memory}; "
              f"one-time conversion {f['convert_seconds']:.0f} s; whole benchmark {f['wall_seconds']:.0f} s",
              "", f"example — {f['example']['question']}", f"  base:       {f['example']['base'][:200]!r}",
              f"  fine-tuned: {f['example']['tuned'][:200]!r}"]
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="fewer products: a smoke run")
    parser.add_argument("--epochs", type=float, default=3.0)
    parser.add_argument("--lr", type=float, default=1e-3)
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--max-new-tokens", type=int, default=80)
    parser.add_argument("--work", help="keep the converted model and the adapter here (default: a temporary folder)")
    parser.add_argument("--json", help="also write the figures to this file")
    args = parser.parse_args()
    figures = run(args)
    print(table(figures))
    if args.json:
        Path(args.json).write_text(json.dumps(figures, indent=2))


if __name__ == "__main__":
    main()

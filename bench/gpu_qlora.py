"""QLoRA throughput and peak memory on a Llama-shaped ~1B model with random weights (built offline from a config).

One prepared script for a GPU machine (no downloads: the model is created from a ``LlamaConfig`` and saved locally,
then loaded in 4-bit NF4 exactly as ftbot's on-prem back end loads a base model). It trains LoRA adapters with
TRL's ``SFTTrainer`` for a few steps per variant and prints tokens/s/GPU and peak GPU memory next to the published
anchors (7B, A100 40 GB, batch 4, length 1024: HF QLoRA ≈ 2,415 tokens/s, Unsloth ≈ 3,726).
A 1.1B model on a newer GPU is expected to be several times faster than those 7B figures; the anchors only place
the numbers, they are not a like-for-like comparison.

Variants (same model, same LoRA r=16 on all linear layers, bf16 compute, gradient checkpointing):
  qlora-fixed   4-bit base, batch 4 × 1024 tokens of full rows (the anchors' setting)
  qlora-packed  4-bit base, length-diverse conversations packed padding-free (BFD), rows of 1024 × batch 4
  lora-bf16     bf16 base (no quantization), batch 4 × 1024: what 4-bit saves in memory

With ``--smollm2`` the same run also fine-tunes ``ftbot:smollm2`` (the bundled SmolLM2-135M-Instruct) end to end with
ftbot's own recipe — QLoRA 4-bit NF4 on CUDA — on the fictional shop of ``bench/bench_quality.py``: train, held-out
loss (base vs fine-tuned), greedy answers and their fact recall, training tokens/s and peak GPU memory.

    python bench/gpu_qlora.py                 # on the GPU machine: about 3-5 minutes on one H100/H200/A100
    python bench/gpu_qlora.py --smollm2       # ... plus SmolLM2 end to end (about 2 more minutes)
    python bench/gpu_qlora.py --tiny          # anywhere (CPU too): a tiny model, checks the script works
    python bench/gpu_qlora.py --variants "" --smollm2 --quick   # only SmolLM2, on a smaller dataset
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import os
import random
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

ANCHORS = [
    ("HF QLoRA, 7B, A100 40 GB (published)", 2415),
    ("Unsloth QLoRA, 7B, A100 40 GB (published)", 3726),
    ("HF 16-bit LoRA + FA2, 7B, A100 40 GB (published)", 2954),
]


def llama_config(tiny: bool):
    from transformers import LlamaConfig

    if tiny:
        return LlamaConfig(vocab_size=1024, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                           num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=4096)
    # TinyLlama-1.1B's shape: 22 layers, hidden 2048, GQA with 4 KV heads, vocab 32k.
    return LlamaConfig(vocab_size=32000, hidden_size=2048, intermediate_size=5632, num_hidden_layers=22,
                       num_attention_heads=32, num_key_value_heads=4, max_position_embeddings=4096,
                       rms_norm_eps=1e-5, rope_theta=10000.0, tie_word_embeddings=False)


def build_random_model(directory: Path, tiny: bool) -> Path:
    import torch
    from transformers import LlamaForCausalLM

    from trainers.tiny_model import build_tiny_model

    config = llama_config(tiny)
    torch.manual_seed(0)
    cuda = torch.cuda.is_available()
    # Initialise on the GPU in bf16: a 1.1B fp32 init on the CPU takes minutes and 4+ GiB of RAM.
    with torch.device("cuda" if cuda else "cpu"):
        model = LlamaForCausalLM._from_config(config, dtype=torch.bfloat16 if cuda else torch.float32)
    model.save_pretrained(directory)
    # A tokenizer for the trainer's padding logic only: the data below is already token ids.
    tokenizer_dir = build_tiny_model(directory / "tokenizer-source")
    for name in ("tokenizer.json", "tokenizer_config.json", "chat_template.jinja"):
        source = tokenizer_dir / name
        if source.exists():
            (directory / name).write_bytes(source.read_bytes())
    params = sum(p.numel() for p in model.parameters())
    del model
    print(f"built a random Llama with {params / 1e9:.2f} B parameters in {directory}", file=sys.stderr)
    return directory


def token_rows(n: int, vocab: int, *, length: int | None, seed: int = 0) -> list[dict]:
    """Rows of token ids: fixed ``length``, or length-diverse (64-1024, skewed short like support threads)."""
    rng = random.Random(seed)
    rows = []
    for _ in range(n):
        size = length or min(1024, max(64, int(rng.lognormvariate(5.6, 0.6))))
        rows.append({"input_ids": [rng.randrange(3, vocab) for _ in range(size)]})
    return rows


class Stopwatch:
    """Times the steps after a warm-up (kernels loaded, allocator settled), from TRL's per-step token counts."""

    def __init__(self, warmup: int, steps: int):
        self.warmup, self.steps = warmup, steps
        self.start: tuple[float, int] | None = None
        self.end: tuple[float, int] | None = None

    def callback(self):
        from transformers import TrainerCallback

        watch = self

        class _Callback(TrainerCallback):
            def on_log(self, args, state, control, logs=None, **kwargs):
                if not logs or "num_tokens" not in logs:
                    return
                if state.global_step in (watch.warmup, watch.steps):
                    _sync()
                    mark = (time.perf_counter(), int(logs["num_tokens"]))
                    if state.global_step == watch.warmup:
                        watch.start = mark
                    else:
                        watch.end = mark

        return _Callback()

    def tokens_per_second(self) -> tuple[int, float]:
        if self.start is None or self.end is None:
            return 0, 0.0
        return self.end[1] - self.start[1], self.end[0] - self.start[0]


def _sync() -> None:
    import torch

    if torch.cuda.is_available():
        torch.cuda.synchronize()


def run_variant(name: str, model_dir: Path, rows: list[dict], *, quantize: bool, packing: bool, steps: int, warmup: int,
                batch: int, length: int, tiny: bool) -> dict:
    import torch
    from datasets import Dataset
    from peft import LoraConfig
    from transformers import AutoModelForCausalLM, AutoTokenizer, BitsAndBytesConfig
    from trl import SFTConfig, SFTTrainer

    cuda = torch.cuda.is_available()
    bf16 = cuda and torch.cuda.is_bf16_supported()
    if cuda:
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats()
    kwargs = {"dtype": torch.bfloat16 if bf16 else torch.float32}
    if quantize:
        kwargs["quantization_config"] = BitsAndBytesConfig(
            load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_use_double_quant=True,
            bnb_4bit_compute_dtype=torch.bfloat16 if bf16 or not cuda else torch.float32,
        )
    if cuda:
        kwargs["device_map"] = {"": 0}
    import importlib.util

    # FlashAttention 2 when installed (varlen kernels make packing pay off fully); SDPA otherwise.
    attention = "flash_attention_2" if cuda and importlib.util.find_spec("flash_attn") else "sdpa"
    model = AutoModelForCausalLM.from_pretrained(model_dir, attn_implementation=attention, **kwargs)
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    args = SFTConfig(
        output_dir=str(model_dir / f"out-{name}"), max_steps=steps, per_device_train_batch_size=batch,
        learning_rate=2e-4, logging_steps=1, save_strategy="no", report_to="none", disable_tqdm=True,
        max_length=length, packing=packing, gradient_checkpointing=cuda, bf16=bf16, use_cpu=not cuda,
        dataloader_num_workers=0, seed=0,
    )
    watch = Stopwatch(warmup, steps)
    trainer = SFTTrainer(
        model=model, args=args, train_dataset=Dataset.from_list(rows), processing_class=tokenizer,
        peft_config=LoraConfig(r=16, lora_alpha=32, lora_dropout=0.0, target_modules="all-linear", task_type="CAUSAL_LM"),
        callbacks=[watch.callback()],
    )
    with contextlib.redirect_stdout(io.StringIO()):
        trainer.train()
    tokens, elapsed = watch.tokens_per_second()
    peak = torch.cuda.max_memory_allocated() / 2**30 if cuda else None
    losses = [e["loss"] for e in trainer.state.log_history if "loss" in e]
    del trainer, model
    if cuda:
        torch.cuda.empty_cache()
    return {"variant": name, "tokens": tokens, "seconds": round(elapsed, 2),
            "tokens_per_s": round(tokens / elapsed, 1) if elapsed else None,
            "peak_gib": round(peak, 2) if peak is not None else None, "attention": attention,
            "first_loss": losses[0] if losses else None, "last_loss": losses[-1] if losses else None}


def run_random_llama(args: argparse.Namespace, variants: list[str], *, steps: int, warmup: int, length: int) -> list[dict]:
    """The QLoRA / LoRA variants on the random Llama, printed as one table next to the published anchors."""
    import torch

    device = torch.cuda.get_device_name(0) if torch.cuda.is_available() else "CPU"
    vocab = llama_config(args.tiny).vocab_size
    rows_needed = (steps + 2) * args.batch * 4
    with tempfile.TemporaryDirectory(prefix="ftbot-gpu-bench-") as tmp:
        model_dir = build_random_model(Path(tmp) / "llama", args.tiny)
        fixed = token_rows(rows_needed, vocab, length=length)
        diverse = token_rows(rows_needed, vocab, length=None, seed=1)
        if args.tiny:  # keep the tiny check's rows short: it only proves the script runs
            diverse = [{"input_ids": r["input_ids"][: max(16, len(r["input_ids"]) // 8)]} for r in diverse]
        plan = {
            "qlora-fixed": dict(quantize=True, packing=False, rows=fixed),
            "qlora-packed": dict(quantize=True, packing=True, rows=diverse),
            "lora-bf16": dict(quantize=False, packing=False, rows=fixed),
        }
        results = []
        for name in variants:
            spec = plan[name]
            print(f"running {name} ...", file=sys.stderr)
            results.append(run_variant(name, model_dir, spec["rows"], quantize=spec["quantize"], packing=spec["packing"],
                                       steps=steps, warmup=warmup, batch=args.batch, length=length, tiny=args.tiny))

    size = "tiny Llama (CPU check)" if args.tiny else "Llama-shaped 1.1B, random weights"
    print(f"\n{size} on {device}; LoRA r=16 all-linear; batch {args.batch} × {length}; {steps} steps, first {warmup} untimed\n")
    print(f"| {'run':<48} | {'tokens/s/GPU':>12} | {'peak GiB':>8} | {'attention':>17} | {'loss first→last':>17} |")
    print(f"|{'-' * 50}|{'-' * 14}|{'-' * 10}|{'-' * 19}|{'-' * 19}|")
    for r in results:
        loss = f"{r['first_loss']:.3f}→{r['last_loss']:.3f}" if r["first_loss"] is not None else "-"
        peak = f"{r['peak_gib']:.2f}" if r["peak_gib"] is not None else "-"  # no GPU memory on CPU
        print(f"| {r['variant']:<48} | {r['tokens_per_s'] or 0:>12,.0f} | {peak:>8} | {r['attention']:>17} | {loss:>17} |")
    for label, value in ANCHORS:
        print(f"| {label:<48} | {value:>12,} | {'-':>8} | {'-':>17} | {'-':>17} |")
    if args.json:
        print(json.dumps({"device": device, "tiny": args.tiny, "results": results}, indent=2))
    return results


def main() -> int:
    parser = argparse.ArgumentParser(description="QLoRA tokens/s and peak memory on a random ~1B Llama")
    parser.add_argument("--tiny", action="store_true", help="a tiny model: checks the script on any machine (CPU too)")
    parser.add_argument("--steps", type=int, default=None, help="training steps per variant (default 30; tiny: 6)")
    parser.add_argument("--warmup", type=int, default=None, help="steps not timed (default 5; tiny: 2)")
    parser.add_argument("--batch", type=int, default=4)
    parser.add_argument("--length", type=int, default=None, help="tokens per row (default 1024; tiny: 128)")
    parser.add_argument("--variants", default="qlora-fixed,qlora-packed,lora-bf16")
    parser.add_argument("--json", action="store_true", help="also print the results as JSON")
    parser.add_argument("--smollm2", action="store_true", help="also fine-tune ftbot:smollm2 end to end (bench_quality)")
    parser.add_argument("--quick", action="store_true", help="--smollm2 on the smaller dataset (bench_quality --quick)")
    parser.add_argument("--smollm2-json", help="write the SmolLM2 figures to this file")
    args = parser.parse_args()

    import torch

    steps = args.steps or (6 if args.tiny else 30)
    warmup = args.warmup if args.warmup is not None else (2 if args.tiny else 5)
    length = args.length or (128 if args.tiny else 1024)
    if not torch.cuda.is_available() and not args.tiny and not (args.smollm2 and not args.variants.strip()):
        print("No CUDA GPU here: run with --tiny to check the script, or on the GPU machine for the real figures.",
              file=sys.stderr)
        return 2
    variants = [v.strip() for v in args.variants.split(",") if v.strip()]
    if variants:
        run_random_llama(args, variants, steps=steps, warmup=warmup, length=length)
    if args.smollm2:
        run_smollm2(args)
    return 0


def run_smollm2(args: argparse.Namespace) -> dict:
    """ftbot:smollm2 end to end with ftbot's own recipe (QLoRA 4-bit on CUDA): bench_quality's run, one table."""
    from bench import bench_quality

    settings = argparse.Namespace(quick=args.quick, epochs=3.0, lr=1e-3, batch=8, max_new_tokens=80, work=None, json=None)
    print("\nrunning ftbot:smollm2 end to end (bench_quality) ...", file=sys.stderr)
    figures = bench_quality.run(settings)
    print("\n" + bench_quality.table(figures))
    if args.smollm2_json:
        Path(args.smollm2_json).write_text(json.dumps(figures, indent=2))
    return figures


if __name__ == "__main__":
    raise SystemExit(main())

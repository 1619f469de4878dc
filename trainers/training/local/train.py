"""LoRA / QLoRA fine-tuning with TRL: SFT on conversations, DPO on preference pairs.

This module imports the heavy stack at call time; only the worker process (and tests, benchmarks) call it.
"""

from __future__ import annotations

import copy
import logging
import math
import os
import shutil
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, cast

from storage.artifacts import artifact_exists, is_remote, keep_as_copy, local_copy, upload_dir
from storage.config import Settings
from storage.errors import ArtifactError, ConfigError, TrainingError
from trainers.evaluation.loss import Conversation, HeldoutLoss, assistant_token_loss, prepare_scoring_tokenizer
from trainers.training.local.base_models import resolve_base_model
from trainers.training.local.chat_template import ensure_generation_markers
from trainers.training.local.config import LocalTrainConfig
from trainers.training.local.data import dpo_row, sft_row

if TYPE_CHECKING:
    import torch
    from peft import PeftModel
    from transformers import PreTrainedModel
    from trl import DPOTrainer, SFTTrainer

log = logging.getLogger(__name__)

# Scoring is a forward pass per conversation, twice: a bounded sample keeps it a small part of the run.
MAX_HELDOUT_SCORED = 256

MetricSink = Callable[[int, "float | None", "float | None", dict[str, Any]], None]
ProgressSink = Callable[[dict[str, Any]], None]
StopCheck = Callable[[], bool]


@dataclass
class TrainResult:
    adapter_dir: Path
    merged_dir: Path | None
    steps: int
    train_tokens: int
    train_seconds: float
    # CPU time of this process (all threads) during training: stable when other jobs share the machine.
    train_cpu_seconds: float = 0.0
    log_history: list[dict[str, Any]] = field(default_factory=list)
    assistant_only_loss: bool = True
    quantized: bool = False
    # The model the adapter applies to: the base, or for DPO that continued a fine-tuned model, the merged parent.
    adapter_base: str | None = None
    # Held-out assistant-token loss after training, adapter on (the fine-tune) and off (what it started from).
    heldout: HeldoutLoss | None = None
    baseline_heldout: HeldoutLoss | None = None

    @property
    def tokens_per_second(self) -> float:
        return self.train_tokens / self.train_seconds if self.train_seconds else 0.0


def merged_parent(parent_location: str | Path, parent_base: str) -> str:
    """The fine-tuned parent as one full model directory, to continue training from (DPO after SFT).

    A full model directory is used as is. An adapter is merged into ``parent_base`` reloaded in bf16/fp32 (never
    into a 4-bit base: PEFT warns of rounding errors) and saved next to it as ``merged/`` — the same export
    ``--merge`` writes, so a parent merged once (or exported) is reused. A 4-bit run then quantizes the merged
    weights as it loads them. Written to a temporary directory and renamed, so concurrent runs never see half a model.

    A parent in a remote artifact store (``s3://…``) is read through this machine's copy, and its merged model is
    published next to it in the store: the location returned is then that URL (load it with ``local_copy``).
    """
    if is_remote(str(parent_location)):
        return _merged_remote_parent(str(parent_location), parent_base)
    location = Path(parent_location)
    if not location.is_dir():
        raise ConfigError(f"the parent model's directory {location} does not exist; was its job directory removed? "
                          "Continue from another model (--from NAME) or from the base model (--from base).")
    if (location / "config.json").is_file() and not (location / "adapter_config.json").is_file():
        return str(location)
    target = location.parent / "merged"
    if (target / "config.json").is_file():
        return str(target)
    scratch = location.parent / f".merged-{os.getpid()}"
    merge_adapter(parent_base, location, scratch)
    try:
        os.replace(scratch, target)
    except OSError:
        if not (target / "config.json").is_file():
            raise
        shutil.rmtree(scratch, ignore_errors=True)  # another process merged it first: use theirs
    log.info("merged the parent adapter %s into %s: DPO continues from %s", location, parent_base, target)
    return str(target)


def _merged_remote_parent(location: str, parent_base: str) -> str:
    """:func:`merged_parent` for a parent adapter in a remote store: merged once, by whichever node needs it first."""
    settings = Settings.from_env()
    try:
        local = local_copy(location, settings)
        if (local / "config.json").is_file() and not (local / "adapter_config.json").is_file():
            return location
        target = location.rstrip("/").rsplit("/", 1)[0] + "/merged"
        if artifact_exists(target, settings):
            return target
    except ArtifactError as error:
        raise ConfigError(f"the parent model cannot be read: {error} Continue from another model (--from NAME) or "
                          "from the base model (--from base).") from error
    scratch = Path(tempfile.mkdtemp(prefix=".merge-", dir=local.parent))
    try:
        merge_adapter(parent_base, local, scratch / "merged")
        upload_dir(scratch / "merged", target, endpoint_url=settings.artifacts_endpoint_url)
        keep_as_copy(scratch / "merged", target, settings)
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    log.info("merged the parent adapter %s into %s: DPO continues from %s", location, parent_base, target)
    return target


def _device_setup(config: LocalTrainConfig) -> dict[str, Any]:
    # Local: the ML stack, loaded only where training runs (module docstring).
    import torch

    cuda = torch.cuda.is_available()
    load_in_4bit = config.load_in_4bit if config.load_in_4bit is not None else cuda
    bf16 = cuda and torch.cuda.is_bf16_supported()
    return {"cuda": cuda, "load_in_4bit": load_in_4bit, "bf16": bf16}


def load_model_and_tokenizer(base_model: str, config: LocalTrainConfig):
    """The base model (4-bit NF4 when asked or on CUDA by default) and its tokenizer."""
    # Local: the ML stack, loaded only where training runs (module docstring).
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer, BitsAndBytesConfig

    setup = _device_setup(config)
    kwargs: dict[str, Any] = {}
    if setup["load_in_4bit"]:
        # fp16 compute with 4-bit weights gives NaN losses: bf16 on GPUs that have it, else fp32.
        compute = torch.bfloat16 if setup["bf16"] or not setup["cuda"] else torch.float32
        kwargs["quantization_config"] = BitsAndBytesConfig(
            load_in_4bit=True,
            bnb_4bit_quant_type="nf4",
            bnb_4bit_use_double_quant=True,
            bnb_4bit_compute_dtype=compute,
        )
    kwargs["dtype"] = torch.bfloat16 if setup["bf16"] else torch.float32
    try:
        tokenizer = AutoTokenizer.from_pretrained(base_model)
        model = AutoModelForCausalLM.from_pretrained(base_model, **kwargs)
    except OSError as error:
        raise ConfigError(
            f"cannot load base model {base_model!r}: {error}. Set FTBOT_LOCAL_BASE_MODEL (or --base-model) to a local "
            "directory or a Hugging Face id that is cached on this machine."
        ) from error
    if tokenizer.pad_token is None:
        # A pad token equal to EOS would mask EOS out of the labels (the model never learns to stop): add one.
        tokenizer.add_special_tokens({"pad_token": "<|ftbot_pad|>"})
        model.resize_token_embeddings(len(tokenizer))
    return model, tokenizer, setup


def _lora_config(config: LocalTrainConfig):
    # Local: the ML stack, loaded only where training runs (module docstring).
    from peft import LoraConfig

    return LoraConfig(
        r=config.lora_r,
        lora_alpha=config.lora_alpha,
        lora_dropout=config.lora_dropout,
        target_modules="all-linear",
        task_type="CAUSAL_LM",
    )


def _common_args(config: LocalTrainConfig, output_dir: Path, setup: dict[str, Any], has_eval: bool) -> dict[str, Any]:
    args: dict[str, Any] = dict(
        output_dir=str(output_dir / "checkpoints"),
        num_train_epochs=config.epochs,
        max_steps=config.max_steps,
        learning_rate=config.learning_rate,
        per_device_train_batch_size=config.batch_size,
        per_device_eval_batch_size=config.batch_size,
        gradient_accumulation_steps=config.gradient_accumulation_steps,
        max_length=config.max_length,
        logging_steps=config.logging_steps,
        save_strategy="no",
        report_to="none",
        seed=config.seed,
        # Checkpointing trades compute for memory; on CPU and for small models it only slows training down.
        gradient_checkpointing=setup["cuda"],
        bf16=setup["bf16"],
        use_cpu=not setup["cuda"],
        disable_tqdm=True,
        dataloader_num_workers=0,
    )
    if has_eval:
        if config.eval_steps:
            args.update(eval_strategy="steps", eval_steps=config.eval_steps)
        else:
            args.update(eval_strategy="epoch")
    return args


def _callback(metric_sink: MetricSink | None, progress_sink: ProgressSink | None, should_stop: StopCheck | None):
    # Local: the ML stack, loaded only where training runs (module docstring).
    from transformers import TrainerCallback

    class RelayCallback(TrainerCallback):
        """Forwards logged losses and progress (main process only) and stops when the job was cancelled."""

        def on_log(self, args, state, control, logs=None, **kwargs):
            if not state.is_world_process_zero or not logs:
                return
            train_loss = logs.get("loss")
            valid_loss = logs.get("eval_loss")
            if metric_sink is not None and (train_loss is not None or valid_loss is not None):
                extra = {k: v for k, v in logs.items() if k not in ("loss", "eval_loss") and isinstance(v, (int, float))}
                metric_sink(state.global_step, train_loss, valid_loss, extra)
            if progress_sink is not None:
                progress_sink({"step": state.global_step, "max_steps": state.max_steps, "epoch": state.epoch})

        def on_step_end(self, args, state, control, **kwargs):
            if should_stop is not None and state.global_step % 5 == 0 and should_stop():
                control.should_training_stop = True

    return RelayCallback()


def train(
    config: LocalTrainConfig,
    train_records: Sequence[dict[str, Any]],
    valid_records: Sequence[dict[str, Any]],
    output_dir: str | Path,
    *,
    metric_sink: MetricSink | None = None,
    progress_sink: ProgressSink | None = None,
    should_stop: StopCheck | None = None,
    heldout: Sequence[Conversation] = (),
) -> TrainResult:
    """Train a LoRA adapter on OpenAI-format records; save adapter + tokenizer to ``output_dir/adapter``.

    ``heldout``: conversations never trained on, each ending with the team's reply; their assistant-token loss is
    measured after training with the adapter on and off, so the team sees whether the run is worth their votes."""
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    # Local: the ML stack, loaded only where training runs (module docstring).
    from datasets import Dataset

    output_dir = Path(output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)
    base = resolve_base_model(config.base_model, output_dir.parent)
    adapter_base = base  # what the adapter applies to, as recorded: a store URL when the merged parent is remote
    if config.parent_location:
        parent_base = base
        if config.parent_base_model:
            # A DPO parent's own base is its merged parent, which may live in a remote artifact store.
            parent_base = (str(local_copy(config.parent_base_model)) if is_remote(config.parent_base_model)
                           else resolve_base_model(config.parent_base_model, output_dir.parent))
        adapter_base = merged_parent(config.parent_location, parent_base)
        base = str(local_copy(adapter_base)) if is_remote(adapter_base) else adapter_base
    model, tokenizer, setup = load_model_and_tokenizer(base, config)
    if not train_records:
        raise TrainingError("nothing to train on: the snapshot's train split is empty")

    callbacks = [_callback(metric_sink, progress_sink, should_stop)]
    common = _common_args(config, output_dir, setup, bool(valid_records))
    assistant_only = True
    trainer: SFTTrainer | DPOTrainer
    if config.method == "sft":
        # Local: the ML stack, loaded only where training runs (module docstring).
        from trl import SFTConfig, SFTTrainer

        assistant_only = ensure_generation_markers(tokenizer)
        train_ds = Dataset.from_list([sft_row(r) for r in train_records])
        eval_ds = Dataset.from_list([sft_row(r) for r in valid_records]) if valid_records else None
        sft_args = SFTConfig(
            **common,
            packing=config.packing,
            assistant_only_loss=assistant_only,
            # Packing with padding-free batches is exact only with eager/SDPA ignoring cross-sequence attention via
            # position_ids; evaluation stays unpacked so valid loss is per conversation.
            eval_packing=False,
        )
        trainer = SFTTrainer(
            model=model, args=sft_args, train_dataset=train_ds, eval_dataset=eval_ds, processing_class=tokenizer,
            peft_config=_lora_config(config), callbacks=callbacks,
        )
    else:
        # Local: the ML stack, loaded only where training runs (module docstring).
        from trl import DPOConfig, DPOTrainer

        train_ds = Dataset.from_list([dpo_row(r) for r in train_records])
        eval_ds = Dataset.from_list([dpo_row(r) for r in valid_records]) if valid_records else None
        dpo_args = DPOConfig(**common, beta=config.beta)
        # ref_model=None with a peft_config: the reference is the loaded model with the adapter disabled (no second
        # copy) — the merged parent when this run continues a fine-tuned model, so DPO moves away from that policy.
        trainer = DPOTrainer(
            model=model, ref_model=None, args=dpo_args, train_dataset=train_ds, eval_dataset=eval_ds,
            processing_class=tokenizer, peft_config=_lora_config(config), callbacks=callbacks,
        )

    started, cpu_started = time.perf_counter(), time.process_time()
    trainer.train()
    seconds, cpu_seconds = time.perf_counter() - started, time.process_time() - cpu_started
    if eval_ds is not None:
        metrics = trainer.evaluate()
        if metric_sink is not None and trainer.state.is_world_process_zero and "eval_loss" in metrics:
            metric_sink(trainer.state.global_step, None, metrics["eval_loss"], {})

    tuned_loss = base_loss = None
    if heldout and trainer.state.is_world_process_zero:
        tuned_loss, base_loss = _heldout_losses(trainer.model, tokenizer, heldout, config)

    adapter_dir = output_dir / "adapter"
    merged_dir = None
    if trainer.state.is_world_process_zero:
        # With a peft_config the trainer wraps the model in a PeftModel; TRL types trainer.model as the plain model.
        cast("PeftModel", trainer.model).save_pretrained(str(adapter_dir))
        tokenizer.save_pretrained(adapter_dir)
        if config.merge:
            merged_dir = merge_adapter(base, adapter_dir, output_dir / "merged")
    tokens = _tokens_seen(trainer)
    return TrainResult(
        adapter_dir=adapter_dir, merged_dir=merged_dir, steps=trainer.state.global_step, train_tokens=tokens,
        train_seconds=seconds, train_cpu_seconds=cpu_seconds, log_history=list(trainer.state.log_history),
        assistant_only_loss=assistant_only, quantized=bool(setup["load_in_4bit"]), adapter_base=adapter_base,
        heldout=tuned_loss, baseline_heldout=base_loss,
    )


def _heldout_losses(model: Any, tokenizer: Any, heldout: Sequence[Conversation],
                    config: LocalTrainConfig) -> tuple[HeldoutLoss | None, HeldoutLoss | None]:
    """(fine-tuned, baseline) held-out loss, or (None, None) when the template cannot mark assistant tokens: the
    run succeeded, only this figure is missing."""
    scoring = copy.deepcopy(tokenizer)
    try:
        prepare_scoring_tokenizer(scoring)
        conversations = list(heldout)[:MAX_HELDOUT_SCORED]
        tuned = assistant_token_loss(model, scoring, conversations, batch_size=config.batch_size, max_length=config.max_length)
        base = assistant_token_loss(model, scoring, conversations, batch_size=config.batch_size,
                                    max_length=config.max_length, adapter_disabled=True)
    except ConfigError as error:
        log.warning("held-out loss not measured: %s", error)
        return None, None
    log.info("held-out loss %.4f → %.4f on %d conversations", base.loss, tuned.loss, tuned.conversations)
    return tuned, base


def _tokens_seen(trainer) -> int:
    """Non-padding tokens the model trained on (TRL logs ``num_tokens`` cumulatively)."""
    seen = [entry["num_tokens"] for entry in trainer.state.log_history if "num_tokens" in entry]
    if seen:
        return int(max(seen))
    return int(getattr(trainer.state, "num_input_tokens_seen", 0) or 0)


def merge_adapter(base_model: str, adapter_dir: Path, merged_dir: Path) -> Path:
    """Export base + adapter as one full model: reload the base unquantized, merge, save (merging into 4-bit weights rounds them)."""
    # Local: the ML stack, loaded only where training runs (module docstring).
    import torch
    from peft import PeftModel
    from transformers import AutoModelForCausalLM, AutoTokenizer

    dtype = torch.bfloat16 if torch.cuda.is_available() and torch.cuda.is_bf16_supported() else torch.float32
    base = AutoModelForCausalLM.from_pretrained(base_model, dtype=dtype)
    tokenizer = AutoTokenizer.from_pretrained(adapter_dir)
    if len(tokenizer) != embedding_rows(base):
        base.resize_token_embeddings(len(tokenizer))
    merged = PeftModel.from_pretrained(base, adapter_dir).merge_and_unload()
    merged.save_pretrained(merged_dir)
    tokenizer.save_pretrained(merged_dir)
    return merged_dir


def embedding_rows(model: PreTrainedModel) -> int:
    """Rows of the model's input embedding matrix (its vocabulary, added tokens included)."""
    # transformers types get_input_embeddings() as any nn.Module; a causal LM's is an nn.Embedding.
    embeddings = cast("torch.nn.Embedding", model.get_input_embeddings())
    return embeddings.weight.shape[0]


def load_for_generation(adapter_dir: str | Path, base_model: str | None = None):
    """(model, tokenizer) from a saved adapter, ready to ``generate`` (the base is read from the adapter config)."""
    # Local: the ML stack, loaded only where training runs (module docstring).
    from peft import AutoPeftModelForCausalLM
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(adapter_dir)
    model = AutoPeftModelForCausalLM.from_pretrained(adapter_dir)
    model.eval()
    return model, tokenizer


def loss_drop(log_history: list[dict[str, Any]]) -> float:
    """Relative drop of the training loss from the first to the last logged step (0.3 = 30 % lower)."""
    losses = [entry["loss"] for entry in log_history if "loss" in entry and math.isfinite(entry["loss"])]
    if len(losses) < 2:
        return 0.0
    return (losses[0] - losses[-1]) / losses[0]

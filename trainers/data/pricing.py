"""What a fine-tune costs and when it pays for itself, from a dated price table users can edit.

The table is ``trainers/data/prices.toml``, or the file the caller names (``Settings.prices_file``, from
``FTBOT_PRICES_FILE``). Nothing here has a price in code: models, prices and context limits all come from that file.
"""

from __future__ import annotations

import math
import os
import tomllib
from dataclasses import asdict, dataclass, field
from functools import lru_cache
from pathlib import Path
from typing import Any

from storage.errors import ConfigError
from trainers.data.tokens import base_model_name

__all__ = [
    "DEFAULT_PRICES_FILE",
    "ModelPrice",
    "PriceTable",
    "TrainingQuote",
    "RoiEstimate",
    "OnPremEstimate",
    "default_epochs",
    "billed_tokens",
    "training_cost",
    "inference_cost",
    "roi_estimate",
    "on_prem_estimate",
    "load_price_table",
]

DEFAULT_PRICES_FILE = Path(__file__).with_name("prices.toml")
PER_TOKENS = 1_000_000
DEFAULT_CONTEXT_LIMIT = 65536


@dataclass(frozen=True, slots=True)
class ModelPrice:
    """Prices of one model, USD per 1M tokens (None where the table has no figure)."""

    name: str
    training: float | None
    input: float | None
    output: float | None
    base_input: float | None
    base_output: float | None
    context_limit: int
    fine_tunable: bool = True
    aliases: tuple[str, ...] = ()


@dataclass(frozen=True)
class PriceTable:
    as_of: str
    source: str
    currency: str
    path: Path
    models: dict[str, ModelPrice] = field(default_factory=dict)

    @classmethod
    def load(cls, path: str | os.PathLike[str] | None = None) -> PriceTable:
        """Read the table from ``path``, else the bundled file."""
        chosen = Path(path or DEFAULT_PRICES_FILE).expanduser()
        try:
            raw = tomllib.loads(chosen.read_text(encoding="utf-8"))
        except FileNotFoundError:
            raise ConfigError(f"price table {chosen} not found; fix FTBOT_PRICES_FILE or unset it to use the bundled table") from None
        except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
            raise ConfigError(f"price table {chosen} is not valid TOML ({exc}); fix the file") from None
        models: dict[str, ModelPrice] = {}
        for name, entry in (raw.get("models") or {}).items():
            if not isinstance(entry, dict):
                raise ConfigError(f"price table {chosen}: [models.\"{name}\"] must be a table")
            try:
                models[name] = ModelPrice(
                    name=name,
                    training=_price(entry, "training"),
                    input=_price(entry, "input"),
                    output=_price(entry, "output"),
                    base_input=_price(entry, "base_input"),
                    base_output=_price(entry, "base_output"),
                    context_limit=int(entry.get("context_limit", DEFAULT_CONTEXT_LIMIT)),
                    fine_tunable=bool(entry.get("fine_tunable", entry.get("training") is not None)),
                    aliases=tuple(entry.get("aliases", ())),
                )
            except (TypeError, ValueError) as exc:
                raise ConfigError(f"price table {chosen}: model {name!r}: {exc}") from None
        if not raw.get("as_of"):
            raise ConfigError(f"price table {chosen} has no as_of date; add as_of = \"YYYY-MM-DD\" so quotes say how fresh they are")
        return cls(str(raw["as_of"]), str(raw.get("source", "")).strip(), str(raw.get("currency", "USD")), chosen, models)

    def find(self, model: str) -> ModelPrice | None:
        """The entry for a model name, an alias, or a fine-tuned ``ft:`` name of either."""
        base = base_model_name(model)
        if base in self.models:
            return self.models[base]
        for entry in self.models.values():
            if base in entry.aliases:
                return entry
        return None

    def get(self, model: str) -> ModelPrice:
        entry = self.find(model)
        if entry is None:
            raise ConfigError(self.unknown_model_message(model))
        return entry

    def unknown_model_message(self, model: str) -> str:
        """What ``ftbot price`` and ``/ft price`` say about a model the table has no prices for."""
        known = ", ".join(sorted(self.models))
        return f"no prices for model {model!r} in {self.path}; use one of {known}, or add it to the table"

    def models_to_quote(self, chosen: str) -> list[str]:
        """Every fine-tunable model (``--all-models``), ``chosen`` first (its report is the one shown)."""
        primary = self.get(chosen).name
        return [primary] + [entry.name for entry in self.fine_tunable() if entry.name != primary]

    def fine_tunable(self) -> list[ModelPrice]:
        return [entry for entry in self.models.values() if entry.fine_tunable and entry.training is not None]

    def context_limit(self, model: str) -> int:
        entry = self.find(model)
        return entry.context_limit if entry else DEFAULT_CONTEXT_LIMIT


def _price(entry: dict[str, Any], key: str) -> float | None:
    value = entry.get(key)
    if value is None:
        return None
    number = float(value)
    if number < 0 or math.isnan(number):
        raise ValueError(f"{key} must be a price >= 0, not {value!r}")
    return number


@lru_cache(maxsize=8)
def _cached_table(path: str, mtime_ns: int) -> PriceTable:
    return PriceTable.load(path)


def load_price_table(path: str | os.PathLike[str] | None = None) -> PriceTable:
    """The table at ``path`` (``Settings.prices_file``; None: the bundled one), re-read when the file changes."""
    chosen = Path(path or DEFAULT_PRICES_FILE).expanduser()
    try:
        mtime = chosen.stat().st_mtime_ns
    except OSError:
        return PriceTable.load(chosen)  # raises the clear "not found" error
    return _cached_table(str(chosen), mtime)


def default_epochs(n_examples: int) -> int:
    """OpenAI's ``n_epochs="auto"``: 3, raised for small sets toward 100 trained examples, lowered for large ones."""
    if n_examples < 1:
        raise ValueError("default_epochs needs at least one example")
    epochs = 3
    if n_examples * epochs < 100:
        epochs = min(25, 100 // n_examples)
    elif n_examples * epochs > 25000:
        epochs = max(1, 25000 // n_examples)
    return epochs


def billed_tokens(example_tokens: list[int] | tuple[int, ...], epochs: int, context_limit: int) -> int:
    """epochs × Σ min(limit, tokens_i): longer examples are truncated, so they are billed at the limit."""
    return epochs * sum(min(context_limit, tokens) for tokens in example_tokens)


@dataclass(frozen=True, slots=True)
class TrainingQuote:
    model: str
    epochs: int
    billed_tokens: int
    price_per_1m: float | None
    cost_usd: float | None

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


def training_cost(price: ModelPrice, billed: int) -> float | None:
    if price.training is None:
        return None
    return billed * price.training / PER_TOKENS


def inference_cost(price: ModelPrice, *, input_tokens: float, output_tokens: float, fine_tuned: bool = True) -> float | None:
    """Cost in USD of ``input_tokens`` in and ``output_tokens`` out, on the fine-tuned or the base model."""
    rate_in, rate_out = (price.input, price.output) if fine_tuned else (price.base_input, price.base_output)
    if rate_in is None or rate_out is None:
        return None
    return (input_tokens * rate_in + output_tokens * rate_out) / PER_TOKENS


@dataclass(frozen=True, slots=True)
class RoiEstimate:
    baseline_model: str
    fine_tuned_model: str
    daily_requests: int
    prompt_tokens_today: float
    prompt_tokens_fine_tuned: float
    completion_tokens: float
    daily_cost_today_usd: float
    daily_cost_fine_tuned_usd: float
    daily_savings_usd: float
    monthly_savings_usd: float
    training_cost_usd: float
    break_even_days: float | None  # None: the fine-tuned model never pays back at these figures

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


def roi_estimate(
    table: PriceTable,
    *,
    baseline_model: str,
    fine_tuned_model: str,
    daily_requests: int,
    prompt_tokens: float,
    prompt_tokens_saved: float,
    completion_tokens: float,
    training_cost_usd: float,
) -> RoiEstimate:
    """Today: every request sends the long prompt to the base model. Tomorrow: the fine-tuned model, without
    the ``prompt_tokens_saved`` the system prompt / few-shot examples took. Break-even = training cost / daily savings.
    """
    if daily_requests < 0 or prompt_tokens < 0 or prompt_tokens_saved < 0 or completion_tokens < 0:
        raise ConfigError("requests and token figures must be >= 0")
    if prompt_tokens_saved > prompt_tokens:
        raise ConfigError(f"prompt tokens saved ({prompt_tokens_saved:g}) cannot exceed the prompt tokens per request ({prompt_tokens:g})")
    baseline = table.get(baseline_model)
    tuned = table.get(fine_tuned_model)
    today = inference_cost(baseline, input_tokens=prompt_tokens, output_tokens=completion_tokens, fine_tuned=False)
    if today is None:
        raise ConfigError(f"the price table has no base prices for {baseline.name}; add base_input/base_output")
    tuned_prompt = prompt_tokens - prompt_tokens_saved
    after = inference_cost(tuned, input_tokens=tuned_prompt, output_tokens=completion_tokens, fine_tuned=True)
    if after is None:
        raise ConfigError(f"the price table has no fine-tuned inference prices for {tuned.name}; add input/output")
    daily_today = today * daily_requests
    daily_after = after * daily_requests
    savings = daily_today - daily_after
    break_even = training_cost_usd / savings if savings > 0 else None
    return RoiEstimate(
        baseline_model=baseline.name,
        fine_tuned_model=tuned.name,
        daily_requests=daily_requests,
        prompt_tokens_today=prompt_tokens,
        prompt_tokens_fine_tuned=tuned_prompt,
        completion_tokens=completion_tokens,
        daily_cost_today_usd=daily_today,
        daily_cost_fine_tuned_usd=daily_after,
        daily_savings_usd=savings,
        monthly_savings_usd=savings * 30,
        training_cost_usd=training_cost_usd,
        break_even_days=break_even,
    )


@dataclass(frozen=True, slots=True)
class OnPremEstimate:
    trained_tokens: int
    tokens_per_second: float
    gpu_hours: float
    gpu_hour_price: float
    cost_usd: float

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


def on_prem_estimate(trained_tokens: int, *, gpu_hour_price: float, tokens_per_second: float) -> OnPremEstimate:
    """GPU time for ``trained_tokens`` (tokens × epochs) at a measured training throughput, and its price."""
    if tokens_per_second <= 0:
        raise ConfigError("tokens per second must be > 0 (measure it with a short on-prem run)")
    if gpu_hour_price < 0:
        raise ConfigError("the GPU-hour price must be >= 0")
    hours = trained_tokens / tokens_per_second / 3600
    return OnPremEstimate(trained_tokens, tokens_per_second, hours, gpu_hour_price, hours * gpu_hour_price)

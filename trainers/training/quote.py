"""The training quote: what a job will train on, what it costs, and what blocks it (the cost gate).

One engine for ``/ft train`` and ``ftbot train``: token counts, epochs and OpenAI cost come from
``trainers.data.report.build_report`` (the same numbers as ``ftbot price``); the on-prem back end gets a GPU-hour
estimate from the tokens and a configured throughput and price; Together AI prices the job itself (``estimate-price``,
through ``trainers.training.together_backend.estimate``). Blockers are data errors, PII that would leave the premises
(OpenAI and Together AI) and a budget cap that only an admin may override.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from storage.config import DEFAULT_OPENAI_MODEL, Settings
from storage.db import Database
from storage.errors import ConfigError
from storage.examples import pii_allowed_ids
from storage.models import Snapshot, stored_id
from storage.snapshots import describe, iter_snapshot_items, snapshot_members
from trainers.data.pii import find_pii
from trainers.data.pricing import load_price_table, on_prem_estimate
from trainers.training.local.config import LocalTrainConfig
from trainers.training.local.token_count import local_token_counter

if TYPE_CHECKING:
    from trainers.training.together_backend import TogetherEstimate

DEFAULT_LOCAL_EPOCHS = 3
# When the local base model's tokenizer is not on this machine yet, its tokens are estimated with an OpenAI encoding.
LOCAL_COUNTING_MODEL = DEFAULT_OPENAI_MODEL
# Fewer training examples (SFT) or preference pairs (DPO) than this teach a model nothing useful: OpenAI refuses to
# fine-tune on fewer than 10 examples, and the same floor applies on-prem.
MIN_TRAINING_EXAMPLES = 10
# Back ends the training data is uploaded to, by the name the quote and the buttons use: personal data is gated.
REMOTE_SERVICES = {"openai": "OpenAI", "together": "Together AI"}


@dataclass
class PiiHit:
    example_id: int | None
    position: int
    kinds: list[str]


@dataclass
class Quote:
    backend: str
    method: str
    model: str
    snapshot: dict[str, Any]
    train_examples: int
    validation_examples: int
    tokens_per_epoch: int
    epochs: int
    trained_tokens: int
    cost_usd: float | None
    gpu_hours: float | None
    prices_as_of: str | None
    errors: list[dict[str, Any]]
    warnings: list[dict[str, Any]]
    error_count: int
    warning_count: int
    pii: list[PiiHit]
    budget_usd: float | None
    notes: list[str] = field(default_factory=list)
    # DPO: the registered model the job continues from (None: the base model), and where it starts, in words.
    parent_model: str | None = None
    start: str | None = None
    # Local runs with --max-steps: the trainer stops after this many optimizer steps, whatever the epochs.
    max_steps: int | None = None

    @property
    def over_budget(self) -> bool:
        return self.budget_usd is not None and (self.cost_usd or 0.0) > self.budget_usd

    @property
    def pii_blocks(self) -> bool:
        return self.backend in REMOTE_SERVICES and bool(self.pii)

    @property
    def service(self) -> str:
        """Where the data goes, in words ("OpenAI", "Together AI"; "on-prem" for local)."""
        return REMOTE_SERVICES.get(self.backend, "on-prem")

    def blockers(self, *, admin_confirmed: bool = False, allow_pii: bool = False, redact_pii: bool = False) -> list[str]:
        """Why this job may not start (empty: it may). Each reason says what to do.

        ``redact_pii``: the upload redacts personal data (``trainers.data.pii.redact_record``), so PII does not block.
        """
        reasons = []
        if self.train_examples < MIN_TRAINING_EXAMPLES:
            reasons.append(self.too_few())
        if self.error_count:
            reasons.append(
                f"the snapshot has {self.error_count} validation error(s); fix or reject those examples and quote again"
            )
        if self.pii_blocks and not (allow_pii or redact_pii):
            reasons.append(
                f"{len(self.pii)} example(s) contain unredacted personal data (e.g. {', '.join(self.pii[0].kinds)}); "
                "start with personal data redacted (--redact-pii), redact them, mark them allowed, "
                "or confirm the upload explicitly (--allow-pii)"
            )
        if self.over_budget and not admin_confirmed:
            reasons.append(
                f"the estimated cost ${self.cost_usd:,.2f} is above the budget cap ${self.budget_usd:,.2f} "
                "(FTBOT_BUDGET_USD); an admin must confirm"
            )
        return reasons

    def too_few(self) -> str:
        """Why so small a training set cannot train, and where more comes from."""
        if self.method == "dpo":
            return (f"only {self.train_examples} preference pair(s) to train on: DPO needs at least {MIN_TRAINING_EXAMPLES} "
                    "(OpenAI's minimum). Pairs come from the decided comparisons of closed evaluation rounds: run `/ft eval`, "
                    "vote, and close it with `/ft eval close` (or import DPO JSONL with `ftbot import`)")
        return (f"only {self.train_examples} approved example(s) to train on: training needs at least {MIN_TRAINING_EXAMPLES} "
                "(OpenAI's minimum). Capture good replies (`/ft add` or the message shortcut), approve them with `/ft review`, "
                "then quote again")

    def to_json(self) -> dict[str, Any]:
        data = asdict(self)
        data["over_budget"] = self.over_budget
        data["pii_blocks"] = self.pii_blocks
        return data

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> Quote:
        data = {k: v for k, v in data.items() if k not in ("over_budget", "pii_blocks")}
        data["pii"] = [PiiHit(**hit) for hit in data.get("pii", [])]
        return cls(**data)


def _texts(record: dict[str, Any]) -> list[str]:
    messages: list[dict[str, Any]] = []
    if "messages" in record:
        messages = record["messages"]
    else:
        messages = [*record["input"]["messages"], *record["preferred_output"], *record["non_preferred_output"]]
    texts = []
    for message in messages:
        content = message.get("content")
        if isinstance(content, str):
            texts.append(content)
        elif isinstance(content, list):
            texts.extend(part.get("text", "") for part in content if isinstance(part, dict))
    return texts


def find_snapshot_pii(db: Database, snapshot_id: int) -> list[PiiHit]:
    """Members with personal data that no reviewer allowed (``Example.pii_allowed``)."""
    members = snapshot_members(db, snapshot_id)
    allowed = pii_allowed_ids(db, (m.example_id for m in members))
    hits = []
    for member in members:
        if member.example_id in allowed:
            continue
        kinds = sorted({finding.kind for text in _texts(member.record) for finding in find_pii(text)})
        if kinds:
            hits.append(PiiHit(member.example_id, member.position, kinds))
    return hits


def _by_example_id(issue: dict[str, Any], example_ids: list[int | None]) -> dict[str, Any]:
    """A report issue about the ``line``-th record of the split, with that record's ``example_id`` (None: about the
    whole snapshot) and its message no longer numbering the record by position (``example 3: ...``)."""
    line = issue.get("line")
    example_id = example_ids[line - 1] if isinstance(line, int) and 0 < line <= len(example_ids) else None
    message = issue["message"]
    prefix = f"example {line}: "
    if line is not None and message.startswith(prefix):
        message = message[len(prefix):]
    return {**issue, "message": message, "example_id": example_id}


def _issue_line(kind: str, issue: dict[str, Any]) -> str:
    example_id = issue.get("example_id")
    where = f" in example #{example_id}" if example_id is not None else ""
    return f"  {kind}{where}: {issue['code']}: {issue['message']}"


def build_quote(
    db: Database,
    snapshot: Snapshot,
    *,
    backend: str,
    model: str,
    method: str = "sft",
    epochs: int | None = None,
    settings: Settings | None = None,
    parent_model: str | None = None,
    start_note: str | None = None,
    local_config: LocalTrainConfig | None = None,
    together_estimate: TogetherEstimate | None = None,
) -> Quote:
    """Price and check a snapshot for one back end. ``model``: the OpenAI base model or the local base model.

    ``settings``: the price table, budget cap and on-prem throughput and price (None: the defaults).
    ``parent_model`` / ``start_note``: for DPO, the fine-tuned model the job continues from and a line saying so.
    ``local_config``: the local run's settings (batch size, packing, ``max_steps``, ``max_length``): its tokens are
    counted with the base model's own tokenizer and chat template when they are on this machine.
    ``together_estimate`` (Together AI, required there): Together's price and the model's limits; tokens are counted
    with an OpenAI encoding (an estimate: Together counts with the base model's tokenizer)."""
    # Local: the report engine loads numpy and multiprocessing (~0.15 s), which `ftbot jobs` and other CLI
    # commands that import this module through trainers.training.jobs never need.
    from trainers.data.report import build_report

    settings = settings or Settings()
    if backend not in ("openai", "local", "together"):
        raise ConfigError(f"back end must be 'openai', 'local' or 'together', got {backend!r}")
    if backend == "together" and together_estimate is None:
        raise ConfigError("a Together AI quote needs Together's estimate (trainers.training.together_backend.estimate)")
    counting_model = model if backend == "openai" else LOCAL_COUNTING_MODEL
    kind = "dpo" if method == "dpo" else "sft"
    report = build_report(
        iter_snapshot_items(db, stored_id(snapshot), "train"), model=counting_model,
        epochs=epochs if backend in REMOTE_SERVICES else None,
        kind=kind, workers=1, unit="example", prices=load_price_table(settings.prices_file),
    )
    train_ids = [member.example_id for member in snapshot_members(db, stored_id(snapshot), "train")]
    errors = [_by_example_id(issue.to_json(), train_ids) for issue in report.errors]
    if backend == "local":
        # OpenAI's 10-example minimum does not apply on-prem.
        errors = [e for e in errors if e["code"] != "too_few_examples"]
    warnings = [_by_example_id(issue.to_json(), train_ids) for issue in report.warnings]
    tokens_per_epoch = report.tokens.total
    notes = list(report.notes)
    if backend == "openai":
        chosen_epochs = report.epochs or 0
        trained = report.billed_tokens
        cost = report.estimated_cost_usd
        gpu_hours = None
    elif together_estimate is not None:
        # Together's price, never a guessed table: it knows the model's size bracket and the method.
        chosen_epochs = epochs or report.epochs or 1
        trained = tokens_per_epoch * chosen_epochs
        cost = together_estimate.cost_usd
        gpu_hours = None
        notes.append(f"token counts are about right: counted with an OpenAI encoding, while Together counts with {model}'s "
                     "own tokenizer; the cost is Together AI's own estimate (estimate-price)")
        notes.extend(together_estimate.notes)
    else:
        config = local_config or LocalTrainConfig(base_model=model, method=kind)
        chosen_epochs = epochs or int(config.epochs) or DEFAULT_LOCAL_EPOCHS
        counted = local_epoch_tokens(db, snapshot, config, settings.home / "models")
        counted_by = "the base model's own tokenizer and chat template"
        if counted is None:
            counted_by = "an OpenAI encoding (the base model's tokenizer is not on this machine yet)"
        else:
            tokens_per_epoch = counted
        trained = tokens_per_epoch * chosen_epochs
        if config.max_steps > 0:
            steps_per_epoch = local_steps_per_epoch(tokens_per_epoch, snapshot.train_count, config)
            trained = round(tokens_per_epoch * config.max_steps / steps_per_epoch)
        estimate = on_prem_estimate(trained, gpu_hour_price=settings.gpu_hour_usd, tokens_per_second=settings.local_tokens_per_s)
        cost = round(estimate.cost_usd, 4)
        gpu_hours = round(estimate.gpu_hours, 4)
        notes = [n for n in notes if "not in the price table" not in n]
        notes.append(
            f"GPU time estimated at {settings.local_tokens_per_s:,.0f} tokens/s and ${settings.gpu_hour_usd:,.2f}/GPU-hour "
            f"(FTBOT_LOCAL_TOKENS_PER_S, FTBOT_GPU_HOUR_USD); tokens counted with {counted_by}"
        )
        if settings.ray_address:
            where = f"trains as a job on the Ray cluster (FTBOT_RAY_ADDRESS), {settings.ray_num_gpus:g} GPU(s) per process"
            if not settings.artifacts_url:
                # A model saved on one GPU node is not on the next: evaluation and drafts would not find it.
                where += ("; its adapter stays in $FTBOT_HOME of the node that trains it: set FTBOT_ARTIFACTS_URL "
                          "(e.g. s3://bucket/prefix) unless every node shares that directory")
            notes.append(where)
    return Quote(
        backend=backend, method=method, model=model, snapshot=describe(snapshot),
        train_examples=snapshot.train_count, validation_examples=snapshot.validation_count,
        tokens_per_epoch=tokens_per_epoch, epochs=chosen_epochs, trained_tokens=trained, cost_usd=cost,
        gpu_hours=gpu_hours, prices_as_of=report.prices_as_of if backend == "openai" else None,
        errors=errors[:20], warnings=warnings[:20],
        error_count=len(errors) if backend == "local" else sum(report.error_counts.values()),
        warning_count=sum(report.warning_counts.values()),
        pii=find_snapshot_pii(db, stored_id(snapshot)), budget_usd=settings.budget_usd, notes=notes,
        parent_model=parent_model, start=start_note,
        max_steps=local_config.max_steps if backend == "local" and local_config and local_config.max_steps > 0 else None,
    )


def local_epoch_tokens(db: Database, snapshot: Snapshot, config: LocalTrainConfig, models_dir: Path) -> int | None:
    """Tokens the local trainer sees in one epoch of the train split, counted with the base model's own tokenizer and
    chat template (cut at ``max_length``); None when that tokenizer is not on this machine yet.

    DPO renders each pair twice (the prompt with the chosen reply, then with the rejected one)."""
    count = local_token_counter(config.base_model, models_dir, max_length=config.max_length)
    if count is None:
        return None
    total = 0
    for _, record in iter_snapshot_items(db, stored_id(snapshot), "train"):
        if "input" in record:
            prompt = list(record["input"]["messages"])
            total += count(prompt + list(record["preferred_output"])) + count(prompt + list(record["non_preferred_output"]))
        else:
            total += count(record["messages"])
    return total


def local_steps_per_epoch(tokens_per_epoch: int, examples: int, config: LocalTrainConfig) -> int:
    """Optimizer steps in one epoch: packed rows of ``max_length`` tokens (SFT with packing) or one row per example,
    ``batch_size × gradient_accumulation_steps × num_processes`` rows per step."""
    rows = math.ceil(tokens_per_epoch / config.max_length) if config.packing and config.method == "sft" else examples
    per_step = config.batch_size * config.gradient_accumulation_steps * config.num_processes
    return max(1, math.ceil(max(1, rows) / per_step))


def quote_lines(quote: Quote) -> list[str]:
    """The quote as short plain-text lines (the CLI prints them; Slack wraps them in blocks)."""
    lines = [
        f"Back end: {quote.backend} · method: {quote.method} · base model: {quote.model}"
        + (f" · {quote.start}" if quote.start else ""),
        f"Snapshot #{quote.snapshot['id']} ({quote.snapshot['content_hash'][:12]}): "
        f"{quote.train_examples} train / {quote.validation_examples} validation examples",
        f"Tokens: {quote.tokens_per_epoch:,} per epoch × {quote.epochs} epochs = {quote.trained_tokens:,} trained tokens"
        if not quote.max_steps else
        f"Tokens: {quote.tokens_per_epoch:,} per epoch; {quote.max_steps:,} steps (--max-steps) ≈ {quote.trained_tokens:,} trained tokens",
    ]
    if quote.backend == "openai":
        cost = "unknown (model not in the price table)" if quote.cost_usd is None else f"${quote.cost_usd:,.2f}"
        lines.append(f"Estimated cost: {cost} (prices as of {quote.prices_as_of})")
    elif quote.backend == "together":
        if quote.cost_usd is None:
            lines.append("Estimated cost: Together AI prices the run at Start, from the uploaded file, before any job "
                         "exists (above the budget cap, nothing is created)")
        else:
            lines.append(f"Estimated cost: ${quote.cost_usd:,.2f} (Together AI's estimate)")
    else:
        lines.append(f"Estimated GPU time: {quote.gpu_hours:,.3f} GPU-hours ≈ ${quote.cost_usd:,.2f}")
    if quote.budget_usd is not None:
        lines.append(f"Budget cap: ${quote.budget_usd:,.2f}" + (" — OVER BUDGET, an admin must confirm" if quote.over_budget else ""))
    lines.append(f"Validation: {quote.error_count} error(s), {quote.warning_count} warning(s)")
    lines.extend(_issue_line("error", issue) for issue in quote.errors[:5])
    lines.extend(_issue_line("warning", issue) for issue in quote.warnings[:5])
    if quote.pii:
        where = (f"blocks the upload to {quote.service} unless it is redacted on the way out" if quote.pii_blocks
                 else "stays on-prem")
        lines.append(f"Personal data: {len(quote.pii)} example(s) with unredacted PII ({where})")
    lines.extend(f"Note: {note}" for note in quote.notes)
    return lines

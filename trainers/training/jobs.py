"""Training jobs from quote to registered model: the one API behind ``/ft train`` and ``ftbot train``.

- :func:`quote_job` freezes a snapshot, prices it and stores a job in status ``quoted``.
- :func:`start_job` checks the gate (data errors, PII bound for OpenAI or Together AI, budget), claims the job
  exactly once and starts it: OpenAI or Together AI upload + create, or the local worker process.
- :func:`refresh_job` advances what the caller watches: polls OpenAI or Together AI (whose finished LoRA adapter is
  downloaded), or checks the local worker is alive (a child process or a Ray job, ``trainers.training.runners``; a
  dead worker fails its job with the log tail); on success it registers the model. Idempotent.
- :func:`cancel_job` stops a job on any back end.

No Slack and no ML imports here: the bot calls this on its scheduler threads.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

from storage.config import DEFAULT_LOCAL_BASE_MODEL, Settings
from storage.db import Database
from storage.errors import ConfigError, FtbotError, TrainingError, ValidationFailed
from storage.jobs import (
    QUOTE_EXPIRED,
    QUOTE_MAX_AGE,
    ModelNotFound,
    claim_job,
    create_job,
    discard_quote,
    finish_job,
    get_job,
    get_model,
    is_expired_quote,
    last_losses,
    metric_points,
    model_for_job,
    register_model,
    update_job,
)
from storage.models import Job, RegisteredModel, stored_id, utcnow
from storage.scrub import scrub_credentials
from storage.snapshots import create_snapshot
from storage.vocabulary import JobStatus
from trainers.data.pricing import load_price_table, training_cost
from trainers.training.local.base_models import check_base_model
from trainers.training.local.config import (
    BUNDLED_BASE_MODELS,
    SMOLLM2_BASE_MODEL,
    TINY_BASE_MODEL,
    LocalTrainConfig,
    configured_base_model,
)
from trainers.training.openai_backend import OpenAIBackend
from trainers.training.parents import Parent, dpo_parent
from trainers.training.quote import Quote, build_quote
from trainers.training.runners import check_worker, runs_on_ray, start_worker, stop_job_worker
from trainers.training.together_backend import (
    TogetherBackend,
    TogetherEstimate,
    adapter_base_model,
    make_together_client,
)
from trainers.training.together_backend import estimate as estimate_together

if TYPE_CHECKING:
    from openai import OpenAI
    from together import Together


BACKENDS = ("openai", "local", "together")
# Back ends whose training data leaves the premises: personal data in it is gated (redacted by default).
REMOTE_BACKENDS = ("openai", "together")
# Together AI has no automatic epoch rule: a job trains this many unless told otherwise (the quote prices them).
DEFAULT_TOGETHER_EPOCHS = 3
METHODS = ("sft", "dpo")


@dataclass(frozen=True)
class QuotedJob:
    job: Job
    quote: Quote
    created: bool


@dataclass(frozen=True)
class StartResult:
    job: Job
    started: bool  # False: it was already started (double click, retry) or had finished


@dataclass(frozen=True)
class JobUpdate:
    job: Job
    finished: bool
    changed: bool
    model: RegisteredModel | None = None


def openai_key_missing(client: OpenAI | None = None) -> bool:
    """True when no OpenAI client was given and ``OPENAI_API_KEY`` (read by the ``openai`` client itself) is unset:
    callers say so before quoting, rather than when the job or the judge first calls OpenAI."""
    return client is None and not os.environ.get("OPENAI_API_KEY")


def _together(client: Together | None, settings: Settings | None) -> TogetherBackend:
    return TogetherBackend(client, settings=settings or Settings.from_env())


def quote_job(
    db: Database,
    *,
    backend: str,
    method: str = "sft",
    model: str | None = None,
    parent: str | None = None,
    default_local_base: str | None = None,
    created_by: str | None = None,
    idempotency_key: str | None = None,
    validation_fraction: float = 0.1,
    epochs: int | None = None,
    local_options: dict[str, Any] | None = None,
    settings: Settings | None = None,
    slack_channel: str | None = None,
    check_base: bool = False,
    together_client: Together | None = None,
) -> QuotedJob:
    """Snapshot the approved examples (or pairs for DPO), quote them, and store a ``quoted`` job.

    ``settings``: the configured models, price table, budget and on-prem estimate (None: the defaults).
    ``model``: the base model (local: HF id or directory, default ``settings.local_base_model`` else
    ``default_local_base``; OpenAI: default ``settings.openai_model``). For DPO, ``parent`` picks the fine-tuned
    model to continue (see :func:`dpo_parent`); a ``model`` that names a registered model is taken as the parent,
    and an explicit base model without ``parent`` means the plain base model.
    ``check_base`` (local): refuse now a base model the worker could not load (:func:`check_base_model`).
    Together AI: ``model`` defaults to ``settings.together_model``; Together prices the job (``estimate-price``)
    and names the model's limits, through ``together_client`` (None: one from ``TOGETHER_API_KEY``).
    """
    if backend not in BACKENDS:
        raise ConfigError(f"unknown back end {backend!r}: use {', '.join(repr(b) for b in BACKENDS)}")
    if method not in METHODS:
        raise ConfigError(f"unknown method {method!r}: use 'sft' or 'dpo'")
    settings = settings or Settings()
    start: Parent | None = None
    if method == "dpo":
        if model and parent is None and _is_registered(db, model):
            model, parent = None, model
        if model and parent is None:
            start = Parent(None, f"starts from the base model {model} you named (--from NAME continues a fine-tuned one)")
        else:
            start = dpo_parent(db, backend, parent)
        if start.model is not None and model:
            raise ConfigError(
                f"{start.model.name} was trained on {start.model.base_model}: DPO that continues it trains on that base. "
                "Drop the base model, or use --from base to start from the base model you named."
            )
    elif parent:
        raise ConfigError("--from applies to DPO only: SFT trains a fresh adapter on the base model")
    if check_base and backend == "local" and (start is None or start.model is None):
        check_base_model(configured_base_model(model, settings=settings, fallback=default_local_base or DEFAULT_LOCAL_BASE_MODEL))
    snapshot = create_snapshot(
        db, kind=method, validation_fraction=validation_fraction, created_by=created_by
    ).snapshot
    lineage: dict[str, Any] = {}
    local_config: LocalTrainConfig | None = None
    if start is not None and start.model is not None:
        lineage["parent_model"] = start.model.name
    if backend == "openai":
        # OpenAI fine-tunes a fine-tuned model when given its ft: id as the model.
        base_model = start.model.location if start and start.model else (model or settings.openai_model)
        config: dict[str, Any] = {"seed": 42, **lineage}
        if epochs:
            config["n_epochs"] = epochs
    elif backend == "together":
        if start is not None and start.model is not None:
            # Together continues a fine-tune from its job (from_checkpoint), trained on that job's base model.
            parent_job = get_job(db, start.model.job_id) if start.model.job_id is not None else None
            if parent_job is None or not parent_job.external_id:
                raise ConfigError(f"{start.model.name} has no Together AI job to continue from: use --from base")
            base_model = parent_job.base_model
            lineage["parent_external_id"] = parent_job.external_id
        else:
            base_model = model or settings.together_model
        config = {"seed": 42, "n_epochs": epochs or DEFAULT_TOGETHER_EPOCHS, **lineage}
    else:
        if start is not None and start.model is not None:
            parent_model = start.model
            # The root base names the new model and shows in listings; the parent's own base is what its adapter
            # applies to (for a DPO parent, its merged parent).
            base_model = (parent_model.metrics or {}).get("root_base_model") or parent_model.base_model
            lineage.update(parent_location=parent_model.location, parent_base_model=parent_model.base_model)
        else:
            base_model = configured_base_model(model, settings=settings, fallback=default_local_base or DEFAULT_LOCAL_BASE_MODEL)
        options = {**dict(local_options or {}), **lineage}
        if epochs:
            options["epochs"] = epochs
        for key, value in BUNDLED_MODEL_DEFAULTS.get(base_model, {}).items():
            options.setdefault(key, value)
        local_config = LocalTrainConfig(base_model=base_model, method=method, **options)
        config = local_config.to_dict()
    together_estimate: TogetherEstimate | None = None
    if backend == "together":
        together_estimate = estimate_together(
            make_together_client(together_client), db, snapshot, model=base_model, method=method,
            epochs=config["n_epochs"], settings=settings,
        )
    quote = build_quote(
        db, snapshot, backend=backend, model=base_model, method=method,
        epochs=config["n_epochs"] if backend == "together" else epochs, settings=settings,
        parent_model=lineage.get("parent_model"), start_note=start.note if start else None, local_config=local_config,
        together_estimate=together_estimate,
    )
    result = create_job(
        db, backend=backend, method=method, base_model=base_model, snapshot_id=snapshot.id, config=config,
        quote=quote.to_json(), estimated_tokens=quote.trained_tokens, estimated_cost_usd=quote.cost_usd,
        created_by=created_by, idempotency_key=idempotency_key, slack_channel=slack_channel,
    )
    stored_quote = Quote.from_json(result.job.quote) if result.job.quote else quote
    return QuotedJob(result.job, stored_quote, result.created)


# ftbot's own base models train with settings that suit their size (a setting given explicitly still wins):
# the tiny random model needs a large step to show a visible loss drop in a short demo run; SmolLM2-135M learns a
# team's facts and voice from a few dozen conversations at 1e-3 (bench/bench_quality.py), and one packed row per
# step gives a small dataset enough optimizer steps.
BUNDLED_MODEL_DEFAULTS: dict[str, dict[str, Any]] = {
    TINY_BASE_MODEL: {"learning_rate": 3e-2, "lora_dropout": 0.0},
    SMOLLM2_BASE_MODEL: {"learning_rate": 1e-3, "lora_dropout": 0.0, "batch_size": 1},
}


def _is_registered(db: Database, name: str) -> bool:
    try:
        get_model(db, name)
    except ModelNotFound:
        return False
    return True


def start_job(
    db: Database,
    job_id: int,
    *,
    admin_confirmed: bool = False,
    allow_pii: bool = False,
    redact_pii: bool = False,
    openai_client: OpenAI | None = None,
    database_url: str | None = None,
    settings: Settings | None = None,
    together_client: Together | None = None,
) -> StartResult:
    """Start a quoted job once; a second call (double click, retry) returns the job without starting it again.

    ``settings``: how often the OpenAI client retries (None: the defaults).
    ``redact_pii`` (OpenAI, Together AI): upload the splits with personal data redacted (the snapshot stays as it
    is); the number of redacted examples lands in the job's config as ``redacted_examples``.
    Raises ValidationFailed with every blocker when the gate refuses.
    """
    job = get_job(db, job_id)
    if job.status == JobStatus.QUOTED and _aware(job.created_at) < utcnow() - QUOTE_MAX_AGE:
        discard_quote(db, job_id, reason=QUOTE_EXPIRED)  # housekeeping has not got to it yet
        job = get_job(db, job_id)
    if is_expired_quote(job):
        hours = int(QUOTE_MAX_AGE.total_seconds() // 3600)
        raise TrainingError(f"training quote #{job_id} expired: quotes are valid for {hours} hours and nothing was started. "
                            "Ask for a new quote (`/ft train` in Slack, `ftbot train` on the command line).")
    if job.status != JobStatus.QUOTED:
        return StartResult(job, False)
    quote = Quote.from_json(job.quote or {})
    redact_pii = redact_pii and job.backend in REMOTE_BACKENDS  # on-prem data never leaves: nothing to redact
    blockers = quote.blockers(admin_confirmed=admin_confirmed, allow_pii=allow_pii, redact_pii=redact_pii)
    if blockers:
        raise ValidationFailed(f"cannot start job #{job_id}: {'; '.join(blockers)}")
    if not claim_job(db, job_id):
        return StartResult(get_job(db, job_id), False)  # someone else started it a moment ago
    # Who overrode which gate is part of the job's record.
    # The upload reads ``redact_pii`` from here, so a resumed submit (after a crash) redacts too.
    gate = {"allow_pii": allow_pii, "redact_pii": redact_pii, "admin_confirmed": admin_confirmed}
    update_job(db, job_id, config={**job.config, "gate": gate})
    if job.backend in REMOTE_BACKENDS:
        service = "OpenAI" if job.backend == "openai" else "Together AI"
        try:
            if job.backend == "openai":
                return StartResult(_openai(openai_client, settings).submit(db, job_id), True)
            submitted = _together(together_client, settings).submit(db, job_id)
            if submitted.status == JobStatus.FAILED:
                # Refused before any job was created (Together's price above the budget cap, an account that cannot
                # pay): the caller shows why, as for any refusal.
                raise TrainingError(submitted.error or f"Together AI refused job #{job_id}")
            return StartResult(submitted, True)
        except FtbotError:
            # An unreachable service or a missing key leaves the job pending with nothing created (refusals already
            # failed it): release it so Start works again once that is fixed.
            claim_job(db, job_id, from_status=JobStatus.PENDING, to_status=JobStatus.QUOTED)
            raise
        except Exception as error:
            finish_job(db, job_id, JobStatus.FAILED, error=scrub_credentials(f"Could not start the {service} job: {error}"))
            raise TrainingError(scrub_credentials(f"could not start the {service} job: {error}")) from error
    url = database_url or db.engine.url.render_as_string(hide_password=False)
    return StartResult(start_worker(db, job, database_url=url, settings=settings), True)


def _aware(value: datetime) -> datetime:
    # SQLite hands back naive datetimes; they were stored as UTC.
    return value if value.tzinfo is not None else value.replace(tzinfo=UTC)


def _openai(client: OpenAI | None, settings: Settings | None) -> OpenAIBackend:
    """The OpenAI back end on ``client``, or on a client built with the configured retries."""
    return OpenAIBackend(client, max_retries=(settings or Settings()).openai_max_retries)


def _register(db: Database, job: Job, settings: Settings | None) -> RegisteredModel | None:
    if job.status != JobStatus.SUCCEEDED or not job.result_model:
        return None
    job_id = stored_id(job)
    existing = model_for_job(db, job_id)
    if existing is not None:
        return existing
    step, train_loss, valid_loss = last_losses(db, job_id)
    # RegisteredModel.metrics (JSON): loss figures, plus the parent and root base model names where they apply.
    metrics: dict[str, Any] = {
        "steps": step, "final_train_loss": train_loss, "final_valid_loss": valid_loss,
        "trained_tokens": job.trained_tokens, "estimated_tokens": job.estimated_tokens,
    }
    base_model = job.base_model
    parent = (job.config or {}).get("parent_model")
    if parent:
        metrics["parent_model"] = parent
    if job.backend == "openai":
        name = job.result_model
        cost = _openai_cost(job, settings)
    elif job.backend == "together":
        # The adapter was downloaded (result_model is its directory): it runs on-prem on the base's public weights.
        name = (job.progress or {}).get("together_output_name") or f"together-{job.method}-job{job.id}"
        base_model = adapter_base_model(job.base_model)
        metrics["together_model"] = job.base_model
        cost = job.estimated_cost_usd
    else:
        # ftbot's own base models by their short name (tiny, smollm2), a directory by its folder, a hub id by its last part.
        short = job.base_model.removeprefix("ftbot:") if job.base_model in BUNDLED_BASE_MODELS else Path(job.base_model.rstrip("/")).name
        name = f"{short}-{job.method}-job{job.id}"
        cost = job.estimated_cost_usd
        metrics["tokens_per_second"] = (job.progress or {}).get("tokens_per_second")
        for key in ("heldout_loss", "baseline_heldout_loss", "heldout_prompts"):  # measured by the worker after training
            if (job.progress or {}).get(key) is not None:
                metrics[key] = (job.progress or {})[key]
        adapter_base = (job.progress or {}).get("adapter_base")
        if parent and adapter_base:
            # The adapter was trained on the merged parent: that is what evaluation must load it onto.
            base_model, metrics["root_base_model"] = adapter_base, job.base_model
    model, _created = register_model(
        db, name=name, backend=job.backend, base_model=base_model, location=job.result_model, job_id=job_id,
        snapshot_id=job.snapshot_id, metrics=metrics, cost_usd=cost,
    )
    return model


def _openai_cost(job: Job, settings: Settings | None) -> float | None:
    if job.trained_tokens is None:
        return job.estimated_cost_usd
    entry = load_price_table((settings or Settings()).prices_file).find(job.base_model)
    return training_cost(entry, job.trained_tokens) if entry is not None else job.estimated_cost_usd


def refresh_job(db: Database, job_id: int, *, openai_client: OpenAI | None = None, settings: Settings | None = None,
                together_client: Together | None = None) -> JobUpdate:
    """Bring one job's record up to date and register its model when it succeeded."""
    job = get_job(db, job_id)
    changed = False
    if job.status not in JobStatus.FINISHED and job.status != JobStatus.QUOTED:
        if job.backend == "openai":
            result = _openai(openai_client, settings).poll(db, job_id)
            job, changed = result.job, result.changed
        elif job.backend == "together":
            polled = _together(together_client, settings).poll(db, job_id)
            job, changed = polled.job, polled.changed
        else:
            changed = check_worker(db, job, settings)
            job = get_job(db, job_id)
    elif runs_on_ray(job) and job.status == JobStatus.FAILED and not (job.log_tail or "").strip():
        changed = check_worker(db, job, settings)  # the worker ran elsewhere: its log is Ray's
        job = get_job(db, job_id)
    model = _register(db, job, settings)
    return JobUpdate(job, job.status in JobStatus.FINISHED, changed, model)


class JobAlreadyFinished(TrainingError):
    """Cancel asked of a job that already ended: the message says how it ended."""


def finished_message(job: Job) -> str:
    """How a finished job ended, as cancel reports it: "job #3 already succeeded"."""
    if is_expired_quote(job):
        how = "is an expired quote (never started)"
    elif job.status == JobStatus.CANCELLED:
        how = "was already cancelled"
    else:
        how = f"already {job.status}"
    return f"job #{job.id} {how}: there is nothing to cancel."


def cancel_job(db: Database, job_id: int, *, openai_client: OpenAI | None = None, settings: Settings | None = None,
               together_client: Together | None = None) -> Job:
    """Stop a job (a quote is discarded); raises JobAlreadyFinished when it had already ended."""
    job = get_job(db, job_id)
    if job.status in JobStatus.FINISHED:
        raise JobAlreadyFinished(finished_message(job))
    if job.backend == "openai" and job.external_id:
        return _openai(openai_client, settings).cancel(db, job_id)
    if job.backend == "together" and job.external_id:
        return _together(together_client, settings).cancel(db, job_id)
    finish_job(db, job_id, JobStatus.CANCELLED)
    stop_job_worker(job, settings)
    return get_job(db, job_id)


def wait_for_job(
    db: Database,
    job_id: int,
    *,
    interval: float = 2.0,
    timeout: float | None = None,
    openai_client: OpenAI | None = None,
    on_update: Callable[[JobUpdate], None] | None = None,
    settings: Settings | None = None,
    together_client: Together | None = None,
) -> JobUpdate:
    """Refresh until the job finishes (the CLI's ``--wait``)."""
    deadline = None if timeout is None else time.monotonic() + timeout
    while True:
        update = refresh_job(db, job_id, openai_client=openai_client, settings=settings, together_client=together_client)
        if on_update is not None:
            on_update(update)
        if update.finished:
            return update
        if deadline is not None and time.monotonic() > deadline:
            raise TrainingError(f"job {job_id} did not finish within {timeout:.0f} s; it keeps running (see `ftbot jobs`).")
        time.sleep(interval)


def progress_line(db: Database, job: Job) -> str:
    """One line: status, step and losses (the Slack progress message and the CLI's --wait print it)."""
    step, train_loss, valid_loss = last_losses(db, stored_id(job))
    progress = job.progress or {}
    parts = [f"job #{job.id} {job.status}"]
    if step is not None:
        total = progress.get("total_steps") or progress.get("max_steps")
        parts.append(f"step {step}" + (f"/{total}" if total else ""))
    if train_loss is not None:
        parts.append(f"train loss {train_loss:.4f}")
    if valid_loss is not None:
        parts.append(f"valid loss {valid_loss:.4f}")
    return " · ".join(parts)


__all__ = [
    "openai_key_missing", "BACKENDS", "REMOTE_BACKENDS",
    "QuotedJob", "StartResult", "JobUpdate", "Parent", "dpo_parent", "quote_job", "start_job", "refresh_job", "cancel_job",
    "JobAlreadyFinished", "finished_message", "wait_for_job",
    "progress_line", "metric_points",
]

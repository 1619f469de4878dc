"""Training jobs, their metrics and the model registry: data access only (no Slack, no ML imports).

Both the bot and the training worker process write here; every write is a short transaction so SQLite (WAL)
and PostgreSQL serve them concurrently. Effects that Slack retries or double clicks could repeat are idempotent:
a job per ``idempotency_key``, a metric row per (job, step), a registered model per job, and
:func:`claim_job` moves a quoted job forward exactly once.
"""

from __future__ import annotations

from contextlib import AbstractContextManager
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import inspect, literal, or_, select, table, update
from sqlalchemy.exc import IntegrityError
from sqlmodel import col

from storage.db import Database
from storage.errors import FtbotError
from storage.models import Job, JobMetric, RegisteredModel, stored_id, utcnow
from storage.vocabulary import JobStatus, TrainingBackend, TrainingMethod


class JobNotFound(FtbotError):
    """No training job with that id."""


# A quote nobody started within this time is abandoned: the daily housekeeping discards it (``expire_quotes``) and
# its Start button stops working. A day covers "quote now, decide after lunch / tomorrow morning"; older quotes
# priced a snapshot and a price table that may no longer be current.
QUOTE_MAX_AGE = timedelta(hours=24)
# The ``Job.error`` of an expired quote: such jobs are left out of job listings.
QUOTE_EXPIRED = "expired: the quote was not started within 24 hours"


class ModelNotFound(FtbotError):
    """No registered model with that name or id."""


@dataclass(frozen=True)
class JobResult:
    job: Job
    created: bool


def create_job(
    db: Database,
    *,
    backend: str,
    base_model: str,
    method: str = TrainingMethod.SFT,
    snapshot_id: int | None = None,
    config: dict[str, Any] | None = None,
    quote: dict[str, Any] | None = None,
    estimated_tokens: int | None = None,
    estimated_cost_usd: float | None = None,
    created_by: str | None = None,
    idempotency_key: str | None = None,
    slack_channel: str | None = None,
    slack_ts: str | None = None,
    status: str = JobStatus.QUOTED,
) -> JobResult:
    """Create a job; with an ``idempotency_key`` already used, return that job instead (``created=False``)."""
    job, created = db.get_or_insert(col(Job.idempotency_key), idempotency_key, lambda _session: Job(
        idempotency_key=idempotency_key, backend=backend, method=method, status=status,
        snapshot_id=snapshot_id, base_model=base_model, config=config or {}, quote=quote,
        estimated_tokens=estimated_tokens, estimated_cost_usd=estimated_cost_usd,
        created_by=created_by, slack_channel=slack_channel, slack_ts=slack_ts,
    ))
    return JobResult(job, created)


def get_job(db: Database, job_id: int) -> Job:
    with db.session() as session:
        job = session.get(Job, job_id)
    if job is None:
        raise JobNotFound(f"training job {job_id} does not exist; `ftbot jobs` (or /ft jobs) lists them.")
    return job


def update_job(db: Database, job_id: int, **fields: object) -> Job:
    """Set fields on a job (``updated_at`` too) and return it."""
    with db.session() as session:
        job = session.get(Job, job_id)
        if job is None:
            raise JobNotFound(f"training job {job_id} does not exist.")
        for name, value in fields.items():
            if not hasattr(job, name):
                raise AttributeError(f"Job has no field {name!r}")
            setattr(job, name, value)
        job.updated_at = utcnow()
        session.add(job)
    return job


def update_unfinished_job(db: Database, job_id: int, **fields: object) -> bool:
    """Set fields only while the job is not finished; False if it already was.

    A poll that read "running" must not overwrite a cancel or a failure recorded a moment later.
    """
    with db.session() as session:
        result = session.exec(
            update(Job)
            .where(col(Job.id) == job_id, col(Job.status).not_in(JobStatus.FINISHED))
            .values(**fields, updated_at=utcnow())
        )
        return result.rowcount == 1


def claim_job(db: Database, job_id: int, *, from_status: str = JobStatus.QUOTED, to_status: str = JobStatus.PENDING) -> bool:
    """Atomically move a job from one status to the next; True only for the caller that did it.

    A double-clicked Start button sends two requests: only one of them gets True and starts training.
    """
    with db.session() as session:
        result = session.exec(
            update(Job)
            .where(col(Job.id) == job_id, col(Job.status) == from_status)
            .values(status=to_status, updated_at=utcnow())
        )
        return result.rowcount == 1


def discard_quote(db: Database, job_id: int, *, reason: str) -> bool:
    """Close a quoted job that will not be started; False if it was started (or closed) meanwhile."""
    with db.session() as session:
        result = session.exec(
            update(Job)
            .where(col(Job.id) == job_id, col(Job.status) == JobStatus.QUOTED)
            # Announced too: the requester saw the discard, and no progress message was ever posted for it.
            .values(status=JobStatus.CANCELLED, error=reason, finished_at=utcnow(), updated_at=utcnow(), announced_at=utcnow())
        )
        return result.rowcount == 1


def expire_quotes(db: Database, *, now: datetime | None = None) -> list[int]:
    """Discard quotes older than ``QUOTE_MAX_AGE`` that were never started (reason ``QUOTE_EXPIRED``); their ids."""
    cutoff = (now or utcnow()) - QUOTE_MAX_AGE
    with db.session() as session:
        old = list(session.scalars(select(col(Job.id)).where(col(Job.status) == JobStatus.QUOTED, col(Job.created_at) < cutoff)))
    return [job_id for job_id in old if job_id is not None and discard_quote(db, job_id, reason=QUOTE_EXPIRED)]


def is_expired_quote(job: Job) -> bool:
    return job.status == JobStatus.CANCELLED and job.error == QUOTE_EXPIRED


def finish_job(
    db: Database,
    job_id: int,
    status: str,
    *,
    error: str | None = None,
    log_tail: str | None = None,
    result_model: str | None = None,
    trained_tokens: int | None = None,
) -> bool:
    """Mark a job finished unless it already is; True if this call finished it (first writer wins)."""
    if status not in JobStatus.FINISHED:
        raise ValueError(f"{status!r} is not a finished status")
    values: dict[str, Any] = {"status": status, "finished_at": utcnow(), "updated_at": utcnow()}
    for name, value in (("error", error), ("log_tail", log_tail), ("result_model", result_model), ("trained_tokens", trained_tokens)):
        if value is not None:
            values[name] = value
    with db.session() as session:
        result = session.exec(
            update(Job).where(col(Job.id) == job_id, col(Job.status).not_in(JobStatus.FINISHED)).values(**values)
        )
        return result.rowcount == 1


def list_jobs(db: Database, *, status: str | None = None, limit: int | None = 20, expired: bool = False) -> list[Job]:
    """Newest first; quotes that expired unstarted only with ``expired=True``."""
    query = select(Job).order_by(col(Job.id).desc())
    if not expired:
        query = query.where(or_(col(Job.error).is_(None), col(Job.error) != QUOTE_EXPIRED))
    if status is not None:
        query = query.where(col(Job.status) == status)
    if limit is not None:
        query = query.limit(limit)
    with db.session() as session:
        return list(session.scalars(query))


def active_jobs(db: Database, *, backend: str | None = None) -> list[Job]:
    """Jobs that were started and have not finished (what the relay watches)."""
    query = select(Job).where(col(Job.status).not_in((*JobStatus.FINISHED, JobStatus.QUOTED))).order_by(col(Job.id))
    if backend is not None:
        query = query.where(col(Job.backend) == backend)
    with db.session() as session:
        return list(session.scalars(query))


def jobs_to_relay(db: Database) -> list[Job]:
    """Jobs started from Slack whose final state the bot has not posted yet (running, or finished while no bot ran).

    The database, not a bot process, keeps this list: a bot that starts relays each of them, so a crash between
    Start's commit and scheduling the relay, or a job that ended while the bot was down, still reaches Slack.
    """
    query = (select(Job)
             .where(col(Job.status) != JobStatus.QUOTED, col(Job.announced_at).is_(None), col(Job.slack_channel).is_not(None))
             .order_by(col(Job.id)))
    with db.session() as session:
        return list(session.scalars(query))


# The advisory-lock space of training jobs (``Database.lock``): a job's id is the key within it.
JOB_LOCK_SPACE = 1001


def lock_job(db: Database, job_id: int) -> AbstractContextManager[None]:
    """Exclude other processes on this database from the job's Slack message while the block runs.

    Two bots on one PostgreSQL database (a rolling deploy) each relay a job: each reads the job and edits its
    message under this lock, so one can never apply a state older than the one the other already showed.
    """
    return db.lock(JOB_LOCK_SPACE, job_id)


def mark_job_announced(db: Database, job_id: int) -> None:
    """Record that the job's final state is in Slack, so no later bot posts it again."""
    with db.session() as session:
        session.exec(update(Job).where(col(Job.id) == job_id, col(Job.announced_at).is_(None)).values(announced_at=utcnow()))


def has_scheduled_jobs(db: Database, table_name: str) -> bool:
    """Whether the scheduler's job store (APScheduler's table ``table_name`` in this database) holds any job.

    A bot process starts its scheduler when this is true, so work a previous process scheduled (job relays,
    housekeeping) resumes. False when the table does not exist yet (no scheduler ever ran on this database).
    """
    if not inspect(db.engine).has_table(table_name):
        return False
    with db.engine.connect() as connection:
        return connection.execute(select(literal(1)).select_from(table(table_name)).limit(1)).first() is not None


# --- metrics ---------------------------------------------------------------------------------------------------


def record_metric(
    db: Database,
    job_id: int,
    step: int,
    *,
    train_loss: float | None = None,
    valid_loss: float | None = None,
    extra: dict[str, Any] | None = None,
) -> None:
    """Upsert the metrics of one step; a value already stored is only replaced by a non-None one."""
    for _attempt in range(2):
        try:
            with db.session() as session:
                row = session.scalar(
                    select(JobMetric).where(col(JobMetric.job_id) == job_id, col(JobMetric.step) == step)
                )
                if row is None:
                    session.add(JobMetric(job_id=job_id, step=step, train_loss=train_loss, valid_loss=valid_loss, extra=extra))
                    return
                if train_loss is not None:
                    row.train_loss = train_loss
                if valid_loss is not None:
                    row.valid_loss = valid_loss
                if extra:
                    row.extra = {**(row.extra or {}), **extra}
                session.add(row)
            return
        except IntegrityError:
            continue  # a concurrent writer inserted the same step: update it on the second pass


def job_metrics(db: Database, job_id: int) -> list[JobMetric]:
    with db.session() as session:
        query = select(JobMetric).where(col(JobMetric.job_id) == job_id).order_by(col(JobMetric.step))
        return list(session.scalars(query))


def metric_points(db: Database, job_id: int) -> list[dict[str, Any]]:
    """``[{step, train_loss, valid_loss}]`` in step order: the form the CLI's ``--json`` and the plots use."""
    return [{"step": m.step, "train_loss": m.train_loss, "valid_loss": m.valid_loss} for m in job_metrics(db, job_id)]


def last_losses(db: Database, job_id: int) -> tuple[int | None, float | None, float | None]:
    """(latest step, latest train loss, latest valid loss), each None when not reported yet."""
    points = metric_points(db, job_id)
    step = points[-1]["step"] if points else None
    train = next((p["train_loss"] for p in reversed(points) if p["train_loss"] is not None), None)
    valid = next((p["valid_loss"] for p in reversed(points) if p["valid_loss"] is not None), None)
    return step, train, valid


def _iso(value: datetime | None) -> str | None:
    return value.isoformat() if value is not None else None


def job_record(db: Database, job: Job) -> dict[str, Any]:
    """The JSON view of a job (``ftbot jobs --json``, ``ftbot train --wait --json``).

    ``model`` is what the back end calls the trained model: OpenAI's ``ft:`` id, Together's output name (opaque), a
    local adapter's location; ``location`` is where its files are (the same as ``model`` but for Together, whose
    adapter is brought home)."""
    together_name = (job.progress or {}).get("together_output_name") if job.backend == TrainingBackend.TOGETHER else None
    return {
        "id": job.id, "status": job.status, "backend": job.backend, "method": job.method,
        "base_model": job.base_model, "model": together_name or job.result_model, "location": job.result_model,
        "snapshot_id": job.snapshot_id,
        "external_id": job.external_id, "estimated_tokens": job.estimated_tokens, "trained_tokens": job.trained_tokens,
        "estimated_cost_usd": job.estimated_cost_usd, "error": job.error, "progress": job.progress,
        "created_by": job.created_by, "created_at": _iso(job.created_at), "started_at": _iso(job.started_at),
        "finished_at": _iso(job.finished_at), "metrics": metric_points(db, stored_id(job)),
    }


# --- model registry --------------------------------------------------------------------------------------------


def register_model(
    db: Database,
    *,
    name: str,
    backend: str,
    base_model: str,
    location: str,
    job_id: int | None = None,
    snapshot_id: int | None = None,
    metrics: dict[str, Any] | None = None,
    cost_usd: float | None = None,
) -> tuple[RegisteredModel, bool]:
    """Register a model; a job registers at most one (a second call returns it with ``False``)."""
    with db.session() as session:
        query = select(RegisteredModel).where(
            col(RegisteredModel.job_id) == job_id if job_id is not None else col(RegisteredModel.name) == name
        )
        existing = session.scalar(query)
        if existing is not None:
            return existing, False
        model = RegisteredModel(
            name=name, backend=backend, base_model=base_model, location=location, job_id=job_id,
            snapshot_id=snapshot_id, metrics=metrics, cost_usd=cost_usd,
        )
        session.add(model)
    return model, True


def list_models(db: Database) -> list[RegisteredModel]:
    with db.session() as session:
        return list(session.scalars(select(RegisteredModel).order_by(col(RegisteredModel.id).desc())))


def get_model(db: Database, name_or_id: str | int) -> RegisteredModel:
    with db.session() as session:
        model = None
        if isinstance(name_or_id, int) or str(name_or_id).isdigit():
            model = session.get(RegisteredModel, int(name_or_id))
        if model is None:
            model = session.scalar(select(RegisteredModel).where(col(RegisteredModel.name) == str(name_or_id)))
    if model is None:
        raise ModelNotFound(f"no registered model named {name_or_id!r}; `ftbot models` (or /ft models) lists them.")
    return model


def use_model(db: Database, name_or_id: str | int) -> RegisteredModel:
    """Mark one model active (the one evaluations and drafts use); every other model becomes inactive."""
    chosen = get_model(db, name_or_id)
    with db.session() as session:
        session.exec(update(RegisteredModel).where(col(RegisteredModel.id) != chosen.id).values(active=False))
        session.exec(update(RegisteredModel).where(col(RegisteredModel.id) == chosen.id).values(active=True))
    chosen.active = True
    return chosen


def active_model(db: Database) -> RegisteredModel | None:
    with db.session() as session:
        return session.scalar(select(RegisteredModel).where(col(RegisteredModel.active).is_(True)))


def model_for_job(db: Database, job_id: int) -> RegisteredModel | None:
    with db.session() as session:
        return session.scalar(select(RegisteredModel).where(col(RegisteredModel.job_id) == job_id))


def model_lineage(db: Database, model: RegisteredModel) -> list[RegisteredModel]:
    """``model`` then the model it continued, and so on up to the first one trained on a base model.

    A DPO job continues a fine-tuned parent: its registered metrics (else its job's config) name the parent by
    registered name. The walk stops at a name no longer registered, and never loops on a corrupt cycle.
    """
    chain = [model]
    seen = {model.id}
    current = model
    while True:
        parent_name = (current.metrics or {}).get("parent_model")
        if not parent_name and current.job_id is not None:
            with db.session() as session:
                job = session.get(Job, current.job_id)
            parent_name = ((job.config if job else None) or {}).get("parent_model")
        if not parent_name:
            return chain
        with db.session() as session:
            parent = session.scalar(select(RegisteredModel).where(col(RegisteredModel.name) == str(parent_name)))
        if parent is None or parent.id in seen:
            return chain
        chain.append(parent)
        seen.add(parent.id)
        current = parent


def model_record(model: RegisteredModel) -> dict[str, Any]:
    return {
        "id": model.id, "name": model.name, "backend": model.backend, "base_model": model.base_model,
        "location": model.location, "job_id": model.job_id, "snapshot_id": model.snapshot_id,
        "metrics": model.metrics, "cost_usd": model.cost_usd, "active": model.active,
        "created_at": _iso(model.created_at),
    }

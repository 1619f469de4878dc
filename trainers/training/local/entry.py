"""Training entry point for one local job: ``python -m trainers.training.local.entry --job-id N``.

The worker calls :func:`run` in-process, or runs this module under ``accelerate launch`` for several GPUs (every
rank runs it; only rank 0 writes to the database and saves the adapter).
"""

from __future__ import annotations

import argparse
import logging
import os
import tempfile
from pathlib import Path
from typing import Any

from storage.artifacts import ArtifactStore
from storage.config import Settings
from storage.db import Database
from storage.errors import FtbotError, TrainingError
from storage.eval_prompts import heldout_items, model_trained_prompt_hashes, scored_conversations, trained_prompt_hashes
from storage.jobs import (
    ModelNotFound,
    finish_job,
    get_job,
    get_model,
    metric_points,
    record_metric,
    update_job,
    update_unfinished_job,
)
from storage.snapshots import TRAIN, VALIDATION, snapshot_records
from storage.vocabulary import JobStatus
from trainers.training.launch import log_path, model_dir
from trainers.training.local.config import LocalTrainConfig
from trainers.training.local.train import TrainResult, train

log = logging.getLogger(__name__)

LOSS_CHART_NAME = "loss.png"


def _is_main_process() -> bool:
    return int(os.environ.get("RANK", "0")) == 0  # set by `accelerate launch` for each process


def heldout_for_job(db: Database, snapshot_id: int, config: LocalTrainConfig) -> list[list[dict[str, Any]]]:
    """The conversations the new model is scored on after training: the snapshot's validation split and the
    questions added by hand with a team reply, minus whatever this run or the model it continues trained on."""
    trained_on = trained_prompt_hashes(db, snapshot_id)
    if config.parent_model:
        try:
            trained_on |= model_trained_prompt_hashes(db, get_model(db, config.parent_model))
        except ModelNotFound:
            pass  # the parent was unregistered since: its training data can no longer be looked up
    return scored_conversations(heldout_items(db, snapshot_id, trained_on))


def publish_model(store: ArtifactStore, job_id: int, result: TrainResult) -> tuple[str, str | None]:
    """(adapter, merged model) locations in the artifact store: uploaded there (``models/<job id>/…``) unless the store
    is today's layout in ``$FTBOT_HOME``, where training already wrote them."""
    if store.is_default:
        return str(result.adapter_dir), str(result.merged_dir) if result.merged_dir else None
    adapter = store.publish_dir(result.adapter_dir, "models", job_id, "adapter")
    merged = store.publish_dir(result.merged_dir, "models", job_id, "merged") if result.merged_dir else None
    return adapter, merged


def publish_job_files(db: Database, store: ArtifactStore, job_id: int) -> None:
    """The loss chart and the worker log so far, under ``jobs/<job id>/`` in a shared store. Best effort: the model
    is what the job is for, so a chart or a log that cannot be written is logged, never a failed job."""
    if store.is_default:
        return  # the log is already there; the bot draws the chart from the database when it posts it
    try:
        # Local: matplotlib loads only for a shared store, after training (the chart code the bot posts to Slack).
        from trainers.plots import loss_curve_png

        with tempfile.TemporaryDirectory(prefix="ftbot-chart-") as scratch:
            chart = Path(scratch) / LOSS_CHART_NAME
            loss_curve_png(metric_points(db, job_id), job_id=job_id, path=chart)
            store.publish_file(chart, "jobs", job_id, LOSS_CHART_NAME)
    except (ValueError, OSError, FtbotError) as error:  # ValueError: no loss recorded
        log.warning("the loss chart of job %s was not stored: %s", job_id, error)
    worker_log = log_path(job_id)
    if worker_log.is_file():
        try:
            store.publish_file(worker_log, "jobs", job_id, worker_log.name)
        except (OSError, FtbotError) as error:
            log.warning("the worker log of job %s was not stored: %s", job_id, error)


def run(db: Database, job_id: int, settings: Settings | None = None) -> None:
    """Train the job's snapshot with its settings; record metrics and the result in the database.

    ``settings``: where artifacts go (``FTBOT_ARTIFACTS_URL``); None: read from the environment."""
    store = ArtifactStore.from_settings(settings)
    job = get_job(db, job_id)
    if job.snapshot_id is None:
        raise TrainingError(f"job {job_id} has no snapshot to train on")
    config = LocalTrainConfig.from_dict(job.config)
    train_records = snapshot_records(db, job.snapshot_id, TRAIN)
    valid_records = snapshot_records(db, job.snapshot_id, VALIDATION)
    main = _is_main_process()

    def metric_sink(step, train_loss, valid_loss, extra):
        record_metric(db, job_id, step, train_loss=train_loss, valid_loss=valid_loss, extra=extra or None)

    def progress_sink(progress):
        update_unfinished_job(db, job_id, progress={**(get_job(db, job_id).progress or {}), **progress})

    def should_stop() -> bool:
        return get_job(db, job_id).status == JobStatus.CANCELLED

    result = train(
        config, train_records, valid_records, model_dir(job_id),
        metric_sink=metric_sink if main else None,
        progress_sink=progress_sink if main else None,
        should_stop=should_stop,
        heldout=heldout_for_job(db, job.snapshot_id, config) if main else (),
    )
    if not main:
        return
    adapter, merged = publish_model(store, job_id, result)
    progress = {
        **(get_job(db, job_id).progress or {}),
        "step": result.steps, "train_tokens": result.train_tokens, "train_seconds": round(result.train_seconds, 2),
        "tokens_per_second": round(result.tokens_per_second, 1), "assistant_only_loss": result.assistant_only_loss,
        "quantized_4bit": result.quantized, "merged_dir": merged,
        # What the adapter applies to: the registry (and so evaluation) loads this + the adapter.
        "adapter_base": result.adapter_base,
    }
    if result.heldout is not None and result.baseline_heldout is not None:
        progress.update(heldout_loss=round(result.heldout.loss, 4), baseline_heldout_loss=round(result.baseline_heldout.loss, 4),
                        heldout_prompts=result.heldout.conversations)
    update_job(db, job_id, progress=progress)
    if should_stop():
        return  # cancelled mid-run: the canceller already finished the job
    publish_job_files(db, store, job_id)
    finish_job(db, job_id, JobStatus.SUCCEEDED, result_model=adapter, trained_tokens=result.train_tokens)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m trainers.training.local.entry")
    parser.add_argument("--job-id", type=int, required=True)
    args = parser.parse_args(argv)
    db = Database.open(Settings.from_env().database_url, migrate=False)
    try:
        run(db, args.job_id)
    finally:
        db.close()


if __name__ == "__main__":
    main()

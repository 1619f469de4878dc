"""The OpenAI fine-tuning back end: upload a snapshot, create the job, poll it, cancel it.

``OpenAI()`` reads ``OPENAI_API_KEY`` and ``OPENAI_BASE_URL`` (tests point it at a fake server on 127.0.0.1).
The client retries 429 and 5xx answers itself (``max_retries``: ``Settings.openai_max_retries``). Every call that
changes state is safe to repeat: files already uploaded and a job already created (found by its ``metadata``)
are reused, and metrics are upserted per step.
"""

from __future__ import annotations

import base64
import binascii
import csv
import io
import os
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from storage.config import DEFAULT_OPENAI_MAX_RETRIES
from storage.db import Database
from storage.errors import ConfigError, TrainingError
from storage.examples import pii_allowed_ids
from storage.jobs import finish_job, get_job, record_metric, update_job, update_unfinished_job
from storage.models import Job, stored_id, utcnow
from storage.records import canonical_json
from storage.scrub import scrub_credentials
from storage.snapshots import TRAIN, VALIDATION, jsonl_bytes, snapshot_members
from storage.vocabulary import JobStatus
from trainers.data.pii import redact_record

if TYPE_CHECKING:
    from openai import OpenAI
    from openai.types.fine_tuning import (
        DpoHyperparametersParam,
        FineTuningJob,
        FineTuningJobEvent,
        SupervisedHyperparametersParam,
    )
    from openai.types.fine_tuning.fine_tuning_job import Error as FineTuningJobError
    from openai.types.fine_tuning.job_create_params import Method

# OpenAI statuses that end a job; anything else (including statuses added later, e.g. "paused") is "not yet".
FINISHED = {"succeeded": JobStatus.SUCCEEDED, "failed": JobStatus.FAILED, "cancelled": JobStatus.CANCELLED}
WIND_DOWN_HINT = (
    "OpenAI's self-serve fine-tuning is winding down (closed to new organizations since 2026-05-07): if your "
    "organization cannot create jobs any more, train on-prem instead with `/ft train local` (or `ftbot train --backend local`)."
)


def make_client(client: OpenAI | None = None, *, max_retries: int = DEFAULT_OPENAI_MAX_RETRIES) -> OpenAI:
    """``client``, else an OpenAI client that retries 429/5xx ``max_retries`` times."""
    if client is not None:
        return client
    import openai  # Local: ~0.3 s to import, and CLI commands that load this module rarely call OpenAI.

    # The openai client reads its key itself; checking first turns its long error into what to do.
    if not os.environ.get("OPENAI_API_KEY"):
        raise ConfigError("OPENAI_API_KEY is not set: export it (and OPENAI_BASE_URL for a proxy) or train with --backend local.")
    return openai.OpenAI(max_retries=max_retries)


def upload_files(db: Database, job: Job) -> dict[str, bytes]:
    """The train and validation JSONL that leave the premises for ``job``: the snapshot's frozen lines, with personal
    data redacted when the job was started that way (``config.gate.redact_pii``).

    Redaction happens on the copy being uploaded only; the snapshot stays what it is. The number of redacted
    examples is stored in the job's config (``redacted_examples``) for the progress message and ``ftbot jobs``.
    """
    job_id = stored_id(job)
    if job.snapshot_id is None:
        raise TrainingError(f"job {job_id} has no snapshot")
    if not ((job.config or {}).get("gate") or {}).get("redact_pii"):
        return {split: jsonl_bytes(db, job.snapshot_id, split) for split in (TRAIN, VALIDATION)}
    files: dict[str, bytes] = {}
    redacted = 0
    # What a reviewer explicitly kept (a public support address, say) is uploaded as approved, like the quote says.
    allowed = pii_allowed_ids(db, (m.example_id for m in snapshot_members(db, job.snapshot_id)))
    for split in (TRAIN, VALIDATION):
        lines = []
        for member in snapshot_members(db, job.snapshot_id, split):
            clean, changed = (member.record, False) if member.example_id in allowed else redact_record(member.record)
            redacted += changed
            lines.append(canonical_json(clean) + "\n")
        files[split] = "".join(lines).encode("utf-8")
    update_job(db, job_id, config={**get_job(db, job_id).config, "redacted_examples": redacted})
    return files


@dataclass(frozen=True)
class PollResult:
    job: Job
    finished: bool
    changed: bool


def _suffix(job: Job) -> str:
    suffix = str(job.config.get("suffix") or f"ftbot-{job.id}")
    return suffix[:64]


def _method(job: Job) -> Method:
    n_epochs = int(job.config["n_epochs"]) if job.config.get("n_epochs") else None
    if job.method == "dpo":
        dpo: DpoHyperparametersParam = {}
        if n_epochs is not None:
            dpo["n_epochs"] = n_epochs
        dpo["beta"] = job.config.get("beta", "auto")
        return {"type": "dpo", "dpo": {"hyperparameters": dpo}}
    supervised: SupervisedHyperparametersParam = {}
    if n_epochs is not None:
        supervised["n_epochs"] = n_epochs
    return {"type": "supervised", "supervised": {"hyperparameters": supervised}}


def _api_error_text(error: Exception) -> str:
    message = getattr(error, "message", None) or str(error)
    status = getattr(error, "status_code", None)
    return f"{message} (HTTP {status})" if status else message


class OpenAIBackend:
    def __init__(self, client: OpenAI | None = None, *, max_retries: int = DEFAULT_OPENAI_MAX_RETRIES):
        self._client = client
        self._max_retries = max_retries

    @property
    def client(self) -> OpenAI:
        if self._client is None:
            self._client = make_client(max_retries=self._max_retries)
        return self._client

    # --- submit -------------------------------------------------------------------------------------------------

    def submit(self, db: Database, job_id: int) -> Job:
        """Upload the snapshot's splits and create the fine-tuning job; store the external ids."""
        import openai  # Local: see make_client.

        job = get_job(db, job_id)
        if job.external_id:
            return job
        if job.snapshot_id is None:
            raise TrainingError(f"job {job_id} has no snapshot")
        try:
            training_file, validation_file = job.training_file_id, job.validation_file_id
            if not training_file or not validation_file:
                files = upload_files(db, job)
            if not training_file:
                training_file = self.client.files.create(
                    file=(f"ftbot-job{job.id}-train.jsonl", files[TRAIN]), purpose="fine-tune"
                ).id
                job = update_job(db, job_id, training_file_id=training_file)
            if not validation_file:
                validation_file = self.client.files.create(
                    file=(f"ftbot-job{job.id}-validation.jsonl", files[VALIDATION]), purpose="fine-tune",
                ).id
                job = update_job(db, job_id, validation_file_id=validation_file)
            remote = self._existing_remote_job(job) or self.client.fine_tuning.jobs.create(
                model=job.base_model,
                training_file=training_file,
                validation_file=validation_file,
                suffix=_suffix(job),
                seed=int(job.config.get("seed", 42)),
                method=_method(job),
                metadata={"ftbot_job": str(job.id)},
            )
        except (openai.PermissionDeniedError, openai.BadRequestError, openai.NotFoundError, openai.UnprocessableEntityError) as error:
            text = scrub_credentials(f"OpenAI refused the fine-tuning job: {_api_error_text(error)}. {WIND_DOWN_HINT}")
            finish_job(db, job_id, JobStatus.FAILED, error=text)
            raise TrainingError(text) from error
        except openai.AuthenticationError as error:
            text = scrub_credentials(f"OpenAI rejected the API key: {_api_error_text(error)}. Check OPENAI_API_KEY.")
            finish_job(db, job_id, JobStatus.FAILED, error=text)
            raise ConfigError(text) from error
        except openai.APIConnectionError as error:
            # Nothing was created (or we could not tell): leave the job pending so a retry resumes it.
            raise TrainingError(scrub_credentials(
                f"cannot reach OpenAI at {self.client.base_url}: {error}. Check the network or OPENAI_BASE_URL, then start again."
            )) from error
        return update_job(
            db, job_id, external_id=remote.id, status=self._local_status(remote.status), started_at=utcnow(),
            progress={"remote_status": remote.status},
        )

    def _existing_remote_job(self, job: Job) -> FineTuningJob | None:
        """A job this ftbot job already created (the process died before storing its id), if any."""
        for remote in self.client.fine_tuning.jobs.list(limit=20).data:
            if (remote.metadata or {}).get("ftbot_job") == str(job.id) and remote.training_file == job.training_file_id:
                return remote
        return None

    @staticmethod
    def _local_status(remote_status: str) -> str:
        if remote_status in ("validating_files", "queued", "running"):
            return remote_status
        return FINISHED.get(remote_status, JobStatus.RUNNING)

    # --- poll ---------------------------------------------------------------------------------------------------

    def poll(self, db: Database, job_id: int) -> PollResult:
        """Fetch status and new events; record metrics; finish the job when OpenAI has."""
        job = get_job(db, job_id)
        if job.status in JobStatus.FINISHED:
            return PollResult(job, True, False)
        external_id = job.external_id
        if not external_id:
            raise TrainingError(f"job {job_id} was never submitted to OpenAI")
        remote = self.client.fine_tuning.jobs.retrieve(external_id)
        progress = dict(job.progress or {})
        before = (job.status, progress.get("step"), progress.get("message"))
        self._read_events(db, job_id, external_id, progress)
        progress["remote_status"] = remote.status
        if remote.estimated_finish:
            progress["estimated_finish"] = remote.estimated_finish
        status = self._local_status(remote.status)
        if remote.status == "succeeded":
            self._read_result_files(db, job_id, remote)
            update_job(db, job_id, progress=progress)
            finish_job(db, job_id, JobStatus.SUCCEEDED, result_model=remote.fine_tuned_model, trained_tokens=remote.trained_tokens)
        elif remote.status == "failed":
            update_job(db, job_id, progress=progress)
            finish_job(db, job_id, JobStatus.FAILED, error=failure_text(remote.error))
        elif remote.status == "cancelled":
            update_job(db, job_id, progress=progress)
            finish_job(db, job_id, JobStatus.CANCELLED)
        else:
            update_unfinished_job(db, job_id, status=status, progress=progress)
        job = get_job(db, job_id)
        after = (job.status, (job.progress or {}).get("step"), (job.progress or {}).get("message"))
        return PollResult(job, job.status in JobStatus.FINISHED, after != before)

    def _read_events(self, db: Database, job_id: int, external_id: str, progress: dict[str, Any]) -> None:
        """Page newest-first through events down to the last one seen; metrics events become job_metrics rows."""
        seen = progress.get("last_event_id")
        fresh: list[FineTuningJobEvent] = []
        after = None
        events = self.client.fine_tuning.jobs
        for _page in range(20):
            page = (events.list_events(external_id, limit=100, after=after) if after
                    else events.list_events(external_id, limit=100))
            stop = False
            for event in page.data:
                if event.id == seen:
                    stop = True
                    break
                fresh.append(event)
            if stop or not page.has_more or not page.data:
                break
            after = page.data[-1].id
        for event in reversed(fresh):  # oldest first
            # ``data`` is a JSON object (metrics events) or absent.
            data: dict[str, Any] = dict(event.data) if isinstance(event.data, dict) else {}
            if event.type == "metrics" and "step" in data:
                step = int(data["step"])
                valid = data.get("full_valid_loss", data.get("valid_loss"))
                extra = {k: v for k, v in data.items() if k not in ("step", "train_loss") and isinstance(v, (int, float))}
                record_metric(db, job_id, step, train_loss=data.get("train_loss"), valid_loss=valid, extra=extra or None)
                progress["step"] = step
                if data.get("total_steps"):
                    progress["total_steps"] = int(data["total_steps"])
            else:
                progress["message"] = scrub_credentials(event.message)
        if fresh:
            progress["last_event_id"] = fresh[0].id

    def _read_result_files(self, db: Database, job_id: int, remote: FineTuningJob) -> None:
        for file_id in remote.result_files or []:
            raw = self.client.files.content(file_id).read()
            for row in parse_metrics_csv(raw):
                record_metric(db, job_id, row["step"], train_loss=row["train_loss"], valid_loss=row["valid_loss"],
                              extra=row["extra"] or None)

    # --- cancel -------------------------------------------------------------------------------------------------

    def cancel(self, db: Database, job_id: int) -> Job:
        import openai  # Local: see make_client.

        job = get_job(db, job_id)
        if job.external_id and job.status not in JobStatus.FINISHED:
            try:
                self.client.fine_tuning.jobs.cancel(job.external_id)
            except openai.BadRequestError:
                return self.poll(db, job_id).job  # it finished meanwhile: record how
        finish_job(db, job_id, JobStatus.CANCELLED)
        return get_job(db, job_id)


def failure_text(error: FineTuningJobError | None) -> str:
    """OpenAI's error verbatim, plus what to do next."""
    code = getattr(error, "code", None) if error is not None else None
    message = getattr(error, "message", None) if error is not None else None
    param = getattr(error, "param", None) if error is not None else None
    text = f"OpenAI reported the job failed: {message or 'no reason given'}"
    if code:
        text += f" (code: {code}" + (f", param: {param}" if param else "") + ")"
    if code and ("file" in code or (param or "").endswith("_file")):
        text += ". Fix the examples named above (`ftbot validate` shows them by line), then start a new job."
    else:
        text += f". Retry with `/ft train openai`; if OpenAI keeps refusing, {WIND_DOWN_HINT[0].lower()}{WIND_DOWN_HINT[1:]}"
    return scrub_credentials(text)


def _decode_csv(raw: bytes | str) -> str:
    """Result files arrive as CSV text, or base64 of it for some clients/accounts: accept both."""
    if isinstance(raw, str):
        raw = raw.encode()
    text = raw.decode("utf-8", errors="replace").lstrip("\ufeff")
    if text.lstrip().lower().startswith("step"):
        return text
    try:
        decoded = base64.b64decode(raw.strip(), validate=True).decode("utf-8")
    except (binascii.Error, ValueError, UnicodeDecodeError):
        return text
    return decoded.lstrip("\ufeff")


def _number(value: str | None) -> float | None:
    if value is None or value.strip() == "":
        return None
    try:
        return float(value)
    except ValueError:
        return None


def parse_metrics_csv(raw: bytes | str) -> list[dict[str, Any]]:
    """Rows ``{step, train_loss, valid_loss, extra}`` of a fine-tuning result file (plain or base64 CSV)."""
    rows = []
    for row in csv.DictReader(io.StringIO(_decode_csv(raw))):
        step = _number(row.get("step"))
        if step is None:
            continue
        valid = _number(row.get("full_valid_loss")) if row.get("full_valid_loss") else _number(row.get("valid_loss"))
        extra = {k: _number(v) for k, v in row.items() if k not in ("step", "train_loss", "valid_loss") and _number(v) is not None}
        rows.append({"step": int(step), "train_loss": _number(row.get("train_loss")), "valid_loss": valid, "extra": extra})
    return rows

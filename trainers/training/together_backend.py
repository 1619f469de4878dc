"""The Together AI fine-tuning back end: upload a snapshot, create a LoRA job, poll it, bring the adapter home.

``Together()`` reads ``TOGETHER_API_KEY`` and ``TOGETHER_BASE_URL`` (the API root without ``/v1``; tests point it at
a fake server on 127.0.0.1). Together trains a LoRA adapter on its GPUs; when the job completes the adapter is
downloaded into ``model_dir(job_id)/"adapter"`` (and published to the artifact store, ``FTBOT_ARTIFACTS_URL``, when
that is shared) and runs on-prem like a local job's adapter. Serving it on Together itself is a dedicated endpoint,
billed per minute, that only an admin starts (``trainers.training.together_endpoints``).

Every call that changes state is safe to repeat: uploaded file ids are stored on the job before the next step, a
job already created is found again by its suffix and training file, and metrics are upserted per step.
"""

from __future__ import annotations

import logging
import os
import tempfile
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

from storage.artifacts import ArtifactStore
from storage.db import Database
from storage.errors import ArtifactError, ConfigError, OverBudget, TrainingError
from storage.examples import pii_allowed_ids
from storage.jobs import finish_job, get_job, record_metric, update_job, update_unfinished_job
from storage.models import Job, Snapshot, SnapshotMember, stored_id, utcnow
from storage.records import canonical_json
from storage.scrub import scrub_credentials
from storage.snapshots import TRAIN, VALIDATION, snapshot_members
from storage.vocabulary import JobStatus
from trainers.data.pii import redact_record
from trainers.training.archives import extract_archive
from trainers.training.launch import model_dir
from trainers.training.openai_backend import PollResult
from trainers.training.quote import Quote

if TYPE_CHECKING:
    from together import Together
    from together.types.finetune_model_limits import FinetuneModelLimits

    from storage.config import Settings

log = logging.getLogger("ftbot.together")

# Together statuses that end a job; every other one (including statuses added later) means "not yet".
FINISHED = {"completed": JobStatus.SUCCEEDED, "error": JobStatus.FAILED, "user_error": JobStatus.FAILED,
            "cancelled": JobStatus.CANCELLED}
KNOWN_UNFINISHED = ("pending", "queued", "running", "compressing", "uploading", "cancel_requested")
DEFAULT_EPOCHS = 3
SUFFIX_LIMIT = 40  # Together: "up to 40 character suffix"
CHARS_PER_TOKEN = 4  # rough: English text averages about 4 characters per token
ADAPTER = "adapter"
TOGETHER_HINT = "See the job on https://api.together.ai/jobs, fix what Together names above, then start a new job."


def make_together_client(client: Together | None = None) -> Together:
    """``client``, else a Together client (it reads ``TOGETHER_API_KEY`` and ``TOGETHER_BASE_URL`` itself)."""
    if client is not None:
        return client
    if not os.environ.get("TOGETHER_API_KEY"):
        raise ConfigError(
            "TOGETHER_API_KEY is not set: export it (and TOGETHER_BASE_URL for a proxy) or train with --backend local."
        )
    try:
        from together import Together  # Local: the SDK is an optional extra and slow to import.
    except ImportError as error:
        raise ConfigError(f"training on Together AI needs the together extra: pip install 'ftbot[together]' ({error})") from error
    return Together()


def together_key_missing(client: Together | None = None) -> bool:
    """True when no client was given and ``TOGETHER_API_KEY`` is unset: callers say so before quoting."""
    return client is None and not os.environ.get("TOGETHER_API_KEY")


def adapter_base_model(together_model: str) -> str:
    """The Hugging Face id an adapter trained on ``together_model`` applies to (Together's ``-Reference`` bases are
    the unmodified Hugging Face weights under a serving-free name)."""
    return together_model.removesuffix("-Reference")


# --- the data that leaves the premises ---------------------------------------------------------------------------


def together_record(record: dict[str, Any], method: str) -> dict[str, Any]:
    """A snapshot line (OpenAI's SFT or DPO format) in Together's conversational or preference format."""
    if method == "dpo":
        return {
            "input": {"messages": record["input"]["messages"]},
            "preferred_output": record["preferred_output"],
            "non_preferred_output": record["non_preferred_output"],
        }
    line: dict[str, Any] = {"messages": record["messages"]}
    if record.get("tools"):
        line["tools"] = record["tools"]
    return line


def _split_members(db: Database, snapshot_id: int) -> dict[str, list[SnapshotMember]]:
    members = snapshot_members(db, snapshot_id)
    return {split: [m for m in members if m.split == split] for split in (TRAIN, VALIDATION)}


def _lines(db: Database, snapshot_id: int, method: str, *, redact: bool) -> tuple[dict[str, bytes], int]:
    """The train and validation JSONL for Together, redacted when asked; with the number of redacted examples."""
    splits = _split_members(db, snapshot_id)
    # What a reviewer explicitly kept (a public support address, say) is uploaded as approved, like the quote says.
    allowed = pii_allowed_ids(db, (m.example_id for ms in splits.values() for m in ms)) if redact else set()
    files: dict[str, bytes] = {}
    redacted = 0
    for split, members in splits.items():
        out = []
        for member in members:
            record = member.record
            if redact and member.example_id not in allowed:
                record, changed = redact_record(record)
                redacted += changed
            out.append(canonical_json(together_record(record, method)) + "\n")
        files[split] = "".join(out).encode("utf-8")
    return files, redacted


def _redacts(job: Job) -> bool:
    config = job.config or {}
    return bool(config.get("redact_pii") or (config.get("gate") or {}).get("redact_pii"))


def _upload(client: Together, name: str, data: bytes) -> str:
    """Upload JSONL bytes (the SDK uploads from a path: it checks the file and sends its checksum)."""
    with tempfile.TemporaryDirectory(prefix="ftbot-together-") as folder:
        path = Path(folder) / name
        path.write_bytes(data)
        return client.files.upload(path, purpose="fine-tune", check=True).id


def api_error_text(error: Exception) -> str:
    """Together's own message, verbatim (its JSON ``error.message`` when there is one), and the HTTP status."""
    body = getattr(error, "body", None)
    message = None
    if isinstance(body, dict):
        inner = body.get("error", body)
        message = inner.get("message") if isinstance(inner, dict) else None
    message = message or getattr(error, "message", None) or str(error)
    status = getattr(error, "status_code", None)
    return f"{message} (HTTP {status})" if status else str(message)


# --- the quote -----------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class TogetherEstimate:
    """The quote's part that only Together knows."""

    cost_usd: float | None
    max_seq_length: int | None
    max_lora_rank: int | None
    too_long: list[int]  # example ids over the model's max sequence length (roughly counted)
    notes: list[str] = field(default_factory=list)


def _training_method(method: str) -> Any:
    return {"method": "dpo"} if method == "dpo" else {"method": "sft", "train_on_inputs": "auto"}


def estimate(client: Together, db: Database, snapshot: Snapshot, *, model: str, method: str, epochs: int,
             settings: Settings) -> TogetherEstimate:
    """Limits and price from Together for training ``model`` on ``snapshot``.

    Only the model's name goes to Together here (its limits). Together prices only an uploaded file
    (``estimate-price`` takes a file id), so the price is asked at Start, after the upload and before the job exists.
    A model Together cannot fine-tune raises :class:`TrainingError` with Together's words.
    """
    import together  # Local: see make_together_client.

    try:
        limits: FinetuneModelLimits = client.fine_tuning.model_limits(model_name=model)
    except together.APIStatusError as error:
        raise TrainingError(scrub_credentials(
            f"Together cannot fine-tune {model}: {api_error_text(error)}. Pick a model from "
            "https://docs.together.ai/docs/fine-tuning-models (set FTBOT_TOGETHER_MODEL or pass the model)."
        )) from error
    max_seq = limits.max_seq_length_dpo if method == "dpo" else limits.max_seq_length_sft
    max_rank = limits.lora_training.max_rank
    notes: list[str] = []
    files, _ = _lines(db, stored_id(snapshot), method, redact=True)
    too_long = []
    for member in snapshot_members(db, stored_id(snapshot)):
        tokens = len(canonical_json(together_record(member.record, method))) // CHARS_PER_TOKEN
        if max_seq and tokens > max_seq:
            too_long.append(member.example_id if member.example_id is not None else member.position)
    if too_long:
        notes.append(f"{len(too_long)} example(s) are about longer than {model}'s {max_seq} tokens and would be "
                     f"cut: {', '.join(str(i) for i in too_long[:10])}{' …' if len(too_long) > 10 else ''}")
    if settings.together_lora_r > max_rank:
        notes.append(f"LoRA rank {settings.together_lora_r} is above {model}'s maximum {max_rank}: "
                     "lower FTBOT_TOGETHER_LORA_R.")
    if epochs > limits.max_num_epochs:
        notes.append(f"{epochs} epochs is above {model}'s maximum of {limits.max_num_epochs}.")
    # Together prices a run only from an uploaded training file, and nothing leaves the premises before someone
    # presses Start: the price is asked at Start (TogetherBackend.submit), before the job is created.
    notes.append("Together prices a run from its uploaded training file: Start uploads the redacted file, asks "
                 "Together for the price and creates the job only within the budget cap (FTBOT_BUDGET_USD).")
    return TogetherEstimate(None, max_seq, max_rank, too_long, notes)


# --- the back end --------------------------------------------------------------------------------------------------


def _suffix(job: Job) -> str:
    return str(job.config.get("suffix") or f"ftbot-{job.id}")[:SUFFIX_LIMIT]


def _local_status(remote_status: str) -> str:
    return FINISHED.get(remote_status, JobStatus.RUNNING)


class TogetherBackend:
    def __init__(self, client: Together | None = None, *, settings: Settings):
        self._client = client
        self._settings = settings

    @property
    def client(self) -> Together:
        if self._client is None:
            self._client = make_together_client()
        return self._client

    # --- submit -------------------------------------------------------------------------------------------------

    def submit(self, db: Database, job_id: int) -> Job:
        """Upload the snapshot's splits and create the LoRA job; store the file ids and the Together job id."""
        import together  # Local: see make_together_client.

        job = get_job(db, job_id)
        if job.external_id:
            return job
        if job.snapshot_id is None:
            raise TrainingError(f"job {job_id} has no snapshot")
        try:
            training_file, validation_file = job.training_file_id, job.validation_file_id
            files, redacted = _lines(db, job.snapshot_id, job.method, redact=_redacts(job))
            if _redacts(job):
                job = update_job(db, job_id, config={**job.config, "redacted_examples": redacted})
            if not training_file:
                training_file = _upload(self.client, f"ftbot-job{job.id}-train.jsonl", files[TRAIN])
                job = update_job(db, job_id, training_file_id=training_file)
            if not validation_file and files[VALIDATION]:
                validation_file = _upload(self.client, f"ftbot-job{job.id}-validation.jsonl", files[VALIDATION])
                job = update_job(db, job_id, validation_file_id=validation_file)
            remote_id = self._existing_remote_job(job)
            if remote_id is None:
                refusal = self._price_refusal(db, job, training_file, validation_file)
                if refusal:
                    finish_job(db, job_id, JobStatus.FAILED, error=refusal)
                    return get_job(db, job_id)
                remote_id = self._create(job, training_file, validation_file)
            remote = self.client.fine_tuning.retrieve(remote_id)
        except together.AuthenticationError as error:
            text = scrub_credentials(f"Together rejected the API key: {api_error_text(error)}. Check TOGETHER_API_KEY.")
            finish_job(db, job_id, JobStatus.FAILED, error=text)
            raise ConfigError(text) from error
        except together.APIConnectionError as error:
            # Nothing was created (or we could not tell): leave the job pending so a retry resumes it.
            raise TrainingError(scrub_credentials(
                f"cannot reach Together at {self.client.base_url}: {error}. "
                "Check the network or TOGETHER_BASE_URL, then start again."
            )) from error
        except (together.APIStatusError, ValueError) as error:
            # ValueError: the SDK's own checks against the model's limits (LoRA rank, batch size, ...).
            reason = api_error_text(error) if isinstance(error, together.APIStatusError) else str(error)
            text = scrub_credentials(f"Together refused the fine-tuning job: {reason}. {TOGETHER_HINT}")
            finish_job(db, job_id, JobStatus.FAILED, error=text)
            raise TrainingError(text) from error
        return update_job(
            db, job_id, external_id=remote.id, status=_local_status(remote.status), started_at=utcnow(),
            progress={**(get_job(db, job_id).progress or {}), "remote_status": remote.status},
        )

    def _price_refusal(self, db: Database, job: Job, training_file: str, validation_file: str | None) -> str | None:
        """Ask Together what the run costs (kept in the job's progress); why it must not start, or None.

        Above the budget cap without an admin's confirmation, OverBudget: the job's quote now carries Together's price
        (the caller makes the job a quote again, whose Start needs an admin), and the uploaded files are kept for it.
        """
        config, settings = job.config or {}, self._settings
        epochs = int(config.get("n_epochs") or DEFAULT_EPOCHS)
        # Priced as created: evaluations on the validation split once per epoch (see _create).
        evaluation = {"validation_file": validation_file, "n_evals": epochs} if validation_file else {"n_evals": 0}
        price = self.client.fine_tuning.estimate_price(
            training_file=training_file, model=job.base_model, n_epochs=epochs, **evaluation,
            training_method=_training_method(job.method),
            training_type={"type": "Lora", "lora_r": int(config.get("lora_r") or settings.together_lora_r),
                           "lora_alpha": int(config.get("lora_alpha") or settings.together_lora_alpha)},
        )
        if not price.estimation_available:
            return None
        cost = price.estimated_total_price
        update_job(db, stored_id(job), estimated_cost_usd=cost,
                   progress={**(job.progress or {}), "together_estimate_usd": cost})
        admin = bool((config.get("gate") or {}).get("admin_confirmed"))
        if settings.budget_usd is not None and cost is not None and cost > settings.budget_usd and not admin:
            if job.quote:
                update_job(db, stored_id(job), quote=replace(Quote.from_json(job.quote), cost_usd=cost).to_json())
            raise OverBudget(
                f"Together prices this run at ${cost:,.2f}, above the budget cap ${settings.budget_usd:,.2f} "
                "(FTBOT_BUDGET_USD): no job was created and nothing is billed. An ftbot admin can start it anyway "
                "(the quote now shows Together's price), or train fewer epochs.")
        if price.allowed_to_proceed is False:
            return (f"Together says the account cannot pay for this run (${cost:,.2f}; limit ${price.user_limit}): "
                    "no job was created. Add credit to the Together account, then start again.")
        return None

    def _create(self, job: Job, training_file: str, validation_file: str | None) -> str:
        config, settings = job.config or {}, self._settings
        epochs = int(config.get("n_epochs") or DEFAULT_EPOCHS)
        parent = config.get("parent_external_id") if job.method == "dpo" else None
        extra: dict[str, Any] = {}
        if job.method == "dpo" and isinstance(config.get("beta"), (int, float)):
            extra["dpo_beta"] = float(config["beta"])
        if job.method != "dpo":
            extra["train_on_inputs"] = "auto"
        remote = self.client.fine_tuning.create(
            training_file=training_file,
            validation_file=validation_file or "",
            n_evals=epochs if validation_file else 0,
            # Continuing a model trained on Together: the checkpoint names the base, and the SDK refuses both.
            model=None if parent else job.base_model,
            from_checkpoint=str(parent) if parent else None,
            n_epochs=epochs,
            learning_rate=float(config.get("learning_rate") or settings.together_learning_rate),
            lora=True,
            lora_r=int(config.get("lora_r") or settings.together_lora_r),
            lora_alpha=float(config.get("lora_alpha") or settings.together_lora_alpha),
            suffix=_suffix(job),
            training_method="dpo" if job.method == "dpo" else "sft",
            random_seed=int(config.get("seed", 42)),
            **extra,
        )
        return remote.id

    def _existing_remote_job(self, job: Job) -> str | None:
        """A job this ftbot job already created (the process died before storing its id), if any."""
        for remote in self.client.fine_tuning.list().data or []:
            if remote.suffix == _suffix(job) and remote.training_file == job.training_file_id:
                return remote.id
        return None

    # --- poll ---------------------------------------------------------------------------------------------------

    def poll(self, db: Database, job_id: int) -> PollResult:
        """Fetch status, new events and metrics; bring the adapter home and finish the job when Together has."""
        job = get_job(db, job_id)
        if job.status in JobStatus.FINISHED:
            return PollResult(job, True, False)
        external_id = job.external_id
        if not external_id:
            raise TrainingError(f"job {job_id} was never submitted to Together")
        remote = self.client.fine_tuning.retrieve(external_id)
        progress = dict(job.progress or {})
        before = (job.status, progress.get("step"), progress.get("message"), progress.get("remote_status"))
        error_message = self._read_events(external_id, progress)
        self._read_metrics(db, job_id, external_id)
        status = str(remote.status)
        progress["remote_status"] = status
        if remote.x_model_output_name:
            progress["together_output_name"] = remote.x_model_output_name
        if status == "completed":
            self._complete(db, job_id, external_id, progress, remote.token_count)
        elif FINISHED.get(status) == JobStatus.FAILED:
            update_job(db, job_id, progress=progress)
            finish_job(db, job_id, JobStatus.FAILED, error=failure_text(status, error_message))
        elif status == "cancelled":
            update_job(db, job_id, progress=progress)
            finish_job(db, job_id, JobStatus.CANCELLED)
        else:
            if status not in KNOWN_UNFINISHED and status not in progress.get("unknown_statuses", []):
                log.warning("Together job %s has status %r, which ftbot does not know: treating it as running",
                            external_id, status)
                progress["unknown_statuses"] = [*progress.get("unknown_statuses", []), status]
            update_unfinished_job(db, job_id, status=JobStatus.RUNNING, progress=progress)
        job = get_job(db, job_id)
        after = (job.status, (job.progress or {}).get("step"), (job.progress or {}).get("message"),
                 (job.progress or {}).get("remote_status"))
        return PollResult(job, job.status in JobStatus.FINISHED, after != before)

    def _read_events(self, external_id: str, progress: dict[str, Any]) -> str | None:
        """New events (oldest first; Together returns them all) into ``progress``; the last error message, if any."""
        events = self.client.fine_tuning.list_events(external_id).data
        seen = int(progress.get("events_seen", 0))
        error_message = None
        for event in events[seen:]:
            if event.step is not None:
                progress["step"] = event.step
            if event.total_steps:
                progress["total_steps"] = event.total_steps
            if event.message:
                progress["message"] = scrub_credentials(event.message)
            if event.type == "job_error" or event.level == "error":
                error_message = event.message
        progress["events_seen"] = len(events)
        if error_message is None:  # the error may have been read by an earlier poll
            error_message = next((e.message for e in reversed(events) if e.type == "job_error" or e.level == "error"), None)
        return error_message

    def _read_metrics(self, db: Database, job_id: int, external_id: str) -> None:
        import together  # Local: see make_together_client.

        try:
            rows = self.client.fine_tuning.list_metrics(external_id).metrics or []
        except together.APIStatusError as error:  # not every deployment has the endpoint: losses are a bonus
            log.info("no metrics for Together job %s: %s", external_id, api_error_text(error))
            return
        for row in rows:
            step = row.get("global_step", row.get("step"))
            if step is None:
                continue
            train = row.get("train_loss", row.get("loss"))
            valid = row.get("eval_loss", row.get("valid_loss"))
            extra = {k: v for k, v in row.items() if k not in ("global_step", "step", "train_loss", "loss", "eval_loss", "valid_loss")}
            record_metric(db, job_id, int(step), train_loss=train, valid_loss=valid, extra=extra or None)

    def _complete(self, db: Database, job_id: int, external_id: str, progress: dict[str, Any],
                  token_count: int | None) -> None:
        import together  # Local: see make_together_client.

        target = model_dir(job_id) / ADAPTER
        store = ArtifactStore.from_settings(self._settings)
        try:
            archive = self.client.fine_tuning.content(ft_id=external_id, checkpoint="adapter").read()
            extract_archive(archive, target)
            # A shared store (a directory every node sees, or S3): the adapter goes there, as a local job's does.
            location = str(target) if store.is_default else store.publish_dir(target, "models", job_id, ADAPTER)
        except (together.APIError, TrainingError, ArtifactError) as error:
            # The job is done on Together; a failed download (or upload to the store) is retried by the next poll.
            reason = api_error_text(error) if isinstance(error, together.APIError) else str(error)
            progress["message"] = scrub_credentials(f"downloading the adapter failed (will retry): {reason}")
            update_unfinished_job(db, job_id, status=JobStatus.RUNNING, progress=progress)
            return
        progress["message"] = f"adapter downloaded to {location}"
        update_job(db, job_id, progress=progress)
        finish_job(db, job_id, JobStatus.SUCCEEDED, result_model=location, trained_tokens=token_count)

    # --- cancel -------------------------------------------------------------------------------------------------

    def cancel(self, db: Database, job_id: int) -> Job:
        import together  # Local: see make_together_client.

        job = get_job(db, job_id)
        if job.external_id and job.status not in JobStatus.FINISHED:
            try:
                self.client.fine_tuning.cancel(job.external_id)
            except together.BadRequestError:
                return self.poll(db, job_id).job  # it finished meanwhile: record how
        finish_job(db, job_id, JobStatus.CANCELLED)
        return get_job(db, job_id)


def failure_text(status: str, message: str | None) -> str:
    """Together's error verbatim, plus what to do next."""
    text = f"Together reported the job failed ({status}): {message or 'no reason given'}"
    if status == "user_error":
        text += ". Fix the data or settings Together names (`ftbot validate` checks the examples), then start a new job."
    else:
        text += f". {TOGETHER_HINT}"
    return scrub_credentials(text)

"""The OpenAI back end against the fake OpenAI server on 127.0.0.1 (real ``openai`` client via OPENAI_BASE_URL)."""

from __future__ import annotations

import base64
import json
import socket

import pytest

from storage.config import Settings
from storage.errors import TrainingError, ValidationFailed
from storage.examples import import_records, list_examples, update_example
from storage.jobs import get_job, job_metrics, list_models, metric_points
from storage.pairs import add_pair
from storage.snapshots import snapshot_records
from storage.vocabulary import JobStatus
from trainers.tiny_model import sample_conversations
from trainers.training.jobs import cancel_job, quote_job, refresh_job, start_job
from trainers.training.openai_backend import parse_metrics_csv

MODEL = "gpt-4o-mini-2024-07-18"


@pytest.fixture
def approved(db):
    import_records(db, enumerate(sample_conversations(20, seed=1), 1), source_file="t.jsonl", approved_by="U1")
    return db


def _run_to_end(db, job_id: int, limit: int = 15) -> list[str]:
    statuses = []
    for _ in range(limit):
        update = refresh_job(db, job_id)
        statuses.append(update.job.status)
        if update.finished:
            return statuses
    raise AssertionError(f"job did not finish: {statuses}")


def test_a_job_is_uploaded_created_polled_and_its_model_registered(approved, openai_api):
    db = approved
    quoted = quote_job(db, backend="openai", model=MODEL, created_by="U1")
    assert quoted.quote.cost_usd and quoted.quote.trained_tokens > 0
    job = start_job(db, quoted.job.id).job
    assert job.external_id and job.training_file_id and job.validation_file_id

    # Both splits were uploaded as the snapshot's frozen lines, and the job carries suffix, seed and method.
    uploaded_train = [json.loads(line) for line in openai_api.file_text(job.training_file_id).splitlines()]
    assert uploaded_train == snapshot_records(db, job.snapshot_id, "train")
    assert len(openai_api.file_text(job.validation_file_id).splitlines()) == 2
    created = openai_api.requests_to("/fine_tuning/jobs", "POST")[0].json
    assert created["model"] == MODEL and created["suffix"] == f"ftbot-{job.id}" and created["seed"] == 42
    assert created["method"]["type"] == "supervised" and created["metadata"] == {"ftbot_job": str(job.id)}

    statuses = _run_to_end(db, job.id)
    assert statuses[:2] == ["queued", "running"] and statuses[-1] == "succeeded"
    # Status advanced per poll; metrics arrived in steps while running.
    steps_seen = [m.step for m in job_metrics(db, job.id)]
    assert steps_seen == [1, 2, 3, 4, 5, 6]
    final = get_job(db, job.id)
    assert final.result_model.startswith(f"ft:{MODEL}:") and final.trained_tokens > 0
    points = metric_points(db, job.id)
    assert points[0]["train_loss"] > points[-1]["train_loss"] and points[-1]["valid_loss"] is not None

    [model] = list_models(db)
    assert model.name == final.result_model and model.backend == "openai" and model.job_id == job.id
    assert model.metrics["trained_tokens"] == final.trained_tokens
    assert model.metrics["estimated_tokens"] == quoted.quote.trained_tokens
    # Refreshing a finished job changes nothing and registers nothing twice.
    refresh_job(db, job.id)
    retrieves = [c for c in openai_api.calls if c.method == "GET" and c.path == f"/fine_tuning/jobs/{job.external_id}"]
    assert len(list_models(db)) == 1 and len(retrieves) == len(statuses)


@pytest.mark.parametrize("encoding", ["plain", "base64"])
def test_the_result_file_metrics_csv_is_read_plain_or_base64(approved, openai_api, encoding):
    openai_api.result_encoding = encoding
    job = start_job(approved, quote_job(approved, backend="openai", model=MODEL).job.id).job
    _run_to_end(approved, job.id)
    rows = job_metrics(approved, job.id)
    # train_accuracy exists only in the CSV (events say train_mean_token_accuracy): the file was decoded and read.
    assert all("train_accuracy" in (row.extra or {}) for row in rows)


def test_parse_metrics_csv_handles_both_forms_and_blank_cells():
    text = "step,train_loss,train_accuracy,valid_loss,valid_mean_token_accuracy\n1,2.5,0.4,,\n2,2.0,0.5,2.2,0.45\n"
    plain = parse_metrics_csv(text.encode())
    assert parse_metrics_csv(base64.b64encode(text.encode())) == plain
    assert plain[0] == {"step": 1, "train_loss": 2.5, "valid_loss": None, "extra": {"train_accuracy": 0.4}}
    assert plain[1]["valid_loss"] == 2.2


def test_a_failed_job_reports_openais_error_verbatim_with_what_to_do(approved, openai_api):
    openai_api.fail_jobs_with("invalid_training_file", "Line 7: every example needs an assistant message.", param="training_file",
                              at_status="validating_files")
    job = start_job(approved, quote_job(approved, backend="openai", model=MODEL).job.id).job
    assert _run_to_end(approved, job.id)[-1] == JobStatus.FAILED
    error = get_job(approved, job.id).error
    assert "Line 7: every example needs an assistant message." in error
    assert "code: invalid_training_file" in error and "ftbot validate" in error
    assert list_models(approved) == []


def test_a_server_side_failure_suggests_retrying_or_training_on_prem(approved, openai_api):
    openai_api.fail_jobs_with("server_error", "The job failed due to an internal error.")
    job = start_job(approved, quote_job(approved, backend="openai", model=MODEL).job.id).job
    assert _run_to_end(approved, job.id)[-1] == JobStatus.FAILED
    error = get_job(approved, job.id).error
    assert "The job failed due to an internal error." in error and "/ft train local" in error


@pytest.mark.parametrize("status", [403, 400])
def test_the_account_level_refusal_during_the_wind_down_is_explained(approved, openai_api, status):
    refusal = "Fine-tuning is not available for your organization."
    openai_api.refuse_create(status, refusal, code="fine_tuning_unavailable")
    job = quote_job(approved, backend="openai", model=MODEL).job
    with pytest.raises(TrainingError) as raised:
        start_job(approved, job.id)
    message = str(raised.value)
    assert refusal in message and "winding down" in message and "/ft train local" in message
    stored = get_job(approved, job.id)
    assert stored.status == JobStatus.FAILED and refusal in stored.error


def test_429_and_500_answers_are_retried_by_the_client(approved, openai_api):
    openai_api.inject("/files", 500)
    openai_api.inject("/fine_tuning/jobs", 429, 500)
    job = start_job(approved, quote_job(approved, backend="openai", model=MODEL).job.id).job
    assert job.external_id  # the upload and the create went through despite the injected errors
    assert len(openai_api.requests_to("/files", "POST")) == 3  # one failed + two uploads
    openai_api.inject(f"/fine_tuning/jobs/{job.external_id}", 429)
    assert refresh_job(approved, job.id).job.status == "queued"
    assert len(openai_api.requests_to("/fine_tuning/jobs", "POST")) == 1  # never two jobs


def test_a_double_start_creates_one_remote_job(approved, openai_api):
    job = quote_job(approved, backend="openai", model=MODEL).job
    first = start_job(approved, job.id)
    second = start_job(approved, job.id)
    assert first.started and not second.started and second.job.external_id == first.job.external_id
    assert len(openai_api.requests_to("/fine_tuning/jobs", "POST")) == 1


def test_cancel_stops_the_remote_job(approved, openai_api):
    job = start_job(approved, quote_job(approved, backend="openai", model=MODEL).job.id).job
    refresh_job(approved, job.id)
    cancelled = cancel_job(approved, job.id)
    assert cancelled.status == JobStatus.CANCELLED
    assert openai_api.jobs[job.external_id].body["status"] == "cancelled"
    assert refresh_job(approved, job.id).job.status == JobStatus.CANCELLED


def test_dpo_uploads_preference_pairs_with_the_dpo_method(db, openai_api):
    for i in range(12):
        add_pair(db, {"input": {"messages": [{"role": "user", "content": f"Where is order {i}?"}]},
                      "preferred_output": [{"role": "assistant", "content": "It ships today."}],
                      "non_preferred_output": [{"role": "assistant", "content": "No idea."}]}, source_kind="import")
    job = start_job(db, quote_job(db, backend="openai", method="dpo", model=MODEL).job.id).job
    created = openai_api.requests_to("/fine_tuning/jobs", "POST")[0].json
    assert created["method"] == {"type": "dpo", "dpo": {"hyperparameters": {"beta": "auto"}}}
    first_line = json.loads(openai_api.file_text(job.training_file_id).splitlines()[0])
    assert set(first_line) == {"input", "preferred_output", "non_preferred_output"}
    assert _run_to_end(db, job.id)[-1] == JobStatus.SUCCEEDED


def test_pii_blocks_an_openai_upload_unless_explicitly_allowed(db, openai_api):
    records = sample_conversations(12, seed=2)
    records[0]["messages"][1]["content"] = "My email is jane.doe@example.com, please call me."
    import_records(db, enumerate(records, 1), source_file="t.jsonl", approved_by="U1")
    job = quote_job(db, backend="openai", model=MODEL).job
    with pytest.raises(ValidationFailed, match="unredacted personal data"):
        start_job(db, job.id)
    assert openai_api.requests_to("/files") == []  # nothing left the premises
    assert start_job(db, job.id, allow_pii=True).started
    assert get_job(db, job.id).config["gate"]["allow_pii"] is True


def test_start_with_personal_data_redacted_uploads_redacted_copies_and_leaves_the_snapshot_alone(db, openai_api):
    records = sample_conversations(12, seed=2)
    records[0]["messages"][1]["content"] = "My email is jane.doe@example.com, please call me."
    import_records(db, enumerate(records, 1), source_file="t.jsonl", approved_by="U1")
    job = quote_job(db, backend="openai", model=MODEL).job
    assert job.quote["pii_blocks"]
    started = start_job(db, job.id, redact_pii=True)
    assert started.started and started.job.external_id  # the job starts without --allow-pii
    uploaded = openai_api.file_text(started.job.training_file_id) + openai_api.file_text(started.job.validation_file_id)
    assert "[EMAIL]" in uploaded and "jane.doe@example.com" not in uploaded
    assert all(json.loads(line) for line in uploaded.splitlines())  # still one JSON object per line
    assert len(uploaded.splitlines()) == 12
    # Only the upload is redacted: the frozen snapshot keeps what the team approved.
    frozen = json.dumps(snapshot_records(db, job.snapshot_id))
    assert "jane.doe@example.com" in frozen and "[EMAIL]" not in frozen
    config = get_job(db, job.id).config
    assert config["redacted_examples"] == 1
    assert config["gate"] == {"allow_pii": False, "redact_pii": True, "admin_confirmed": False}
    # A second click changes nothing: one upload per split, one job.
    assert not start_job(db, job.id, redact_pii=True).started
    assert len(openai_api.requests_to("/files", "POST")) == 2
    assert len(openai_api.requests_to("/fine_tuning/jobs", "POST")) == 1


def test_the_budget_cap_needs_an_admin(approved, openai_api, monkeypatch):
    monkeypatch.setenv("FTBOT_BUDGET_USD", "0.000001")
    quoted = quote_job(approved, backend="openai", model=MODEL, settings=Settings.from_env())
    assert quoted.quote.over_budget
    with pytest.raises(ValidationFailed, match="above the budget cap"):
        start_job(approved, quoted.job.id)
    assert start_job(approved, quoted.job.id, admin_confirmed=True).started


def test_an_unreachable_openai_leaves_the_job_startable(approved, openai_api, monkeypatch):
    with socket.socket() as probe:  # a port nothing listens on
        probe.bind(("127.0.0.1", 0))
        closed = probe.getsockname()[1]
    monkeypatch.setenv("OPENAI_BASE_URL", f"http://127.0.0.1:{closed}/v1")
    monkeypatch.setenv("FTBOT_OPENAI_MAX_RETRIES", "0")
    job = quote_job(approved, backend="openai", model=MODEL).job
    with pytest.raises(TrainingError, match="cannot reach OpenAI"):
        start_job(approved, job.id, settings=Settings.from_env())
    assert get_job(approved, job.id).status == JobStatus.QUOTED
    monkeypatch.setenv("OPENAI_BASE_URL", openai_api.base_url)
    assert start_job(approved, job.id).started and get_job(approved, job.id).external_id


def test_redacted_upload_keeps_what_a_reviewer_allowed(db, openai_api):
    records = sample_conversations(12, seed=3)
    records[0]["messages"][1]["content"] = "Write to support@acme.example for invoices."  # public: the reviewer keeps it
    records[1]["messages"][1]["content"] = "My email is jane.doe@example.com, please call me."
    import_records(db, enumerate(records, 1), source_file="t.jsonl", approved_by="U1")
    kept = next(e for e in list_examples(db) if "support@acme.example" in json.dumps(e.messages))
    update_example(db, kept.id, pii_allowed=True)
    job = quote_job(db, backend="openai", model=MODEL).job
    assert len(job.quote["pii"]) == 1  # the quote counts only what no reviewer allowed
    started = start_job(db, job.id, redact_pii=True)
    uploaded = openai_api.file_text(started.job.training_file_id) + openai_api.file_text(started.job.validation_file_id)
    assert "support@acme.example" in uploaded and "jane.doe@example.com" not in uploaded
    assert get_job(db, job.id).config["redacted_examples"] == 1  # the same count the quote showed

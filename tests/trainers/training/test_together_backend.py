"""The Together AI back end against the fake Together server on 127.0.0.1 (real ``together`` client via
TOGETHER_BASE_URL), and the fake's answers checked against the SDK's own pydantic types."""

from __future__ import annotations

import io
import json
import tarfile
from pathlib import Path

import pytest

from storage.config import Settings
from storage.errors import ConfigError, OverBudget, TrainingError
from storage.examples import import_records
from storage.jobs import create_job, get_job, job_metrics
from storage.pairs import add_pair
from storage.snapshots import create_snapshot, snapshot_records
from storage.vocabulary import JobStatus
from trainers.tiny_model import sample_conversations
from trainers.training.archives import extract_archive
from trainers.training.launch import model_dir
from trainers.training.together_backend import (
    TogetherBackend,
    adapter_base_model,
    estimate,
    make_together_client,
    together_key_missing,
)

MODEL = "meta-llama/Meta-Llama-3.1-8B-Instruct-Reference"


@pytest.fixture
def home(tmp_path, monkeypatch):
    monkeypatch.setenv("FTBOT_HOME", str(tmp_path / "home"))
    return tmp_path / "home"


@pytest.fixture
def adapter_source(tmp_path, together_api):
    """What the fake serves as the trained adapter (a stand-in: the real tiny adapter is tested by T2's eval test)."""
    source = tmp_path / "trained-adapter"
    source.mkdir()
    (source / "adapter_config.json").write_text(json.dumps({"r": 16, "lora_alpha": 32, "base_model_name_or_path": MODEL}))
    (source / "adapter_model.safetensors").write_bytes(b"\0" * 64)
    together_api.adapter_source = source
    return source


def _sft_job(db, *, records=None, config=None, method="sft"):
    import_records(db, enumerate(records or sample_conversations(20, seed=1), 1), source_file="t.jsonl", approved_by="U1")
    snapshot = create_snapshot(db, kind=method).snapshot
    return create_job(db, backend="together", base_model=MODEL, method=method, snapshot_id=snapshot.id,
                      config=config or {}, status=JobStatus.PENDING).job


def _creates(fake):
    """The ``POST /v1/fine-tunes`` requests (not estimate-price, cancel, ...)."""
    return [c for c in fake.calls if c.method == "POST" and c.path == "/fine-tunes"]


def _backend() -> TogetherBackend:
    return TogetherBackend(settings=Settings())


# --- the fake speaks the SDK's types -----------------------------------------------------------------------------


def test_the_fake_answers_validate_in_the_sdk_types(together_api, tmp_path, adapter_source):
    """Strict pydantic validation (the SDK itself parses leniently, which would hide a wrong shape)."""
    from together.lib.types.fine_tuning import FinetuneResponse as FinetuneResponseLib
    from together.types import FileResponse, FinetuneModelLimits, FinetuneResponse
    from together.types.fine_tuning_cancel_response import FineTuningCancelResponse
    from together.types.fine_tuning_estimate_price_response import AvailableEstimate
    from together.types.fine_tuning_list_events_response import FineTuningListEventsResponse
    from together.types.fine_tuning_list_metrics_response import FineTuningListMetricsResponse
    from together.types.fine_tuning_list_response import FineTuningListResponse

    client = make_together_client()
    path = tmp_path / "train.jsonl"
    path.write_text(json.dumps({"messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "hello"}]}) + "\n")
    uploaded = client.files.upload(path, purpose="fine-tune")
    assert [(c.method, c.path) for c in together_api.calls] == [
        ("POST", "/files"), ("PUT", f"/upload/{uploaded.id}"), ("POST", f"/files/{uploaded.id}/preprocess")]
    assert together_api.file_text(uploaded.id) == path.read_text()
    created = client.fine_tuning.create(training_file=uploaded.id, model=MODEL, lora=True, train_on_inputs="auto")
    together_api.step(created.id, 1, 4, loss=1.25, eval_loss=1.5)
    together_api.complete(created.id)

    def body(path: str, method: str = "GET", **params):
        response = client.get(path, cast_to=object, options={"params": params}) if method == "GET" else \
            client.post(path, cast_to=object, body=params)
        return response

    FileResponse.model_validate(body(f"/v1/files/{uploaded.id}"))
    FinetuneModelLimits.model_validate(body("/v1/fine-tunes/models/limits", model_name=MODEL))
    AvailableEstimate.model_validate(body("/v1/fine-tunes/estimate-price", "POST", training_file=uploaded.id, model=MODEL))
    job = body(f"/v1/fine-tunes/{created.id}")
    FinetuneResponse.model_validate(job)
    FinetuneResponseLib.model_validate(job)
    FineTuningListResponse.model_validate(body("/v1/fine-tunes"))
    events = FineTuningListEventsResponse.model_validate(body(f"/v1/fine-tunes/{created.id}/events"))
    assert [e.type for e in events.data][-2:] == ["training_complete", "job_complete"]
    assert FineTuningListMetricsResponse.model_validate(body(f"/v1/fine-tunes/{created.id}/metrics")).metrics
    other = client.fine_tuning.create(training_file=uploaded.id, model=MODEL, lora=True, train_on_inputs="auto")
    FineTuningCancelResponse.model_validate(body(f"/v1/fine-tunes/{other.id}/cancel", "POST"))
    archive = client.fine_tuning.content(ft_id=created.id, checkpoint="adapter").read()
    with tarfile.open(fileobj=io.BytesIO(archive)) as tar:
        assert sorted(tar.getnames()) == ["adapter_config.json", "adapter_model.safetensors"]


# --- estimate ----------------------------------------------------------------------------------------------------


def test_estimate_reads_limits_and_price_and_names_examples_over_the_max_length(sqlite_db, together_api):
    records = sample_conversations(12, seed=2)
    records[3]["messages"][-1]["content"] = "word " * 4000  # about 5,000 tokens by the 4-characters rule
    import_records(sqlite_db, enumerate(records, 1), source_file="t.jsonl", approved_by="U1")
    snapshot = create_snapshot(sqlite_db).snapshot
    together_api.max_seq_length = 2000
    result = estimate(make_together_client(), sqlite_db, snapshot, model=MODEL, method="sft", epochs=2, settings=Settings())
    assert result.max_seq_length == 2000 and result.max_lora_rank == 64
    assert result.too_long == [4]
    assert any("about longer" in note and "4" in note for note in result.notes)
    assert together_api.requests_to("/fine-tunes/models/limits")[0].query == {"model_name": MODEL}
    assert _creates(together_api) == []  # a quote creates no job
    # Together prices only an uploaded file, and a quote uploads nothing: the price is asked at Start.
    assert result.cost_usd is None and any("Start uploads the redacted file" in note for note in result.notes)


def test_a_quote_sends_together_nothing_but_the_model_name(sqlite_db, together_api):
    records = sample_conversations(12, seed=2)
    records[0]["messages"][1]["content"] = "My email is jane.doe@example.com, please call me."
    import_records(sqlite_db, enumerate(records, 1), source_file="t.jsonl", approved_by="U1")
    snapshot = create_snapshot(sqlite_db).snapshot
    estimate(make_together_client(), sqlite_db, snapshot, model=MODEL, method="sft", epochs=1, settings=Settings())
    assert together_api.file_contents == {} and together_api.requests_to("/fine-tunes/estimate-price") == []


def test_estimate_says_when_together_cannot_train_the_model(sqlite_db, together_api):
    import_records(sqlite_db, enumerate(sample_conversations(12), 1), source_file="t.jsonl", approved_by="U1")
    snapshot = create_snapshot(sqlite_db).snapshot
    together_api.refuse("/fine-tunes/models/limits", 404, "Model not found: acme/nope", method="GET")
    with pytest.raises(TrainingError, match="Model not found: acme/nope"):
        estimate(make_together_client(), sqlite_db, snapshot, model="acme/nope", method="sft", epochs=1, settings=Settings())


# --- submit, poll, cancel ------------------------------------------------------------------------------------------


def test_start_asks_together_the_price_and_creates_nothing_above_the_budget_cap(sqlite_db, together_api, home):
    capped = TogetherBackend(settings=Settings(budget_usd=0.0001))
    job_id = _sft_job(sqlite_db, config={"n_epochs": 2}).id
    with pytest.raises(OverBudget, match="above the budget cap"):
        capped.submit(sqlite_db, job_id)
    [priced] = together_api.requests_to("/fine-tunes/estimate-price")
    assert priced.json["n_epochs"] == 2 and priced.json["training_type"]["type"] == "Lora"
    job = get_job(sqlite_db, job_id)
    assert job.external_id is None and job.training_file_id  # the upload is kept for an admin's start
    assert _creates(together_api) == [] and job.estimated_cost_usd and job.estimated_cost_usd > 0.0001

    within = _backend().submit(sqlite_db, _sft_job(sqlite_db).id)
    assert within.external_id and within.progress["together_estimate_usd"] == within.estimated_cost_usd


def test_a_job_is_submitted_polled_and_its_adapter_brought_home(sqlite_db, together_api, home, adapter_source):
    db = sqlite_db
    job = _sft_job(db, config={"n_epochs": 2})
    backend = _backend()
    job = backend.submit(db, job.id)
    assert job.external_id.startswith("ft-") and job.training_file_id and job.validation_file_id
    uploaded = [json.loads(line) for line in together_api.file_text(job.training_file_id).splitlines()]
    assert uploaded == [{"messages": r["messages"]} for r in snapshot_records(db, job.snapshot_id, "train")]
    created = _creates(together_api)[-1].json
    assert created["model"] == MODEL and created["suffix"] == f"ftbot-{job.id}" and created["random_seed"] == 42
    assert created["n_epochs"] == 2 and created["learning_rate"] == Settings().together_learning_rate
    assert created["training_type"] == {"type": "Lora", "lora_r": 16, "lora_alpha": 32, "lora_dropout": 0.0,
                                        "lora_trainable_modules": "all-linear"}
    assert created["training_method"]["method"] == "sft" and created["validation_file"] == job.validation_file_id
    # Submitting again changes nothing.
    assert backend.submit(db, job.id).external_id == job.external_id
    assert len(_creates(together_api)) == 1

    together_api.advance(job.external_id, "queued", "Job queued")
    polled = backend.poll(db, job.id)
    assert not polled.finished and polled.changed and polled.job.status == JobStatus.RUNNING
    together_api.step(job.external_id, 1, 2, loss=1.5, eval_loss=1.6)
    together_api.step(job.external_id, 2, 2, loss=0.9)
    polled = backend.poll(db, job.id)
    assert polled.job.progress["step"] == 2 and polled.job.progress["total_steps"] == 2
    assert [(m.step, m.train_loss, m.valid_loss) for m in job_metrics(db, job.id)] == [(1, 1.5, 1.6), (2, 0.9, None)]
    together_api.advance(job.external_id, "compressing", event_type="model_compressing")
    assert backend.poll(db, job.id).job.status == JobStatus.RUNNING

    together_api.complete(job.external_id)
    done = backend.poll(db, job.id)
    assert done.finished and done.job.status == JobStatus.SUCCEEDED
    adapter = model_dir(job.id) / "adapter"
    assert done.job.result_model == str(adapter)
    assert (adapter / "adapter_config.json").read_text() == (adapter_source / "adapter_config.json").read_text()
    assert done.job.progress["together_output_name"] == together_api.jobs[job.external_id].body["model_output_name"]
    assert done.job.trained_tokens and done.job.trained_tokens > 0
    assert not any(p.name.startswith(".") for p in adapter.parent.iterdir())  # no staging folder left behind
    assert backend.poll(db, job.id) == type(done)(get_job(db, job.id), True, False)


def test_submitted_data_is_redacted_when_the_job_says_so(sqlite_db, together_api, home):
    records = sample_conversations(12, seed=2)
    records[0]["messages"][1]["content"] = "My email is jane.doe@example.com, please call me."
    job = _sft_job(sqlite_db, records=records, config={"gate": {"redact_pii": True}})
    job = _backend().submit(sqlite_db, job.id)
    uploaded = together_api.file_text(job.training_file_id) + together_api.file_text(job.validation_file_id)
    assert "[EMAIL]" in uploaded and "jane.doe@example.com" not in uploaded
    assert get_job(sqlite_db, job.id).config["redacted_examples"] == 1


def test_dpo_uploads_preference_pairs_and_continues_a_together_parent(sqlite_db, together_api, home):
    db = sqlite_db
    for i in range(12):
        add_pair(db, {"input": {"messages": [{"role": "user", "content": f"Where is order {i}?"}]},
                      "preferred_output": [{"role": "assistant", "content": "It ships today."}],
                      "non_preferred_output": [{"role": "assistant", "content": "No idea."}]}, source_kind="import")
    snapshot = create_snapshot(db, kind="dpo").snapshot
    job = create_job(db, backend="together", base_model=MODEL, method="dpo", snapshot_id=snapshot.id,
                     config={"parent_external_id": "ft-parent-1", "beta": 0.2}, status=JobStatus.PENDING).job
    job = _backend().submit(db, job.id)
    first = json.loads(together_api.file_text(job.training_file_id).splitlines()[0])
    assert set(first) == {"input", "preferred_output", "non_preferred_output"}
    created = _creates(together_api)[-1].json
    assert created["training_method"]["method"] == "dpo" and created["training_method"]["dpo_beta"] == 0.2
    assert created["from_checkpoint"] == "ft-parent-1" and "model" not in created


def test_a_failed_job_shows_togethers_message_verbatim(sqlite_db, together_api, home):
    backend = _backend()
    job = backend.submit(sqlite_db, _sft_job(sqlite_db).id)
    together_api.fail(job.external_id, "Training data has 3 lines with an invalid 'role' field", status="user_error")
    failed = backend.poll(sqlite_db, job.id)
    assert failed.finished and failed.job.status == JobStatus.FAILED
    assert "Training data has 3 lines with an invalid 'role' field" in failed.job.error
    assert "ftbot validate" in failed.job.error


def test_a_refused_create_fails_the_job_with_the_reason_and_what_to_do(sqlite_db, together_api, home):
    together_api.refuse("/fine-tunes", 400, "Insufficient balance: add credits to start this job")
    job = _sft_job(sqlite_db)
    with pytest.raises(TrainingError, match="Insufficient balance: add credits"):
        _backend().submit(sqlite_db, job.id)
    failed = get_job(sqlite_db, job.id)
    assert failed.status == JobStatus.FAILED and "Insufficient balance" in failed.error and "(HTTP 400)" in failed.error
    assert together_api.requests_to("/fine-tunes/estimate-price")  # the SDK priced it first; creation was refused


def test_a_rejected_key_is_a_config_error(sqlite_db, together_api, home):
    together_api.refuse("/files", 401, "Invalid API key provided")
    with pytest.raises(ConfigError, match="Check TOGETHER_API_KEY"):
        _backend().submit(sqlite_db, _sft_job(sqlite_db).id)


def test_unknown_statuses_are_tolerated_and_cancel_cancels(sqlite_db, together_api, home):
    backend = _backend()
    job = backend.submit(sqlite_db, _sft_job(sqlite_db).id)
    together_api.advance(job.external_id, "paused")
    assert backend.poll(sqlite_db, job.id).job.progress["unknown_statuses"] == ["paused"]
    assert backend.poll(sqlite_db, job.id).job.status == JobStatus.RUNNING
    cancelled = backend.cancel(sqlite_db, job.id)
    assert cancelled.status == JobStatus.CANCELLED
    assert together_api.jobs[job.external_id].body["status"] == "cancelled"
    assert backend.cancel(sqlite_db, job.id).status == JobStatus.CANCELLED  # again: nothing to do


def test_cancelling_a_job_that_finished_meanwhile_records_how_it_finished(sqlite_db, together_api, home, adapter_source):
    backend = _backend()
    job = backend.submit(sqlite_db, _sft_job(sqlite_db).id)
    together_api.complete(job.external_id)
    assert backend.cancel(sqlite_db, job.id).status == JobStatus.SUCCEEDED


def test_a_failed_download_is_retried_by_the_next_poll(sqlite_db, together_api, home, adapter_source):
    backend = _backend()
    job = backend.submit(sqlite_db, _sft_job(sqlite_db).id)
    together_api.complete(job.external_id)
    together_api.refuse("/finetune/download", 503, "storage unavailable", method="GET")
    backend = TogetherBackend(make_together_client().with_options(max_retries=0), settings=Settings())
    first = backend.poll(sqlite_db, job.id)
    assert not first.finished and first.job.status == JobStatus.RUNNING
    assert "storage unavailable" in first.job.progress["message"]
    assert backend.poll(sqlite_db, job.id).job.status == JobStatus.SUCCEEDED


def test_autorun_moves_a_job_to_the_end_by_itself(sqlite_db, together_api, home, adapter_source):
    together_api.autorun(steps=3)
    backend = _backend()
    job = backend.submit(sqlite_db, _sft_job(sqlite_db).id)
    for _ in range(12):
        if backend.poll(sqlite_db, job.id).finished:
            break
    final = get_job(sqlite_db, job.id)
    assert final.status == JobStatus.SUCCEEDED and [m.step for m in job_metrics(sqlite_db, job.id)] == [1, 2, 3]


def test_autorun_can_fail_jobs(sqlite_db, together_api, home):
    together_api.autorun(fail_with="CUDA out of memory on the training node")
    backend = _backend()
    job = backend.submit(sqlite_db, _sft_job(sqlite_db).id)
    for _ in range(6):
        if backend.poll(sqlite_db, job.id).finished:
            break
    final = get_job(sqlite_db, job.id)
    assert final.status == JobStatus.FAILED and "CUDA out of memory on the training node" in final.error


# --- helpers -------------------------------------------------------------------------------------------------------


def _tar(entries: dict[str, bytes], mode: str = "w:gz") -> bytes:
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode=mode) as archive:  # type: ignore[call-overload]
        for name, data in entries.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            archive.addfile(info, io.BytesIO(data))
    return buffer.getvalue()


@pytest.mark.parametrize("name", ["../evil.txt", "/etc/evil.txt", "a/../../evil.txt"])
def test_extraction_refuses_paths_outside_the_target(tmp_path: Path, name: str):
    with pytest.raises(TrainingError, match="unsafe path"):
        extract_archive(_tar({"adapter_config.json": b"{}", name: b"x"}), tmp_path / "adapter")
    assert not (tmp_path / "adapter").exists() and not (tmp_path / "evil.txt").exists()


def test_extraction_refuses_links(tmp_path: Path):
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w") as archive:
        link = tarfile.TarInfo("adapter_config.json")
        link.type, link.linkname = tarfile.SYMTYPE, "/etc/passwd"
        archive.addfile(link)
    with pytest.raises(TrainingError, match="link"):
        extract_archive(buffer.getvalue(), tmp_path / "adapter")


def test_extraction_unwraps_a_single_top_folder_and_replaces_an_old_adapter(tmp_path: Path):
    target = tmp_path / "adapter"
    target.mkdir()
    (target / "stale.bin").write_bytes(b"old")
    extract_archive(_tar({"checkpoint/adapter_config.json": b"{}", "checkpoint/adapter_model.safetensors": b"w"}, "w"), target)
    assert sorted(p.name for p in target.iterdir()) == ["adapter_config.json", "adapter_model.safetensors"]


def test_names_and_keys():
    assert adapter_base_model(MODEL) == "meta-llama/Meta-Llama-3.1-8B-Instruct"
    assert adapter_base_model("/models/tiny") == "/models/tiny"


def test_the_key_check(monkeypatch):
    monkeypatch.delenv("TOGETHER_API_KEY", raising=False)
    assert together_key_missing()
    with pytest.raises(ConfigError, match="TOGETHER_API_KEY is not set"):
        make_together_client()
    monkeypatch.setenv("TOGETHER_API_KEY", "k")
    assert not together_key_missing()

"""Together AI jobs through ftbot's one training API (quote → start → poll → registered model), against the fake
Together server on 127.0.0.1 with the real ``together`` client; the brought-home adapter then scores on-prem."""

from __future__ import annotations

from pathlib import Path

import pytest

from storage.config import Settings
from storage.errors import FtbotError, OverBudget, ValidationFailed
from storage.examples import import_records
from storage.jobs import get_job, list_models
from storage.vocabulary import JobStatus
from trainers.tiny_model import sample_conversations
from trainers.training.jobs import cancel_job, quote_job, refresh_job, start_job
from trainers.training.quote import Quote, quote_lines

TOGETHER_MODEL = "meta-llama/Meta-Llama-3.1-8B-Instruct-Reference"


@pytest.fixture
def home(tmp_path, monkeypatch) -> Path:
    monkeypatch.setenv("FTBOT_HOME", str(tmp_path / "home"))
    return tmp_path / "home"


def _approve(db, n: int = 20, *, pii: bool = False) -> None:
    records = sample_conversations(n, seed=3, max_turns=1)
    if pii:
        records[0]["messages"][1]["content"] = "My email is jane.doe@example.com, please call me."
    import_records(db, enumerate(records, 1), source_file="t.jsonl", approved_by="U1")


def _finish(db, fake, job_id: int) -> None:
    external = get_job(db, job_id).external_id
    assert external
    fake.advance(external, "running")
    fake.step(external, 1, 2, loss=2.5)
    fake.step(external, 2, 2, loss=2.0)
    fake.complete(external)
    for _ in range(5):
        if refresh_job(db, job_id).finished:
            return
    raise AssertionError(f"job #{job_id} did not finish: {get_job(db, job_id).status}")


def test_the_quote_sends_only_the_model_name_and_together_prices_the_run_at_start(sqlite_db, together_api, home):
    _approve(sqlite_db)
    quoted = quote_job(sqlite_db, backend="together", created_by="U1")
    quote = quoted.quote
    assert quoted.job.status == JobStatus.QUOTED and quoted.job.base_model == TOGETHER_MODEL
    assert quote.backend == "together" and quote.trained_tokens > 0 and quote.gpu_hours is None
    assert quoted.job.config["n_epochs"] == quote.epochs == 3
    assert quote.cost_usd is None  # Together prices only an uploaded file: nothing leaves before Start
    assert any(line.startswith("Estimated cost: Together AI prices the run at Start") for line in quote_lines(quote))
    assert [c.path for c in together_api.calls] == ["/fine-tunes/models/limits"]

    started = start_job(sqlite_db, quoted.job.id)
    assert started.started and started.job.estimated_cost_usd and started.job.estimated_cost_usd > 0
    assert started.job.progress["together_estimate_usd"] == started.job.estimated_cost_usd


def test_a_job_trains_on_together_and_its_adapter_is_registered_as_a_together_model(
        sqlite_db, together_api, home, adapter_dir, monkeypatch):
    together_api.adapter_source = adapter_dir
    _approve(sqlite_db)
    quoted = quote_job(sqlite_db, backend="together", model=TOGETHER_MODEL, epochs=2, created_by="U1")
    started = start_job(sqlite_db, quoted.job.id)
    assert started.started and started.job.external_id
    assert not start_job(sqlite_db, quoted.job.id).started  # a second Start (double click) creates nothing
    [created] = together_api.requests_to("/fine-tunes", "POST")[-1:]
    assert created.json["model"] == TOGETHER_MODEL and created.json["n_epochs"] == 2
    assert len([c for c in together_api.calls if c.method == "POST" and c.path.rstrip("/").endswith("/fine-tunes")]) == 1

    _finish(sqlite_db, together_api, quoted.job.id)
    job = get_job(sqlite_db, quoted.job.id)
    assert job.status == JobStatus.SUCCEEDED, job.error
    assert Path(job.result_model or "", "adapter_config.json").is_file()
    [model] = list_models(sqlite_db)
    assert model.backend == "together" and model.location == job.result_model and model.job_id == job.id
    assert model.name == job.progress["together_output_name"]
    assert model.base_model == "meta-llama/Meta-Llama-3.1-8B-Instruct"  # the adapter's Hugging Face base
    assert model.metrics["together_model"] == TOGETHER_MODEL


def test_personal_data_is_gated_like_openai_and_redacted_on_the_way_out(sqlite_db, together_api, home):
    _approve(sqlite_db, pii=True)
    quoted = quote_job(sqlite_db, backend="together", created_by="U1")
    assert quoted.quote.pii_blocks and "blocks the upload to Together AI" in "\n".join(quote_lines(quoted.quote))
    with pytest.raises(ValidationFailed, match="personal data"):
        start_job(sqlite_db, quoted.job.id)
    assert get_job(sqlite_db, quoted.job.id).status == JobStatus.QUOTED

    started = start_job(sqlite_db, quoted.job.id, redact_pii=True)
    assert started.started and started.job.config["gate"]["redact_pii"] is True
    uploaded = "".join(together_api.file_contents[f].decode() for f in together_api.file_contents)
    assert "[EMAIL]" in uploaded and "jane.doe@example.com" not in uploaded


def test_the_budget_cap_refuses_togethers_price_at_start_unless_an_admin_confirms(sqlite_db, together_api, home, monkeypatch):
    monkeypatch.setenv("FTBOT_BUDGET_USD", "0")
    settings = Settings.from_env()
    _approve(sqlite_db)
    refused = quote_job(sqlite_db, backend="together", created_by="U1", settings=settings).job.id
    with pytest.raises(OverBudget, match="above the budget cap"):
        start_job(sqlite_db, refused, settings=settings)
    assert not [c for c in together_api.calls if c.method == "POST" and c.path.rstrip("/").endswith("/fine-tunes")]
    # Nothing was created, and the job is a quote again that carries Together's price (evaluations included).
    job = get_job(sqlite_db, refused)
    [estimate] = [c.json for c in together_api.calls if c.path.endswith("/estimate-price")]
    assert estimate["n_evals"] == estimate["n_epochs"] and estimate["validation_file"] == job.validation_file_id
    quote = Quote.from_json(job.quote)
    assert job.status == JobStatus.QUOTED and quote.cost_usd == job.estimated_cost_usd > 0 and quote.over_budget
    # A second plain Start is refused by the gate, without asking Together again.
    with pytest.raises(FtbotError, match="budget cap"):
        start_job(sqlite_db, refused, settings=settings)
    assert len([c for c in together_api.calls if c.path.endswith("/estimate-price")]) == 1
    # An admin starts the same job anyway: the files already uploaded are used, one job is created.
    uploads = len(together_api.requests_to("/files", "POST"))
    started = start_job(sqlite_db, refused, admin_confirmed=True, settings=settings).job
    assert started.external_id and started.config["gate"]["admin_confirmed"] is True
    assert len(together_api.requests_to("/files", "POST")) == uploads
    assert len([c for c in together_api.calls if c.method == "POST" and c.path.rstrip("/").endswith("/fine-tunes")]) == 1


def test_cancel_cancels_the_remote_job(sqlite_db, together_api, home):
    _approve(sqlite_db)
    job_id = quote_job(sqlite_db, backend="together", created_by="U1").job.id
    external = start_job(sqlite_db, job_id).job.external_id
    job = cancel_job(sqlite_db, job_id)
    assert job.status == JobStatus.CANCELLED
    assert together_api.requests_to(f"/fine-tunes/{external}/cancel", "POST")


def test_an_error_from_together_is_shown_verbatim(sqlite_db, together_api, home):
    _approve(sqlite_db)
    job_id = quote_job(sqlite_db, backend="together", created_by="U1").job.id
    together_api.refuse("/fine-tunes", 400, "Model foo is not available for fine-tuning with LoRA")
    with pytest.raises(FtbotError, match="Model foo is not available for fine-tuning with LoRA"):
        start_job(sqlite_db, job_id)
    job = get_job(sqlite_db, job_id)
    assert job.status in (JobStatus.FAILED, JobStatus.QUOTED)
    if job.status == JobStatus.FAILED:
        assert "Model foo is not available for fine-tuning with LoRA" in (job.error or "")


def test_a_failed_together_job_keeps_togethers_message(sqlite_db, together_api, home):
    _approve(sqlite_db)
    job_id = quote_job(sqlite_db, backend="together", created_by="U1").job.id
    external = start_job(sqlite_db, job_id).job.external_id
    together_api.fail(external, "Training failed: the dataset has a malformed line 3")
    update = refresh_job(sqlite_db, job_id)
    assert update.finished and update.job.status == JobStatus.FAILED
    assert "the dataset has a malformed line 3" in (update.job.error or "")
    assert list_models(sqlite_db) == []


def test_a_brought_home_model_runs_like_an_on_prem_adapter(sqlite_db, together_api, home, tiny_model_dir, adapter_dir, monkeypatch):
    # The fake's adapter is for the tiny model: the "Together base" is its directory, so the adapter applies to it.
    monkeypatch.setenv("FTBOT_TOGETHER_MODEL", str(tiny_model_dir))
    together_api.adapter_source = adapter_dir
    _approve(sqlite_db)
    job_id = quote_job(sqlite_db, backend="together", created_by="U1", settings=Settings.from_env()).job.id
    start_job(sqlite_db, job_id)
    _finish(sqlite_db, together_api, job_id)
    [model] = list_models(sqlite_db)
    assert model.backend == "together" and model.base_model == str(tiny_model_dir)

    from trainers.drafts.generate import RUNS_ON_PREM
    from trainers.evaluation.generation import baseline_name, registered_spec

    spec = registered_spec(model)  # evaluation rounds and `ftbot eval score` load base + adapter on-prem
    assert spec.backend == "local" and spec.model == str(tiny_model_dir) and spec.adapter == model.location
    assert baseline_name(sqlite_db, model, None) == f"local:{tiny_model_dir}"
    assert model.backend in RUNS_ON_PREM  # drafts too


def test_dpo_continues_the_newest_together_model_from_its_together_job(sqlite_db, together_api, home):
    from storage.jobs import create_job, register_model, update_job
    from storage.pairs import add_pair
    from trainers.tiny_model import sample_preference_pairs

    for pair in sample_preference_pairs(12):
        add_pair(sqlite_db, pair, source_kind="comparison")
    parent_job = create_job(sqlite_db, backend="together", base_model=TOGETHER_MODEL, status="succeeded").job
    update_job(sqlite_db, parent_job.id, external_id="ft-parent-1")
    register_model(sqlite_db, name="acme/llama-ftbot-1", backend="together", base_model="meta-llama/Meta-Llama-3.1-8B-Instruct",
                   location="/models/1/adapter", job_id=parent_job.id)

    quoted = quote_job(sqlite_db, backend="together", method="dpo", created_by="U1")
    assert quoted.job.base_model == TOGETHER_MODEL  # Together's name of the base, not the adapter's HF base
    assert quoted.job.config["parent_model"] == "acme/llama-ftbot-1"
    assert quoted.job.config["parent_external_id"] == "ft-parent-1"
    assert "continues from acme/llama-ftbot-1" in quote_lines(quoted.quote)[0]
    start_job(sqlite_db, quoted.job.id)
    created = [c for c in together_api.calls if c.method == "POST" and c.path.rstrip("/").endswith("/fine-tunes")][-1]
    assert created.json["from_checkpoint"] == "ft-parent-1" and created.json["training_method"]["method"] == "dpo"

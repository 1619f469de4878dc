"""On-prem training on CPU with the tiny offline model: SFT, 4-bit QLoRA, DPO, templates, and the worker process."""

from __future__ import annotations

import os
import signal
from pathlib import Path

import pytest

from storage.jobs import get_job, job_metrics, list_models
from storage.vocabulary import JobStatus
from tests.fixtures.concurrency import wait_until
from tests.trainers.training.local_jobs import FAST, quoted_local_job
from trainers.evaluation.score import score_model
from trainers.tiny_model import CHATML_TRAINING_TEMPLATE, sample_conversations, sample_preference_pairs
from trainers.training.jobs import refresh_job, start_job, wait_for_job
from trainers.training.launch import read_log_tail
from trainers.training.local.chat_template import ensure_generation_markers
from trainers.training.local.config import LocalTrainConfig
from trainers.training.local.train import load_for_generation, load_model_and_tokenizer, train

pytestmark = pytest.mark.slow

# torch and transformers are imported inside the tests that use them: collecting this module (e.g. with
# -m "not slow") does not load the ML stack.


def _sequence_loss(model, tokenizer, record) -> float:
    import torch

    ids = tokenizer.apply_chat_template(record["messages"], tokenize=True, return_dict=True, return_tensors="pt")["input_ids"]
    with torch.no_grad():
        return float(model(input_ids=ids, labels=ids).loss)


def test_sft_loss_drops_and_the_saved_adapter_reloads_and_generates(tiny_model_dir, tmp_path):
    from transformers import AutoModelForCausalLM

    records = sample_conversations(24, max_turns=1)
    seen = []
    result = train(
        LocalTrainConfig(base_model=str(tiny_model_dir), **FAST), records[:20], records[20:], tmp_path / "job",
        metric_sink=lambda step, train_loss, valid_loss, extra: seen.append((step, train_loss, valid_loss)),
    )
    train_losses = [loss for _, loss, _ in seen if loss is not None]
    valid_losses = [loss for _, _, loss in seen if loss is not None]
    assert result.steps == 10 and len(train_losses) == 10
    # A tiny random model learns slowly: assert a relative drop, averaged to smooth step noise.
    assert sum(train_losses[-3:]) / 3 < 0.85 * sum(train_losses[:3]) / 3
    assert valid_losses[-1] < 0.85 * valid_losses[0]
    assert result.assistant_only_loss and not result.quantized and result.train_tokens > 0

    adapter = result.adapter_dir
    assert (adapter / "adapter_config.json").is_file() and (adapter / "tokenizer.json").is_file()
    model, tokenizer = load_for_generation(adapter)
    base = AutoModelForCausalLM.from_pretrained(tiny_model_dir)
    held_out = records[21]
    assert _sequence_loss(model, tokenizer, held_out) < _sequence_loss(base, tokenizer, held_out)

    prompt = tokenizer.apply_chat_template(held_out["messages"][:2], add_generation_prompt=True, return_tensors="pt", return_dict=True)
    output = model.generate(**prompt, max_new_tokens=12, do_sample=False)
    assert output.shape[1] > prompt["input_ids"].shape[1]


def test_4bit_qlora_runs_with_bitsandbytes_on_cpu(tiny_model_dir, tmp_path):
    config = LocalTrainConfig(base_model=str(tiny_model_dir), load_in_4bit=True, **{**FAST, "max_steps": 4})
    model, _tokenizer, setup = load_model_and_tokenizer(str(tiny_model_dir), config)
    assert setup["load_in_4bit"] and getattr(model, "is_loaded_in_4bit", False)
    assert any(type(m).__name__ == "Linear4bit" for m in model.modules())

    records = sample_conversations(12, max_turns=1)
    result = train(config, records[:10], records[10:], tmp_path / "job")
    losses = [e["loss"] for e in result.log_history if "loss" in e]
    assert result.quantized and len(losses) == 4 and all(loss == loss for loss in losses)  # no NaN
    assert (result.adapter_dir / "adapter_model.safetensors").is_file()


def test_dpo_with_lora_learns_the_preference(tiny_model_dir, tmp_path):
    pairs = sample_preference_pairs(20)
    config = LocalTrainConfig(base_model=str(tiny_model_dir), method="dpo", **{**FAST, "learning_rate": 1e-2, "max_steps": 8})
    result = train(config, pairs[:18], pairs[18:], tmp_path / "dpo")
    losses = [e["loss"] for e in result.log_history if "loss" in e]
    assert losses[0] == pytest.approx(0.693, abs=0.02)  # policy == reference at the start
    assert losses[-1] < 0.6 * losses[0]
    assert (result.adapter_dir / "adapter_config.json").is_file()


def test_a_template_without_generation_markers_gets_them_with_the_end_token_inside(tiny_model_dir):
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(tiny_model_dir)
    tokenizer.chat_template = CHATML_TRAINING_TEMPLATE.replace("{%- generation -%}", "").replace("{%- endgeneration -%}", "")
    assert "{%- generation" not in tokenizer.chat_template
    assert ensure_generation_markers(tokenizer)
    messages = [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello there"}]
    encoded = tokenizer.apply_chat_template(messages, tokenize=True, return_dict=True, return_assistant_tokens_mask=True)
    trained = [i for i, keep in zip(encoded["input_ids"], encoded["assistant_masks"], strict=True) if keep]
    assert tokenizer.decode(trained) == "Hello there<|im_end|>"


# --- the worker process ---------------------------------------------------------------------------------------


def test_a_killed_worker_fails_its_job_with_the_log_tail(sqlite_db, local_env):
    job = quoted_local_job(sqlite_db, local_env, max_steps=100000)
    started = start_job(sqlite_db, job.id).job
    assert started.worker_pid and started.status == JobStatus.PENDING
    wait_until(lambda: get_job(sqlite_db, job.id).status == JobStatus.RUNNING)
    os.kill(started.worker_pid, signal.SIGKILL)
    update = wait_until(lambda: (u := refresh_job(sqlite_db, job.id)).finished and u)
    assert update.job.status == JobStatus.FAILED
    assert "killed by signal 9" in update.job.error
    assert "trainers.training.worker --job-id" in update.job.log_tail
    assert list_models(sqlite_db) == []
    # Refreshing again changes nothing (the relay runs this every few seconds).
    assert refresh_job(sqlite_db, job.id).job.error == update.job.error


def test_a_crashing_worker_records_its_error_and_traceback(sqlite_db, local_env, tmp_path):
    not_a_model = tmp_path / "not-a-model"
    not_a_model.mkdir()
    job = quoted_local_job(sqlite_db, not_a_model)
    started = start_job(sqlite_db, job.id).job
    update = wait_until(lambda: (u := refresh_job(sqlite_db, job.id)).finished and u, timeout=120)
    assert update.job.status == JobStatus.FAILED
    assert "has no config.json" in update.job.error
    assert "Traceback" in update.job.log_tail and "ConfigError" in update.job.log_tail
    assert job_metrics(sqlite_db, job.id) == []
    assert started.worker_pid


def test_the_worker_runs_the_training_entry_point_under_accelerate_launch(sqlite_db, local_env, monkeypatch):
    monkeypatch.setenv("FTBOT_LAUNCHER", "accelerate")
    job = quoted_local_job(sqlite_db, local_env, max_steps=3)
    start_job(sqlite_db, job.id)
    update = wait_for_job(sqlite_db, job.id, interval=0.5, timeout=240)
    assert update.job.status == JobStatus.SUCCEEDED, update.job.error
    assert "-m accelerate.commands.launch --num_processes 1 -m trainers.training.local.entry" in read_log_tail(job.id, lines=400)
    assert [m.step for m in job_metrics(sqlite_db, job.id) if m.train_loss is not None] == [1, 2, 3]
    assert update.model is not None and Path(update.model.location, "adapter_config.json").is_file()
    # Held-out loss measured after training, adapter on and off, and kept with the model; `ftbot eval score` agrees.
    progress, metrics = update.job.progress, update.model.metrics
    assert progress["heldout_prompts"] >= 1 and progress["heldout_loss"] > 0 and progress["baseline_heldout_loss"] > 0
    assert metrics["heldout_loss"] == progress["heldout_loss"]
    report = score_model(sqlite_db, update.model)
    assert report.prompts == progress["heldout_prompts"]
    assert report.loss == pytest.approx(progress["heldout_loss"], rel=1e-3)
    assert report.baseline_loss == pytest.approx(progress["baseline_heldout_loss"], rel=1e-3)


def test_merged_export_equals_base_plus_adapter(tiny_model_dir, tmp_path):
    import torch
    from transformers import AutoModelForCausalLM

    records = sample_conversations(8, max_turns=1)
    result = train(LocalTrainConfig(base_model=str(tiny_model_dir), merge=True, **{**FAST, "max_steps": 3}),
                   records[:6], records[6:], tmp_path / "job")
    assert result.merged_dir is not None and (result.merged_dir / "config.json").is_file()
    merged = AutoModelForCausalLM.from_pretrained(result.merged_dir).eval()
    with_adapter, tokenizer = load_for_generation(result.adapter_dir)
    ids = tokenizer.apply_chat_template(records[7]["messages"], tokenize=True, return_dict=True, return_tensors="pt")["input_ids"]
    with torch.no_grad():
        assert torch.allclose(merged(input_ids=ids).logits, with_adapter(input_ids=ids).logits, atol=1e-4)
        base = AutoModelForCausalLM.from_pretrained(tiny_model_dir).eval()
        assert not torch.allclose(base(input_ids=ids).logits, merged(input_ids=ids).logits, atol=1e-3)

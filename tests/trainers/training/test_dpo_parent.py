"""DPO continues the team's fine-tuned model: the parent is chosen, recorded, shown, merged, and is DPO's reference."""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace

import pytest

from bot.evaluation.commands import choose_baseline
from bot.training import parse_train_args
from storage.config import Settings
from storage.errors import ConfigError
from storage.examples import import_records
from storage.jobs import create_job, job_metrics, register_model, use_model
from storage.pairs import add_pair
from trainers.evaluation.inference import GenerationSettings, LocalGenerator
from trainers.tiny_model import sample_conversations, sample_preference_pairs
from trainers.training.jobs import quote_job, refresh_job, start_job
from trainers.training.local.config import LocalTrainConfig
from trainers.training.local.entry import run
from trainers.training.local.train import train
from trainers.training.quote import quote_lines

FT_MODEL = "ft:gpt-4o-mini-2024-07-18:acme::a1"


def _add_pairs(db, n: int = 12) -> None:
    for pair in sample_preference_pairs(n):
        add_pair(db, pair, source_kind="comparison")


def _registered(db, name: str, backend: str, location: str, base_model: str):
    job = create_job(db, backend=backend, base_model=base_model, status="succeeded").job
    return register_model(db, name=name, backend=backend, base_model=base_model, location=location, job_id=job.id)[0]


@pytest.fixture
def no_model_env(monkeypatch):
    for name in ("FTBOT_LOCAL_BASE_MODEL", "FTBOT_OPENAI_MODEL", "FTBOT_BASE_MODEL"):
        monkeypatch.delenv(name, raising=False)


def test_without_a_fine_tuned_model_dpo_starts_from_the_base_model_and_the_quote_says_so(sqlite_db, no_model_env):
    _add_pairs(sqlite_db)
    quoted = quote_job(sqlite_db, backend="local", method="dpo", default_local_base="ftbot:tiny")
    assert quoted.job.base_model == "ftbot:tiny" and quoted.job.config.get("parent_model") is None
    assert quoted.quote.parent_model is None
    assert "starts from the base model: no fine-tuned local model is registered yet" in quote_lines(quoted.quote)[0]


def test_the_default_parent_is_the_model_in_use_on_the_same_back_end_else_the_newest(sqlite_db, no_model_env):
    _add_pairs(sqlite_db)
    older = _registered(sqlite_db, "tiny-sft-job1", "local", "/models/1/adapter", "ftbot:tiny")
    _registered(sqlite_db, "tiny-sft-job2", "local", "/models/2/adapter", "ftbot:tiny")
    _registered(sqlite_db, FT_MODEL, "openai", FT_MODEL, "gpt-4o-mini-2024-07-18")
    register_model(sqlite_db, name="gpt-4o-baseline", backend="openai", base_model="gpt-4o", location="gpt-4o")

    use_model(sqlite_db, FT_MODEL)  # an OpenAI model in use: a local DPO continues the newest local model
    local = quote_job(sqlite_db, backend="local", method="dpo", default_local_base="ftbot:tiny")
    assert local.job.config["parent_model"] == "tiny-sft-job2"
    assert local.job.config["parent_location"] == "/models/2/adapter"
    assert local.job.config["parent_base_model"] == "ftbot:tiny" and local.job.base_model == "ftbot:tiny"
    assert "continues from tiny-sft-job2, the newest local model (the model in use" in quote_lines(local.quote)[0]

    # OpenAI fine-tunes the fine-tuned model: its ft: id is the job's model.
    openai = quote_job(sqlite_db, backend="openai", method="dpo")
    assert openai.job.base_model == FT_MODEL and openai.job.config["parent_model"] == FT_MODEL
    assert openai.quote.cost_usd is not None  # priced as its base model

    use_model(sqlite_db, older.name)
    assert quote_job(sqlite_db, backend="local", method="dpo").job.config["parent_model"] == "tiny-sft-job1"
    # A registered name, as --from or as the model, picks the parent; "base" and an explicit base model do not.
    assert quote_job(sqlite_db, backend="local", method="dpo", parent="tiny-sft-job2").job.config["parent_model"] == "tiny-sft-job2"
    assert quote_job(sqlite_db, backend="local", method="dpo", model="tiny-sft-job2").job.config["parent_model"] == "tiny-sft-job2"
    plain = quote_job(sqlite_db, backend="local", method="dpo", parent="base", default_local_base="ftbot:tiny")
    assert plain.job.config.get("parent_model") is None and "(--from base)" in plain.quote.start
    named = quote_job(sqlite_db, backend="local", method="dpo", model="/models/qwen")
    assert named.job.base_model == "/models/qwen" and named.job.config.get("parent_model") is None

    with pytest.raises(ConfigError, match="is an openai model and this job trains on local"):
        quote_job(sqlite_db, backend="local", method="dpo", parent=FT_MODEL)
    with pytest.raises(ConfigError, match="DPO only"):
        quote_job(sqlite_db, backend="local", method="sft", parent="tiny-sft-job1")


def test_openai_dpo_fine_tunes_the_fine_tuned_model_and_records_it(sqlite_db, openai_api, no_model_env):
    _add_pairs(sqlite_db)
    _registered(sqlite_db, FT_MODEL, "openai", FT_MODEL, "gpt-4o-mini-2024-07-18")
    job = start_job(sqlite_db, quote_job(sqlite_db, backend="openai", method="dpo").job.id, allow_pii=True).job
    created = openai_api.requests_to("/fine_tuning/jobs", "POST")[0].json
    assert created["model"] == FT_MODEL and created["method"]["type"] == "dpo"
    for _ in range(15):
        update = refresh_job(sqlite_db, job.id)
        if update.finished:
            break
    assert update.model is not None and update.model.metrics["parent_model"] == FT_MODEL
    assert update.model.base_model == FT_MODEL


def test_the_train_command_takes_from(sqlite_db):
    options = parse_train_args(["local", "--method", "dpo", "--from", "tiny-sft-job1"])
    assert options["parent"] == "tiny-sft-job1" and options["method"] == "dpo" and options["model"] is None


def test_evaluating_a_dpo_model_compares_it_with_the_model_it_continued(sqlite_db):
    sft = _registered(sqlite_db, "tiny-sft-job1", "local", "/m/1/adapter", "ftbot:tiny")
    job = create_job(sqlite_db, backend="local", method="dpo", base_model="ftbot:tiny", status="succeeded").job
    dpo = register_model(sqlite_db, name="tiny-dpo-job2", backend="local", base_model="/m/1/merged", location="/m/2/adapter",
                         job_id=job.id, metrics={"parent_model": sft.name, "root_base_model": "ftbot:tiny"})[0]
    bot = SimpleNamespace(db=sqlite_db, settings=Settings())
    assert choose_baseline(bot, dpo) == "tiny-sft-job1"
    assert choose_baseline(bot, sft) == "local:ftbot:tiny"  # an SFT model still meets its base model
    configured = SimpleNamespace(db=sqlite_db, settings=Settings(eval_baseline="openai:gpt-4o-mini"))
    assert choose_baseline(configured, dpo) == "openai:gpt-4o-mini"


# --- the real thing on CPU: SFT, then DPO that continues it ---------------------------------------------------


FAST = dict(max_steps=6, learning_rate=3e-2, batch_size=4, max_length=256, lora_dropout=0.0, lora_r=8, lora_alpha=16)


@pytest.mark.slow
def test_dpo_after_sft_trains_on_the_merged_sft_model_which_is_its_reference(sqlite_db, tiny_model_dir, tmp_path, monkeypatch):
    import torch  # deferred: the ML stack loads only when this slow test runs, not at collection

    monkeypatch.setenv("FTBOT_HOME", str(tmp_path / "home"))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    import_records(sqlite_db, enumerate(sample_conversations(12, max_turns=1), 1), source_file="t.jsonl", approved_by="U1")
    sft_job = quote_job(sqlite_db, backend="local", model=str(tiny_model_dir), local_options=FAST).job
    run(sqlite_db, sft_job.id)  # the worker's entry point, in-process
    sft = refresh_job(sqlite_db, sft_job.id).model
    assert sft is not None and "parent_model" not in sft.metrics

    _add_pairs(sqlite_db)
    quoted = quote_job(sqlite_db, backend="local", method="dpo", local_options={**FAST, "learning_rate": 1e-2, "max_steps": 4})
    job = quoted.job
    assert job.config["parent_model"] == sft.name and job.config["parent_location"] == sft.location
    assert f"continues from {sft.name}" in quote_lines(quoted.quote)[0]
    run(sqlite_db, job.id)
    dpo = refresh_job(sqlite_db, job.id).model
    merged = Path(sft.location).parent / "merged"
    assert dpo.metrics["parent_model"] == sft.name and dpo.metrics["root_base_model"] == str(tiny_model_dir)
    assert dpo.base_model == str(merged) and (merged / "config.json").is_file()
    first_loss = next(m.train_loss for m in job_metrics(sqlite_db, job.id) if m.train_loss is not None)
    assert first_loss == pytest.approx(0.693, abs=0.02)  # policy == reference at step 1

    # Both models load the way evaluation loads them; DPO's reference (its adapter off) is the SFT model.
    sft_gen = LocalGenerator(sft.base_model, sft.location)
    dpo_gen = LocalGenerator(dpo.base_model, dpo.location)
    base_gen = LocalGenerator(str(tiny_model_dir))
    prompt = sample_preference_pairs(1, seed=11)[0]["input"]["messages"]
    ids = sft_gen.tokenizer.apply_chat_template(prompt, add_generation_prompt=True, return_tensors="pt", return_dict=True)["input_ids"]
    with torch.no_grad():
        sft_logits = sft_gen.model(input_ids=ids).logits
        with dpo_gen.model.disable_adapter():
            reference_logits = dpo_gen.model(input_ids=ids).logits
        assert torch.allclose(reference_logits, sft_logits, atol=1e-4)
        assert not torch.allclose(base_gen.model(input_ids=ids).logits, sft_logits, atol=1e-3)  # SFT changed the model
        assert not torch.allclose(dpo_gen.model(input_ids=ids).logits, sft_logits, atol=1e-5)  # and DPO moved on from it
    greedy = GenerationSettings(max_new_tokens=12, temperature=0.0)
    with dpo_gen.model.disable_adapter():
        assert [g.text for g in dpo_gen.generate([prompt], greedy)] == [g.text for g in sft_gen.generate([prompt], greedy)]

    # A second DPO continues the first: the chain merges DPO 1 onto the merged SFT model.
    _add_pairs(sqlite_db, 14)
    second = quote_job(sqlite_db, backend="local", method="dpo", local_options={**FAST, "learning_rate": 1e-2, "max_steps": 2}).job
    assert second.config["parent_model"] == dpo.name and second.config["parent_base_model"] == str(merged)
    assert second.base_model == str(tiny_model_dir)

    # 4-bit: the parent is merged in full precision (reused here), then the merged weights load quantized.
    config = LocalTrainConfig(base_model=str(tiny_model_dir), method="dpo", load_in_4bit=True, parent_model=sft.name,
                              parent_location=sft.location, **{**FAST, "max_steps": 2})
    pairs = sample_preference_pairs(10)
    result = train(config, pairs[:8], pairs[8:], tmp_path / "qlora-dpo")
    losses = [e["loss"] for e in result.log_history if "loss" in e]
    assert result.quantized and result.adapter_base == str(merged)
    assert losses[0] == pytest.approx(0.693, abs=0.02) and all(loss == loss for loss in losses)

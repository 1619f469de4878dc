"""Drafting with the three kinds of model: OpenAI, an OpenAI-compatible inference server, and the embedded server.

OpenAI and the inference server are the fake on 127.0.0.1 reached by the real ``openai`` client; the embedded
server is the real child process on the tiny model.
"""

from __future__ import annotations

import json
import os
import signal
import time
import urllib.request

import pytest

from storage.config import Settings
from storage.models import RegisteredModel
from tests.fixtures.concurrency import at_once
from trainers.data.pricing import inference_cost, load_price_table
from trainers.drafts.generate import DraftService
from trainers.drafts.server import ServerProcess
from trainers.evaluation.inference import GenerationError

FINE_TUNED = "ft:gpt-4o-mini-2024-07-18:org-ftbot-test:acme:abc123"
OPENAI_MODEL = RegisteredModel(name="acme-sft-job1", backend="openai", base_model="gpt-4o-mini-2024-07-18", location=FINE_TUNED)
THREAD = [
    {"role": "system", "content": "You answer Acme's support questions."},
    {"role": "user", "content": "I was charged twice. Write to jane.doe@example.com or call +1 415 555 0100.", "weight": 1},
]


def _local_model(location: str, *, name: str = "acme-sft-job3", base: str = "ftbot:smollm2") -> RegisteredModel:
    return RegisteredModel(name=name, backend="local", base_model=base, location=location)


def _paths(fake) -> list[str]:
    return [f"{call.method} {call.path}" for call in fake.calls]


# --- OpenAI ------------------------------------------------------------------------------------------------------


def test_an_openai_draft_is_greedy_bounded_redacted_and_priced(openai_api, tmp_path):
    openai_api.responder = lambda request: "Sorry about the double charge: the refund is on its way."
    with DraftService(Settings(home=tmp_path, draft_max_tokens=123)) as service:
        draft = service.generate(OPENAI_MODEL, THREAD)

    [call] = openai_api.requests_to("/chat/completions")
    assert call.json["model"] == FINE_TUNED
    assert call.json["temperature"] == 0 and call.json["max_completion_tokens"] == 123
    sent = json.dumps(call.json)
    assert "jane.doe@example.com" not in sent and "555 0100" not in sent
    assert "[EMAIL]" in sent and "[PHONE]" in sent
    assert "weight" not in sent  # training-only keys stay home
    assert draft.prompt == call.json["messages"]  # what was stored is what left
    assert THREAD[1]["content"].startswith("I was charged twice. Write to jane.doe@example.com")  # the caller's copy is untouched

    assert draft.text == "Sorry about the double charge: the refund is on its way."
    assert draft.prompt_tokens > 0 and draft.completion_tokens == len(draft.text.split())
    price = load_price_table().get("gpt-4o-mini-2024-07-18")
    expected = inference_cost(price, input_tokens=draft.prompt_tokens, output_tokens=draft.completion_tokens, fine_tuned=True)
    assert draft.cost_usd == pytest.approx(expected) and draft.cost_usd > 0
    assert draft.generation_ms >= 0


def test_an_openai_failure_says_which_model_failed(openai_api, tmp_path):
    openai_api.inject("/chat/completions", 500)
    with DraftService(Settings(home=tmp_path, openai_max_retries=0)) as service:
        with pytest.raises(GenerationError, match=r"OpenAI could not draft with acme-sft-job1 .*HTTP 500"):
            service.generate(OPENAI_MODEL, THREAD)
        assert service.activate(OPENAI_MODEL) is None  # nothing to load for OpenAI models


def test_twenty_concurrent_drafts_each_get_their_own_answer(openai_api, tmp_path):
    with DraftService(Settings(home=tmp_path)) as service:
        drafts = at_once(lambda i: service.generate(OPENAI_MODEL, [{"role": "user", "content": f"question {i}"}]), 20)
    assert [d.text for d in drafts] == [f"[{FINE_TUNED}] question {i}" for i in range(20)]


# --- an OpenAI-compatible inference server (vLLM) ----------------------------------------------------------------


@pytest.fixture
def inference_server(openai_api):
    openai_api.serve("HuggingFaceTB/SmolLM2-135M-Instruct")
    return openai_api


def _server_settings(fake, tmp_path, **fields) -> Settings:
    return Settings(home=tmp_path, inference_url=fake.base_url, inference_api_key="vllm-key", draft_max_tokens=50, **fields)


def test_activate_loads_the_adapter_then_drafts_name_the_registered_model(inference_server, tmp_path):
    model = _local_model(str(tmp_path / "jobs" / "3" / "adapter"))
    with DraftService(_server_settings(inference_server, tmp_path)) as service:
        assert service.activate(model) == f"Loaded acme-sft-job3 into the inference server at {inference_server.base_url}"
        [load] = inference_server.requests_to("/load_lora_adapter")
        assert load.json == {"lora_name": "acme-sft-job3", "lora_path": model.location}
        assert load.headers["authorization"] == "Bearer vllm-key"
        assert inference_server.base_url.endswith("/v1") and load.path == "/load_lora_adapter"  # i.e. <root>/v1/…

        draft = service.generate(model, THREAD)

    [call] = inference_server.requests_to("/chat/completions")
    assert call.json["model"] == "acme-sft-job3" and call.json["temperature"] == 0 and call.json["max_tokens"] == 50
    assert call.headers["authorization"] == "Bearer vllm-key"
    # On the premises: the thread is sent as is (without training-only keys), and no price applies.
    assert draft.prompt == call.json["messages"] == [{k: v for k, v in m.items() if k != "weight"} for m in THREAD]
    assert draft.text == f"[acme-sft-job3] {THREAD[1]['content']}" and draft.cost_usd is None


def test_a_second_activation_of_a_loaded_adapter_is_fine(inference_server, tmp_path):
    model = _local_model(str(tmp_path / "adapter"))
    inference_server.lora_adapters[model.name] = model.location  # loaded by an earlier bot process
    with DraftService(_server_settings(inference_server, tmp_path)) as service:
        line = service.activate(model)
    assert line == f"acme-sft-job3 is already loaded into the inference server at {inference_server.base_url}: drafts are ready."
    assert inference_server.requests_to("/load_lora_adapter")  # asked, and the 400 "already loaded" was fine


def test_a_model_the_server_does_not_know_is_loaded_once_and_retried(inference_server, tmp_path):
    model = _local_model(str(tmp_path / "adapter"))
    with DraftService(_server_settings(inference_server, tmp_path)) as service:
        first = service.generate(model, THREAD)  # the server restarted, or nobody ran /ft use: 404, load, retry
        assert _paths(inference_server) == ["POST /chat/completions", "POST /load_lora_adapter", "POST /chat/completions"]
        second = service.generate(model, THREAD)
    assert _paths(inference_server)[3:] == ["POST /chat/completions"]
    assert first.text == second.text == f"[acme-sft-job3] {THREAD[1]['content']}"


def test_an_adapter_the_server_cannot_load_fails_after_one_attempt(inference_server, tmp_path):
    inference_server.inject("/load_lora_adapter", 500)
    model = _local_model(str(tmp_path / "adapter"))
    with DraftService(_server_settings(inference_server, tmp_path, openai_max_retries=0)) as service:
        with pytest.raises(GenerationError, match=r"inference server at .* could not draft with acme-sft-job3: loading the adapter"):
            service.generate(model, THREAD)
    assert _paths(inference_server) == ["POST /chat/completions", "POST /load_lora_adapter"]


def test_a_server_without_a_runtime_lora_api_is_explained(inference_server, tmp_path):
    model = _local_model(str(tmp_path / "adapter"))
    with DraftService(_server_settings(inference_server, tmp_path, openai_max_retries=0)) as service:
        inference_server.inject("/load_lora_adapter", 404)  # e.g. vLLM without VLLM_ALLOW_RUNTIME_LORA_UPDATING
        assert "has no runtime LoRA API" in service.activate(model)
        inference_server.inject("/load_lora_adapter", 404)
        with pytest.raises(GenerationError, match="serve the adapter there under the model name acme-sft-job3"):
            service.generate(model, THREAD)


def test_an_unreachable_inference_server_is_a_generation_error(tmp_path):
    settings = Settings(home=tmp_path, inference_url="http://127.0.0.1:9/v1", openai_max_retries=0)
    with DraftService(settings) as service:
        with pytest.raises(GenerationError, match="inference server at http://127.0.0.1:9/v1 could not draft"):
            service.generate(_local_model(str(tmp_path)), THREAD)


# --- the embedded server -------------------------------------------------------------------------------------------


def _health(process: ServerProcess) -> dict:
    with urllib.request.urlopen(f"{process.root_url}/health", timeout=10) as response:
        return json.loads(response.read())


@pytest.fixture
def tiny_local_model(tiny_model_dir, adapter_dir) -> RegisteredModel:
    return _local_model(str(adapter_dir), name="tiny-sft-job1", base=str(tiny_model_dir))


@pytest.mark.slow
def test_one_embedded_process_serves_every_draft_and_close_ends_it(tmp_path, tiny_local_model):
    service = DraftService(Settings(home=tmp_path, draft_max_tokens=12))
    try:
        first = service.generate(tiny_local_model, THREAD)  # starts the process and loads the model
        process = service.embedded_process
        assert process is not None and process.alive() and process.root_url.startswith("http://127.0.0.1:")

        started = time.perf_counter()
        second = service.generate(tiny_local_model, THREAD)
        second_s = time.perf_counter() - started
        together = at_once(lambda _: service.generate(tiny_local_model, THREAD), 4)

        assert service.embedded_process is process  # the same child…
        assert _health(process) == {"status": "ok", "pid": process.pid, "loads": 1, "models": ["tiny-sft-job1"]}  # …one load
        assert first.text and second.text == first.text and {d.text for d in together} == {first.text}  # greedy
        assert 0 < first.completion_tokens <= 12 and first.cost_usd is None and first.prompt_tokens > 0
        assert first.prompt == [{k: v for k, v in m.items() if k != "weight"} for m in THREAD]
        assert second.generation_ms < first.generation_ms and second_s < 5  # no process start, no model load
    finally:
        service.close()
    assert process.exited(within=10)
    with pytest.raises(GenerationError, match="closed"):
        service.generate(tiny_local_model, THREAD)
    service.close()  # idempotent


@pytest.mark.slow
def test_activate_loads_ahead_and_a_killed_process_is_replaced(tmp_path, tiny_local_model):
    with DraftService(Settings(home=tmp_path, draft_max_tokens=8)) as service:
        line = service.activate(tiny_local_model)
        expected = f"Loaded tiny-sft-job1 (base {tiny_local_model.base_model}) into ftbot's drafting process in "
        assert line is not None and line.startswith(expected)
        process = service.embedded_process
        assert process is not None and _health(process)["loads"] == 1
        before = service.generate(tiny_local_model, THREAD)
        assert _health(process)["loads"] == 1  # activation did the load

        os.kill(process.pid, signal.SIGKILL)
        assert process.exited(within=10)
        after = service.generate(tiny_local_model, THREAD)
        replacement = service.embedded_process
        assert replacement is not None and replacement.pid != process.pid and replacement.alive()
        assert after.text == before.text and _health(replacement)["loads"] == 1
        assert (tmp_path / "drafts" / "server.log").is_file()
    assert not replacement.alive()

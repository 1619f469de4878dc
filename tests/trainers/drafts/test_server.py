"""The embedded inference server as a real child process, spoken to with the real ``openai`` client."""

from __future__ import annotations

import json
import subprocess
import sys
import urllib.request
from pathlib import Path

import openai
import psutil
import pytest

from tests.fixtures.concurrency import wait_until
from trainers.drafts.server import ServerProcess
from trainers.worker_processes import PACKAGE_ROOT

MESSAGES = [{"role": "system", "content": "You answer support questions."}, {"role": "user", "content": "Where is my order?"}]


def _get_json(url: str) -> dict:
    with urllib.request.urlopen(url, timeout=10) as response:
        return json.loads(response.read())


@pytest.fixture
def server(tmp_path: Path):
    process = ServerProcess.start(log_path=tmp_path / "server.log")
    try:
        yield process
    finally:
        process.stop()


@pytest.fixture
def client(server: ServerProcess):
    with openai.OpenAI(base_url=server.url, api_key="none", max_retries=0) as client:
        yield client


def test_it_listens_on_loopback_only_and_starts_without_models(server, client):
    assert server.root_url.startswith("http://127.0.0.1:")
    health = _get_json(f"{server.root_url}/health")
    assert health == {"status": "ok", "pid": server.pid, "loads": 0, "models": []}
    assert client.models.list().data == []


def test_an_unknown_model_is_a_404_with_an_openai_error_body(client):
    with pytest.raises(openai.NotFoundError) as caught:
        client.chat.completions.create(model="nobody", messages=MESSAGES)
    assert caught.value.body["code"] == "model_not_found"
    assert "`nobody` does not exist" in caught.value.body["message"]


def test_loads_it_cannot_serve_are_refused_with_the_reason(client, server, tmp_path):
    load = f"{server.url}/load_lora_adapter"
    with pytest.raises(openai.NotFoundError, match="No adapter found"):
        client.post(load, body={"lora_name": "m", "lora_path": str(tmp_path / "gone"), "base_model": "ftbot:tiny"}, cast_to=str)
    with pytest.raises(openai.BadRequestError, match="'lora_name' must be provided"):
        client.post(load, body={"lora_path": str(tmp_path)}, cast_to=str)
    # Neither the request nor an adapter_config.json names the base.
    with pytest.raises(openai.BadRequestError, match="'base_model' must be provided"):
        client.post(load, body={"lora_name": "m", "lora_path": str(tmp_path)}, cast_to=str)
    with pytest.raises(openai.NotFoundError, match="cannot be found"):
        client.post(f"{server.url}/unload_lora_adapter", body={"lora_name": "m"}, cast_to=str)
    assert _get_json(f"{server.root_url}/health")["loads"] == 0


def test_with_a_token_only_requests_that_carry_it_are_served(tmp_path):
    server = ServerProcess.start(log_path=tmp_path / "server.log", token="s3cret-token")
    try:
        with openai.OpenAI(base_url=server.url, api_key="guess", max_retries=0) as stranger:
            with pytest.raises(openai.AuthenticationError, match="Incorrect API key"):
                stranger.models.list()
            with pytest.raises(openai.AuthenticationError):
                stranger.post(f"{server.url}/load_lora_adapter", body={"lora_name": "m", "base_model": "gpt2"}, cast_to=str)
        with openai.OpenAI(base_url=server.url, api_key="s3cret-token", max_retries=0) as owner:
            assert owner.models.list().data == []
    finally:
        server.stop()


def test_the_server_leaves_when_its_parent_is_killed(tmp_path):
    # The parent exits without stopping its child (os._exit skips every clean-up), as a SIGKILLed bot would.
    script = (
        "import os, sys\n"
        "from pathlib import Path\n"
        "from trainers.drafts.server import ServerProcess\n"
        "server = ServerProcess.start(log_path=Path(sys.argv[1]))\n"
        "print(server.pid, flush=True)\n"
        "os._exit(0)\n"
    )
    done = subprocess.run([sys.executable, "-c", script, str(tmp_path / "server.log")], cwd=PACKAGE_ROOT,
                          capture_output=True, text=True, timeout=60, check=True)
    pid = int(done.stdout.split()[0])

    def gone() -> bool:
        try:
            return psutil.Process(pid).status() == psutil.STATUS_ZOMBIE
        except psutil.NoSuchProcess:
            return True

    wait_until(gone, timeout=15, what="the orphaned server to exit")


@pytest.mark.slow
def test_a_loaded_adapter_answers_greedily_within_the_token_limit(client, server, tiny_model_dir, adapter_dir):
    load = f"{server.url}/load_lora_adapter"
    body = {"lora_name": "tiny-sft", "lora_path": str(adapter_dir), "base_model": str(tiny_model_dir)}
    assert client.post(load, body=body, cast_to=str) == "Success: LoRA adapter 'tiny-sft' added successfully."
    with pytest.raises(openai.BadRequestError, match="already been loaded"):
        client.post(load, body=body, cast_to=str)

    first = client.chat.completions.create(model="tiny-sft", messages=MESSAGES, max_tokens=8)
    assert first.id.startswith("chatcmpl-") and first.object == "chat.completion" and first.model == "tiny-sft"
    choice = first.choices[0]
    assert choice.message.role == "assistant" and choice.message.content
    assert choice.finish_reason in ("stop", "length")
    assert first.usage is not None and 0 < first.usage.completion_tokens <= 8 and first.usage.prompt_tokens > 0
    assert first.usage.total_tokens == first.usage.prompt_tokens + first.usage.completion_tokens

    again = client.chat.completions.create(model="tiny-sft", messages=MESSAGES, max_completion_tokens=8)
    assert again.choices[0].message.content == choice.message.content  # greedy: the same answer
    short = client.chat.completions.create(model="tiny-sft", messages=MESSAGES, max_tokens=2)
    assert short.usage is not None and short.usage.completion_tokens <= 2

    [listed] = client.models.list().data
    assert listed.id == "tiny-sft" and listed.model_extra == {"root": str(adapter_dir), "parent": str(tiny_model_dir)}
    assert _get_json(f"{server.root_url}/health")["loads"] == 1

    assert "removed" in client.post(f"{server.url}/unload_lora_adapter", body={"lora_name": "tiny-sft"}, cast_to=str)
    with pytest.raises(openai.NotFoundError):
        client.chat.completions.create(model="tiny-sft", messages=MESSAGES)

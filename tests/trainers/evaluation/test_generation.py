"""Answer generation: local batched generation on the tiny model (base and LoRA adapter), the generation worker
process, a local round through Slack (posted without a cost question), and OpenAI chat completions (fake server)."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from bot.scheduler import stop_scheduler
from storage import eval_prompts, evals
from storage.config import Settings
from storage.evals import RoundStatus
from storage.examples import save_capture
from storage.jobs import register_model
from storage.snapshots import create_snapshot
from tests.fixtures.db import database_url
from tests.fixtures.paths import REPO
from tests.fixtures.slack_api import SlackHarness
from trainers.data.tokens import count_record_tokens, encoding_for_model
from trainers.evaluation.inference import (
    GenerationError,
    GenerationSettings,
    LocalGenerator,
    estimate_openai_cost,
    generate_openai,
)
from trainers.tiny_model import sample_conversations


def _prompts(n: int, seed: int = 3) -> list[list[dict]]:
    prompts = []
    for record in sample_conversations(n, seed=seed):
        prompt, _ = eval_prompts.split_prompt(record["messages"])
        prompts.append(prompt)
    return prompts


@pytest.fixture(scope="module")
def generator(tiny_model_dir):
    return LocalGenerator(str(tiny_model_dir))


def test_batched_greedy_generation_equals_one_at_a_time(generator):
    prompts = _prompts(10)
    settings = GenerationSettings(max_new_tokens=16)
    batched = generator.generate(prompts, settings, batch_size=8)
    single = generator.generate(prompts, settings, batch_size=1)
    assert [g.text for g in batched] == [g.text for g in single]
    assert [g.completion_tokens for g in batched] == [g.completion_tokens for g in single]
    assert all(0 <= g.completion_tokens <= 16 for g in batched)
    # Answers come back in prompt order, whatever the length-sorted batching did.
    assert [g.prompt_tokens for g in batched] == [g.prompt_tokens for g in single]
    lengths = [g.prompt_tokens for g in batched]
    assert lengths != sorted(lengths, reverse=True)


def test_seeded_sampling_is_reproducible(generator):
    prompts = _prompts(4)
    sampling = GenerationSettings(max_new_tokens=12, temperature=1.0, seed=7)
    first = [g.text for g in generator.generate(prompts, sampling)]
    again = [g.text for g in generator.generate(prompts, sampling)]
    other = [g.text for g in generator.generate(prompts, GenerationSettings(max_new_tokens=12, temperature=1.0, seed=8))]
    assert first == again
    assert first != other


def test_adapter_changes_the_answers(tiny_model_dir, adapter_dir, generator):
    prompts = _prompts(3)
    settings = GenerationSettings(max_new_tokens=12)
    tuned = LocalGenerator(str(tiny_model_dir), str(adapter_dir)).generate(prompts, settings)
    base = generator.generate(prompts, settings)
    assert [g.text for g in tuned] != [g.text for g in base]


def test_generation_worker_fills_a_round(sqlite_db, tiny_model_dir, adapter_dir, tmp_path):
    register_model(sqlite_db, name="tiny-sft-job1", backend="local", base_model=str(tiny_model_dir), location=str(adapter_dir))
    prompts = _prompts(5)
    round_ = evals.create_round(sqlite_db, candidate_model="tiny-sft-job1", baseline_model=f"local:{tiny_model_dir}",
                                prompts=prompts).example
    env = {**os.environ, "FTBOT_DATABASE_URL": database_url(sqlite_db), "FTBOT_HOME": str(tmp_path),
           "HF_HUB_OFFLINE": "1", "FTBOT_EVAL_MAX_TOKENS": "8"}
    done = subprocess.run([sys.executable, "-m", "trainers.evaluation.generation", "--round", str(round_.id)], cwd=REPO, env=env,
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    comparisons = evals.round_comparisons(sqlite_db, round_.id)
    assert all(c.answer_a and c.answer_b for c in comparisons)
    # A missing model fails the round with a clear error (and exit code 1).
    broken = evals.create_round(sqlite_db, candidate_model="not-registered", baseline_model="local:x", prompts=prompts[:1]).example
    failed = subprocess.run([sys.executable, "-m", "trainers.evaluation.generation", "--round", str(broken.id)], cwd=REPO, env=env,
                            capture_output=True, text=True, timeout=300)
    assert failed.returncode == 1 and "not-registered" in failed.stderr
    assert evals.get_round(sqlite_db, broken.id).status == RoundStatus.FAILED


def test_local_round_through_slack_posts_without_a_cost_question(sqlite_db, fake_slack, tiny_model_dir, adapter_dir,
                                                                 tmp_path, monkeypatch):
    monkeypatch.setenv("FTBOT_HOME", str(tmp_path))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("FTBOT_EVAL_MAX_TOKENS", "8")
    for i, record in enumerate(sample_conversations(12, seed=5)):
        save_capture(sqlite_db, record=record, source_key=f"k{i}", channel="C", ts=f"{i}.0", thread_ts=None,
                     permalink=None, captured_by="U", status="approved")
    snapshot = create_snapshot(sqlite_db, validation_fraction=0.25).snapshot
    register_model(sqlite_db, name="tiny-sft-job7", backend="local", base_model=str(tiny_model_dir),
                   location=str(adapter_dir), snapshot_id=snapshot.id)
    h = SlackHarness.create(sqlite_db, fake_slack, eval_post_interval=0.0)
    try:
        h.command("eval", user_id="U_AGENT")
        h.wait(timeout=240)
        round_ = evals.latest_round(sqlite_db)
        assert round_ is not None and round_.status == RoundStatus.OPEN
        assert round_.baseline_model == f"local:{tiny_model_dir}"
        assert "Generating answers locally" in fake_slack.responses[0]["text"]
        posts = [c for c in fake_slack.calls_to("chat.postMessage") if "Blind comparison" in (c.args.get("text") or "")]
        assert len(posts) == len(evals.round_comparisons(sqlite_db, round_.id)) == 3
    finally:
        stop_scheduler(h.bot, wait=True)
        h.close()


# --- OpenAI --------------------------------------------------------------------------------------------------------


def test_openai_generation_keeps_order_and_drops_training_keys(openai_api):
    seen = []

    def responder(request):
        seen.append(request)
        return "answer to " + request["messages"][-1]["content"]

    openai_api.responder = responder
    prompts = [[{"role": "system", "content": "Be brief."}, {"role": "user", "content": f"q{i}", "weight": 1}] for i in range(6)]
    out = generate_openai("ft:gpt-4o-mini-2024-07-18:acme::x", prompts, GenerationSettings(max_new_tokens=50))
    assert [g.text for g in out] == [f"answer to q{i}" for i in range(6)]
    assert all(g.completion_tokens > 0 and g.prompt_tokens > 0 for g in out)
    assert all("weight" not in m for r in seen for m in r["messages"])
    assert {r["temperature"] for r in seen} == {0.0} and {r["max_completion_tokens"] for r in seen} == {50}


def test_openai_generation_redacts_personal_data_before_sending(openai_api):
    seen = []
    openai_api.responder = lambda request: seen.append(request) or "ok"
    prompt = [{"role": "user", "content": "I am jane.doe@example.com, card 4111 1111 1111 1111, please refund"},
              {"role": "assistant", "content": [{"type": "text", "text": "Call me on +44 20 7946 0958"}]},
              {"role": "user", "content": "thanks"}]
    generate_openai("gpt-4o-mini-2024-07-18", [prompt], GenerationSettings(max_new_tokens=20))
    sent = json.dumps(seen[0]["messages"])
    assert "jane.doe@example.com" not in sent and "4111 1111 1111 1111" not in sent and "7946 0958" not in sent
    assert "[EMAIL]" in sent and "please refund" in sent
    assert prompt[0]["content"].startswith("I am jane.doe@example.com")  # the stored prompt is untouched


def test_openai_failure_is_a_clear_error(openai_api, monkeypatch):
    monkeypatch.setenv("FTBOT_OPENAI_MAX_RETRIES", "0")
    openai_api.inject("/chat/completions", 500)
    with pytest.raises(GenerationError, match="OpenAI could not answer with gpt-4o-mini"):
        generate_openai("gpt-4o-mini", [[{"role": "user", "content": "hi"}]], max_retries=Settings.from_env().openai_max_retries)


def test_cost_estimate_uses_the_price_table():
    prompts = [[{"role": "user", "content": "How do I reset my password? " * 5}]] * 10
    estimate = estimate_openai_cost("gpt-4o-mini-2024-07-18", prompts, GenerationSettings(max_new_tokens=100),
                                    expected_answer_tokens=40)
    tokens = count_record_tokens({"messages": prompts[0]}, encoding_for_model("gpt-4o-mini")).total
    assert estimate.input_tokens == 10 * tokens
    # Base gpt-4o-mini: $0.15 in / $0.60 out per 1M tokens.
    assert estimate.expected_usd == pytest.approx((10 * tokens * 0.15 + 400 * 0.60) / 1e6)
    assert estimate.max_usd == pytest.approx((10 * tokens * 0.15 + 1000 * 0.60) / 1e6)
    tuned = estimate_openai_cost("ft:gpt-4o-mini-2024-07-18:acme::x", prompts, GenerationSettings(max_new_tokens=100),
                                 expected_answer_tokens=40)
    assert tuned.expected_usd == pytest.approx((10 * tokens * 0.30 + 400 * 1.20) / 1e6)
    unknown = estimate_openai_cost("some-unpriced-model", prompts)
    assert unknown.expected_usd is None and unknown.input_tokens == estimate.input_tokens

"""``/ft eval score``: trainers get a model's held-out loss privately, computed in a worker process."""

from __future__ import annotations

from storage import eval_prompts
from storage.jobs import register_model
from tests.fixtures.concurrency import wait_until


def test_trainers_get_the_held_out_loss_of_a_local_model_privately(trainer_harness, tiny_model_dir, adapter_dir, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")  # the worker process inherits it: no hub lookups
    h = trainer_harness
    register_model(h.db, name="tiny-sft-job1", backend="local", base_model=str(tiny_model_dir), location=str(adapter_dir))
    eval_prompts.add_eval_prompt(h.db, [{"role": "user", "content": "Where is my invoice?"}],
                                 reference="Settings, then Billing: the invoice is a PDF.")
    h.command("eval score tiny-sft-job1", user_id="U_AGENT")
    wait_until(lambda: any("held-out loss" in r["text"] for r in h.fake.responses), timeout=120)
    answer = next(r for r in h.fake.responses if "held-out loss" in r["text"])
    assert answer["response_type"] == "ephemeral"
    assert "tiny-sft-job1 vs" in answer["text"] and "on 1 held-out replies" in answer["text"]


def test_only_trainers_may_score_and_openai_models_say_why_not(trainer_harness):
    h = trainer_harness
    register_model(h.db, name="ft:gpt-4o-mini:acme::x1", backend="openai", base_model="gpt-4o-mini", location="ft:gpt-4o-mini:acme::x1")
    h.command("eval score", user_id="U_LEAD")
    h.wait()
    assert "Only trainers" in h.fake.responses[-1]["text"]
    h.command("eval score ft:gpt-4o-mini:acme::x1", user_id="U_AGENT")
    h.wait()
    assert "log-probabilities" in h.fake.responses[-1]["text"] and "/ft eval" in h.fake.responses[-1]["text"]
    h.command("eval score a b", user_id="U_AGENT")
    h.wait()
    assert "Usage: `/ft eval score [model]`" in h.fake.responses[-1]["text"]

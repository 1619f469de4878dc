"""``ftbot train --backend together`` as a user runs it (the installed console script in a subprocess) against the
fake Together server, which the test moves along as Together would; then ``ftbot eval score`` on the brought-home
adapter."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from storage.examples import import_records
from storage.jobs import get_job, list_jobs
from tests.fixtures.concurrency import wait_until
from tests.fixtures.db import database_url
from tests.fixtures.paths import REPO
from trainers.tiny_model import sample_conversations

FTBOT = str(Path(sys.executable).with_name("ftbot"))


@pytest.fixture
def env(sqlite_db, tmp_path, together_api) -> dict[str, str]:
    # The fake's adapter is for the tiny model: that directory stands in for the Together base model, so the
    # brought-home adapter applies to it (adapter_base_model keeps a name without "-Reference" as it is).
    return {
        **os.environ, "FTBOT_DATABASE_URL": database_url(sqlite_db), "FTBOT_HOME": str(tmp_path / "home"),
        "HF_HUB_OFFLINE": "1", "NO_COLOR": "1", "COLUMNS": "200",
        "TOGETHER_BASE_URL": together_api.root_url, "TOGETHER_API_KEY": "together-test-fake",
    }


def _run(env: dict[str, str], *args: str, timeout: float = 180) -> subprocess.CompletedProcess:
    return subprocess.run([FTBOT, *args], capture_output=True, text=True, env=env, timeout=timeout, cwd=REPO)


@pytest.mark.slow
def test_train_together_wait_json_brings_the_adapter_home_and_eval_score_runs_on_it(
        env, sqlite_db, together_api, tiny_model_dir, adapter_dir):
    together_api.adapter_source = adapter_dir
    env["FTBOT_TOGETHER_MODEL"] = str(tiny_model_dir)
    import_records(sqlite_db, enumerate(sample_conversations(24, seed=4, max_turns=1), 1), source_file="t.jsonl",
                   approved_by="U1")
    process = subprocess.Popen([FTBOT, "train", "--backend", "together", "--yes", "--wait", "--json"], env=env, cwd=REPO,
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        wait_until(lambda: list_jobs(sqlite_db) and get_job(sqlite_db, list_jobs(sqlite_db)[0].id).external_id, 60,
                   "the Together job was created")
        external = get_job(sqlite_db, list_jobs(sqlite_db)[0].id).external_id
        assert external
        together_api.advance(external, "running")
        together_api.step(external, 1, 2, loss=2.5)
        together_api.step(external, 2, 2, loss=2.1)
        together_api.complete(external)
        stdout, stderr = process.communicate(timeout=120)
    finally:
        if process.poll() is None:
            process.kill()
    assert process.returncode == 0, stderr
    record = json.loads(stdout)
    assert record["status"] == "succeeded" and record["backend"] == "together"
    # `model` is Together's output name exactly; the adapter brought home is at `location`.
    assert record["model"] == together_api.jobs[external].body["model_output_name"]
    assert Path(record["location"], "adapter_config.json").is_file()
    assert "Training quote" in stderr and "Together AI prices the run at Start" in stderr
    assert "Together AI's estimate for this run: $" in stderr and "succeeded" in stderr.lower()

    [model] = json.loads(_run(env, "models", "--json").stdout)
    assert model["backend"] == "together" and model["name"] == record["model"] and model["location"] == record["location"]
    assert model["base_model"] == str(tiny_model_dir)
    used = _run(env, "use", model["name"])
    assert used.returncode == 0 and "Now using" in used.stdout and "together" in used.stdout

    scored = _run(env, "eval", "score", model["name"], "--json")
    assert scored.returncode == 0, scored.stderr
    report = json.loads(scored.stdout)
    assert report["model"] == model["name"] and report["prompts"] > 0 and report["loss"] > 0


def test_train_together_without_a_key_says_what_to_set(env, sqlite_db, together_api):
    env.pop("TOGETHER_API_KEY")
    result = _run(env, "train", "--backend", "together", "--yes")
    assert result.returncode == 1 and "TOGETHER_API_KEY is not set" in result.stderr
    assert list_jobs(sqlite_db) == [] and not together_api.calls


def test_togethers_price_above_the_budget_says_how_an_admin_starts_it_anyway(env, sqlite_db, together_api):
    env["FTBOT_BUDGET_USD"] = "0"
    import_records(sqlite_db, enumerate(sample_conversations(24, seed=4, max_turns=1), 1), source_file="t.jsonl",
                   approved_by="U1")
    refused = _run(env, "train", "--backend", "together", "--yes")
    assert refused.returncode == 1 and "above the budget cap" in refused.stderr and "--over-budget" in refused.stderr
    assert "Traceback" not in refused.stderr
    assert not _created(together_api)
    started = _run(env, "train", "--backend", "together", "--yes", "--over-budget", "--json")
    assert started.returncode == 0, started.stderr
    assert json.loads(started.stdout)["status"] in ("pending", "queued", "running")
    assert len(_created(together_api)) == 1


def _created(together_api) -> list:
    return [c for c in together_api.calls if c.method == "POST" and c.path.rstrip("/").endswith("/fine-tunes")]

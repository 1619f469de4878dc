"""``ftbot train / jobs / models / use / cancel`` as a user runs them: the installed console script in a subprocess."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from datetime import timedelta
from pathlib import Path

import pytest

from storage.examples import import_records
from storage.jobs import QUOTE_MAX_AGE, create_job, expire_quotes, get_job, list_jobs, register_model, update_job
from storage.models import stored_id, utcnow
from storage.vocabulary import JobStatus
from tests.fixtures.db import database_url
from tests.fixtures.paths import REPO
from trainers.tiny_model import sample_conversations

FTBOT = str(Path(sys.executable).with_name("ftbot"))


class Cli:
    def __init__(self, env: dict[str, str]):
        self.env = env

    def __call__(self, *args: str, stdin: str | None = None, timeout: float = 180) -> subprocess.CompletedProcess:
        return subprocess.run([FTBOT, *args], input=stdin, capture_output=True, text=True, env=self.env, timeout=timeout, cwd=REPO)


@pytest.fixture
def cli(sqlite_db, tmp_path) -> Cli:
    return Cli({
        **os.environ, "FTBOT_DATABASE_URL": database_url(sqlite_db), "FTBOT_HOME": str(tmp_path / "home"),
        "HF_HUB_OFFLINE": "1", "NO_COLOR": "1", "COLUMNS": "200",
    })


def _approve(db, n: int = 12, seed: int = 4) -> None:
    import_records(db, enumerate(sample_conversations(n, seed=seed, max_turns=1), 1), source_file="t.jsonl", approved_by="U1")


@pytest.mark.slow
def test_train_local_wait_json_prints_the_final_job_with_metrics(cli, sqlite_db, tiny_model_dir):
    _approve(sqlite_db)
    result = cli("train", "--backend", "local", "--base-model", str(tiny_model_dir), "--max-steps", "4", "--yes", "--wait", "--json")
    assert result.returncode == 0, result.stderr
    record = json.loads(result.stdout)
    assert record["status"] == "succeeded" and record["backend"] == "local"
    assert Path(record["model"], "adapter_config.json").is_file()
    assert [m["step"] for m in record["metrics"] if m["train_loss"] is not None] == [1, 2, 3, 4]
    assert all(set(m) == {"step", "train_loss", "valid_loss"} for m in record["metrics"])
    assert any(m["valid_loss"] is not None for m in record["metrics"])
    assert "Training quote" in result.stderr and "succeeded" in result.stderr  # the human part went to stderr

    models = json.loads(cli("models", "--json").stdout)
    assert [m["location"] for m in models] == [record["model"]] and models[0]["active"] is False
    used = cli("use", models[0]["name"])
    assert used.returncode == 0 and "Now using" in used.stdout
    assert json.loads(cli("models", "--json").stdout)[0]["active"] is True
    jobs = json.loads(cli("jobs", "--json").stdout)
    assert jobs[0]["id"] == record["id"] and jobs[0]["status"] == "succeeded"


def test_train_openai_asks_first_and_follows_the_job(cli, sqlite_db, openai_api):
    cli.env.update(OPENAI_BASE_URL=openai_api.base_url, OPENAI_API_KEY="sk-test")
    _approve(sqlite_db, 20)
    declined = cli("train", "--backend", "openai", stdin="n\n")
    assert declined.returncode == 0 and "Estimated cost: $" in declined.stdout and "Not started" in declined.stdout
    assert list_jobs(sqlite_db)[0].status == JobStatus.CANCELLED and not openai_api.calls

    accepted = cli("train", "--backend", "openai", "--model", "gpt-4o-mini-2024-07-18", "--wait", "--json", stdin="y\n")
    assert accepted.returncode == 0, accepted.stderr
    record = json.loads(accepted.stdout)
    assert record["status"] == "succeeded" and record["model"].startswith("ft:gpt-4o-mini-2024-07-18:")
    assert [m["step"] for m in record["metrics"]] == [1, 2, 3, 4, 5, 6]
    assert record["trained_tokens"] and record["estimated_tokens"]
    table = cli("models")
    assert table.returncode == 0 and record["model"][:30] in table.stdout


def test_blocked_and_bad_input_print_one_clear_line(cli, sqlite_db, openai_api):
    cli.env.update(OPENAI_BASE_URL=openai_api.base_url, OPENAI_API_KEY="sk-test")
    records = sample_conversations(12, seed=8, max_turns=1)
    records[3]["messages"][1]["content"] = "Card 4111 1111 1111 1111 was charged twice"
    import_records(sqlite_db, enumerate(records, 1), source_file="t.jsonl", approved_by="U1")
    blocked = cli("train", "--backend", "openai", "--yes")
    assert blocked.returncode == 1 and "blocked:" in blocked.stderr and "unredacted personal data" in blocked.stderr
    assert "Traceback" not in blocked.stderr and not openai_api.requests_to("/files")

    missing = cli("use", "no-such-model")
    assert missing.returncode == 1 and "no registered model named 'no-such-model'" in missing.stderr
    assert "Traceback" not in missing.stderr
    nothing = cli("cancel", "999")
    assert nothing.returncode == 1 and "training job 999 does not exist" in nothing.stderr
    wrong = cli("train", "--method", "ppo")
    assert wrong.returncode == 2 and "ppo" in wrong.stderr


def test_train_openai_redact_pii_uploads_redacted_data_and_says_how_much(cli, sqlite_db, openai_api):
    cli.env.update(OPENAI_BASE_URL=openai_api.base_url, OPENAI_API_KEY="sk-test")
    records = sample_conversations(12, seed=8, max_turns=1)
    records[3]["messages"][1]["content"] = "Please write to jo@example.net, card 4111 1111 1111 1111"
    import_records(sqlite_db, enumerate(records, 1), source_file="t.jsonl", approved_by="U1")
    result = cli("train", "--backend", "openai", "--redact-pii", "--yes")
    assert result.returncode == 0, result.stderr
    assert "redacted before upload in 1 example(s)" in result.stdout
    job = list_jobs(sqlite_db)[0]
    assert job.external_id and job.config["gate"]["redact_pii"] is True
    uploaded = openai_api.file_text(job.training_file_id) + openai_api.file_text(job.validation_file_id)
    assert "[EMAIL]" in uploaded and "[CARD]" in uploaded
    assert "jo@example.net" not in uploaded and "4111 1111" not in uploaded


def test_cancel_and_use_by_name(cli, sqlite_db, openai_api):
    cli.env.update(OPENAI_BASE_URL=openai_api.base_url, OPENAI_API_KEY="sk-test")
    openai_api.steps = 50
    _approve(sqlite_db, 20)
    started = cli("train", "--backend", "openai", "--yes", "--json")
    assert started.returncode == 0, started.stderr
    job_id = json.loads(started.stdout)["id"]
    cancelled = cli("cancel", str(job_id))
    assert cancelled.returncode == 0 and "cancelled" in cancelled.stdout
    assert get_job(sqlite_db, job_id).status == JobStatus.CANCELLED
    register_model(sqlite_db, name="baseline", backend="openai", base_model="gpt-4o-mini", location="gpt-4o-mini")
    assert cli("use", "baseline").returncode == 0


@pytest.mark.parametrize(("args", "option", "maximum"), [
    (["cancel", "99999999999999999999999"], "job_id", 2147483647),
    (["train", "--epochs", "99999999999999999999"], "--epochs", 50),
    (["jobs", "--limit", "99999999999999999999"], "--limit", 2147483647),
    (["examples", "list", "--offset", "99999999999999999999"], "--offset", 2147483647),
    (["examples", "list", "--limit", "99999999999999999999"], "--limit", 2147483647),
    (["results", "99999999999999999999"], "round_id", 2147483647),
    (["eval", "remove", "99999999999999999999"], "question_id", 2147483647),
    (["eval", "close", "99999999999999999999"], "round_id", 2147483647),
])
def test_integers_out_of_range_are_usage_errors(cli: Cli, args: list[str], option: str, maximum: int):
    """Stored ids are 32-bit in PostgreSQL: a larger number is refused by the option parser, not by the database driver."""
    result = cli(*args)
    assert result.returncode == 2, result.stderr
    assert f"Invalid value for '{option}'" in result.stderr and f"less than or equal to {maximum}" in result.stderr
    assert "Traceback" not in result.stderr + result.stdout


def test_a_base_model_that_cannot_be_loaded_is_refused_at_the_quote(cli, sqlite_db, tmp_path):
    _approve(sqlite_db)
    missing = tmp_path / "no-such-model"
    result = cli("train", "--backend", "local", "--base-model", str(missing), "--yes", timeout=60)
    assert result.returncode == 1
    assert result.stderr.startswith("error:") and str(missing) in result.stderr and "Traceback" not in result.stderr
    assert list_jobs(sqlite_db) == []  # refused before a job or a worker exists


def test_cancel_of_a_finished_job_says_how_it_ended_and_expired_quotes_are_not_listed(cli, sqlite_db):
    done = create_job(sqlite_db, backend="local", base_model="ftbot:tiny", status=JobStatus.SUCCEEDED).job
    again = cli("cancel", str(done.id))
    assert again.returncode == 1 and f"job #{done.id} already succeeded" in again.stderr and "Traceback" not in again.stderr
    failed = create_job(sqlite_db, backend="local", base_model="ftbot:tiny", status=JobStatus.FAILED).job
    assert f"job #{failed.id} already failed" in cli("cancel", str(failed.id)).stderr

    old = create_job(sqlite_db, backend="local", base_model="ftbot:tiny").job
    fresh = create_job(sqlite_db, backend="local", base_model="ftbot:tiny").job
    update_job(sqlite_db, stored_id(old), created_at=utcnow() - QUOTE_MAX_AGE - timedelta(minutes=1))
    assert expire_quotes(sqlite_db) == [old.id]
    listed = [job["id"] for job in json.loads(cli("jobs", "--json").stdout)]
    assert fresh.id in listed and old.id not in listed and done.id in listed


LONG_NAME = "acme-support-gpt-4o-mini-2026-11-30-v12"


@pytest.mark.parametrize("columns", ["60", "200"])
def test_jobs_and_models_tables_keep_model_names_whole_and_show_no_paths(cli, sqlite_db, columns):
    base = "/srv/models/Qwen2.5-0.5B-Instruct"
    job = create_job(sqlite_db, backend="local", base_model=base).job
    adapter = f"/root/.ftbot/models/{job.id}/adapter"
    update_job(sqlite_db, stored_id(job), status=JobStatus.SUCCEEDED, result_model=adapter)
    register_model(sqlite_db, name=LONG_NAME, backend="local", base_model=base, location=adapter, job_id=stored_id(job))
    cli.env["COLUMNS"] = columns
    for command in ("jobs", "models"):
        listing = cli(command)
        assert listing.returncode == 0, listing.stderr
        # Whole on one line, to be copied into `ftbot use NAME`; the base by its folder's name.
        assert LONG_NAME in listing.stdout and "Qwen2.5-0.5B-Instruct" in listing.stdout
        assert "…" not in listing.stdout and "/root" not in listing.stdout and "/srv" not in listing.stdout
        assert max(len(line) for line in listing.stdout.splitlines()) <= int(columns)

"""Training with a shared artifact store in S3 (a real moto server): the worker publishes the adapter, the merged
model, the loss chart and the log; a machine with an empty cache reads the models back from S3 and answers."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from storage.artifacts import MARKER, cache_dir
from storage.config import Settings
from storage.examples import import_records
from storage.jobs import create_job, register_model
from storage.pairs import add_pair
from storage.snapshots import create_snapshot
from storage.vocabulary import JobStatus
from tests.fixtures.db import database_url
from tests.fixtures.paths import REPO
from tests.fixtures.s3 import S3Bucket
from trainers.drafts.server import ModelStore, load_request
from trainers.evaluation.inference import GenerationSettings, LocalGenerator
from trainers.tiny_model import sample_conversations, sample_preference_pairs
from trainers.training.jobs import quote_job, refresh_job
from trainers.training.launch import log_path
from trainers.training.local.entry import run
from trainers.training.together_backend import TogetherBackend

FAST = dict(max_steps=4, learning_rate=3e-2, batch_size=4, max_length=256, lora_dropout=0.0, lora_r=8, lora_alpha=16)
FTBOT = str(Path(sys.executable).with_name("ftbot"))
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


@pytest.mark.slow
def test_local_jobs_publish_to_s3_and_a_fresh_machine_answers_from_there(sqlite_db, tiny_model_dir, tmp_path, monkeypatch,
                                                                          s3_artifacts: S3Bucket):
    monkeypatch.setenv("FTBOT_HOME", str(tmp_path / "worker-home"))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    url = s3_artifacts.url
    import_records(sqlite_db, enumerate(sample_conversations(12, max_turns=1), 1), source_file="t.jsonl", approved_by="U1")
    sft_job = quote_job(sqlite_db, backend="local", model=str(tiny_model_dir), local_options=FAST).job
    log_path(sft_job.id).parent.mkdir(parents=True)
    log_path(sft_job.id).write_text("$ python -m trainers.training.worker\nstep 1\n")  # what spawn_worker starts
    run(sqlite_db, sft_job.id)  # the worker's entry point, in-process
    sft = refresh_job(sqlite_db, sft_job.id).model
    assert sft is not None and sft.location == f"{url}/models/{sft_job.id}/adapter"
    adapter_keys = s3_artifacts.keys(f"models/{sft_job.id}/adapter")
    for name in ("adapter_config.json", "adapter_model.safetensors", "tokenizer.json", MARKER):
        assert f"models/{sft_job.id}/adapter/{name}" in adapter_keys
    assert s3_artifacts.read(f"jobs/{sft_job.id}/loss.png").startswith(PNG_MAGIC)
    assert b"step 1" in s3_artifacts.read(f"jobs/{sft_job.id}/worker.log")

    # DPO continues the SFT model from S3: its parent is merged once and published next to the parent.
    for pair in sample_preference_pairs(12):
        add_pair(sqlite_db, pair, source_kind="comparison")
    dpo_job = quote_job(sqlite_db, backend="local", method="dpo", local_options={**FAST, "max_steps": 2, "merge": True}).job
    assert dpo_job.config["parent_location"] == sft.location
    run(sqlite_db, dpo_job.id)
    dpo = refresh_job(sqlite_db, dpo_job.id).model
    assert dpo is not None and dpo.location == f"{url}/models/{dpo_job.id}/adapter"
    assert dpo.base_model == f"{url}/models/{sft_job.id}/merged"  # what evaluation loads the DPO adapter onto
    assert dpo.metrics["root_base_model"] == str(tiny_model_dir)
    assert f"models/{sft_job.id}/merged/{MARKER}" in s3_artifacts.keys(f"models/{sft_job.id}/merged")
    assert f"models/{dpo_job.id}/merged/config.json" in s3_artifacts.keys(f"models/{dpo_job.id}/merged")  # --merge
    assert dpo_job.id != sft_job.id and s3_artifacts.read(f"jobs/{dpo_job.id}/loss.png").startswith(PNG_MAGIC)

    # Another machine: an empty FTBOT_HOME, so every model comes from S3 (downloaded once into its cache).
    monkeypatch.setenv("FTBOT_HOME", str(tmp_path / "reader-home"))
    prompt = sample_conversations(1, seed=9, max_turns=1)[0]["messages"][:-1]
    greedy = GenerationSettings(max_new_tokens=8, temperature=0.0)
    for model in (sft, dpo):
        generator = LocalGenerator(model.base_model, model.location)
        assert len(generator.generate([prompt], greedy)) == 1
        assert (cache_dir(model.location) / "adapter_config.json").is_file()
    assert (cache_dir(dpo.base_model) / "config.json").is_file()

    # The embedded drafts server loads an adapter named by its S3 URL from its copy.
    name, base, adapter = load_request({"lora_name": sft.name, "lora_path": sft.location, "base_model": sft.base_model},
                                       ModelStore())
    assert (name, base, adapter) == (sft.name, sft.base_model, str(cache_dir(sft.location)))


def test_a_together_adapter_goes_to_the_store_and_an_unreachable_store_is_retried(
        sqlite_db, together_api, tmp_path, monkeypatch, s3_artifacts: S3Bucket):
    monkeypatch.setenv("FTBOT_HOME", str(tmp_path / "home"))
    source = tmp_path / "trained-adapter"
    source.mkdir()
    (source / "adapter_config.json").write_text('{"r": 16, "base_model_name_or_path": "meta-llama/Llama-3.1-8B"}')
    (source / "adapter_model.safetensors").write_bytes(b"\0" * 64)
    together_api.adapter_source = source
    import_records(sqlite_db, enumerate(sample_conversations(20, seed=1), 1), source_file="t.jsonl", approved_by="U1")
    snapshot = create_snapshot(sqlite_db, kind="sft").snapshot
    job = create_job(sqlite_db, backend="together", base_model="meta-llama/Meta-Llama-3.1-8B-Instruct-Reference",
                     snapshot_id=snapshot.id, status=JobStatus.PENDING).job
    job = TogetherBackend(settings=Settings.from_env()).submit(sqlite_db, job.id)
    together_api.complete(job.external_id)

    monkeypatch.setenv("FTBOT_ARTIFACTS_ENDPOINT_URL", "http://127.0.0.1:9")  # the store is down for a moment
    first = TogetherBackend(settings=Settings.from_env()).poll(sqlite_db, job.id)
    assert not first.finished and first.job.status == JobStatus.RUNNING
    assert "will retry" in first.job.progress["message"] and "cannot be reached" in first.job.progress["message"]

    monkeypatch.setenv("FTBOT_ARTIFACTS_ENDPOINT_URL", s3_artifacts.endpoint)
    done = TogetherBackend(settings=Settings.from_env()).poll(sqlite_db, job.id)
    assert done.finished and done.job.status == JobStatus.SUCCEEDED
    assert done.job.result_model == f"{s3_artifacts.url}/models/{job.id}/adapter"
    assert s3_artifacts.keys(f"models/{job.id}/adapter") == [
        f"models/{job.id}/adapter/{MARKER}", f"models/{job.id}/adapter/adapter_config.json",
        f"models/{job.id}/adapter/adapter_model.safetensors"]


@pytest.mark.parametrize("columns", ["60", "200"])
def test_ftbot_models_shows_where_each_model_is_stored(sqlite_db, tmp_path, columns):
    local = create_job(sqlite_db, backend="local", base_model="ftbot:tiny", status="succeeded").job
    shared = create_job(sqlite_db, backend="local", base_model="ftbot:tiny", status="succeeded").job
    register_model(sqlite_db, name="tiny-sft-here", backend="local", base_model="ftbot:tiny",
                   location=f"/root/.ftbot/models/{local.id}/adapter", job_id=local.id)
    remote = f"s3://team-bucket/ftbot/models/{shared.id}/adapter"
    register_model(sqlite_db, name="tiny-sft-shared", backend="local", base_model="ftbot:tiny", location=remote,
                   job_id=shared.id)
    env = {**os.environ, "FTBOT_DATABASE_URL": database_url(sqlite_db), "FTBOT_HOME": str(tmp_path / "home"),
           "NO_COLOR": "1", "COLUMNS": columns}
    listing = subprocess.run([FTBOT, "models"], capture_output=True, text=True, env=env, timeout=120, cwd=REPO)
    assert listing.returncode == 0, listing.stderr
    assert "this machine" in listing.stdout and "/root" not in listing.stdout  # a local path is never shown
    # Wide: a "stored" column; narrow: "stored: URL" in the row's pairs (the rules of every ftbot table).
    assert remote in listing.stdout if columns == "200" else f"stored: {remote}" in listing.stdout
    assert max(len(line) for line in listing.stdout.splitlines()) <= int(columns)

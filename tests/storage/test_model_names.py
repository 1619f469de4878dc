"""Models are named for people: registered names, OpenAI ids and short base names, never a server directory."""

from __future__ import annotations

import pytest

from storage.jobs import create_job, register_model, update_job
from storage.model_names import display_name, job_model_name
from storage.models import stored_id
from storage.vocabulary import JobStatus


@pytest.mark.parametrize(("name", "shown"), [
    ("openai:gpt-4o-mini", "gpt-4o-mini (OpenAI)"),
    ("local:ftbot:tiny", "ftbot:tiny (local base model)"),
    ("local:/srv/models/Qwen2.5-0.5B-Instruct/", "Qwen2.5-0.5B-Instruct (local base model)"),
    ("local:/root/.ftbot/models/3/merged", "job #3 merged (local base model)"),
    ("/root/.ftbot/models/job-3/adapter", "job #3 adapter"),
    ("~/models/llama-3-8b", "llama-3-8b"),
    ("./checkpoints/best", "best"),
    # Hugging Face ids, registered and OpenAI names are names already.
    ("Qwen/Qwen2.5-0.5B-Instruct", "Qwen/Qwen2.5-0.5B-Instruct"),
    ("acme-support-gpt-4o-mini-2026-11-30-v12", "acme-support-gpt-4o-mini-2026-11-30-v12"),
    ("ft:gpt-4o-mini-2024-07-18:acme::a1b2", "ft:gpt-4o-mini-2024-07-18:acme::a1b2"),
])
def test_display_name_shows_directories_by_their_folder(name, shown):
    assert display_name(name) == shown


def test_a_jobs_model_is_its_registered_name_else_never_its_directory(sqlite_db):
    adapter = "/root/.ftbot/models/{}/adapter"
    job = create_job(sqlite_db, backend="local", base_model="/srv/models/Qwen2.5-0.5B-Instruct").job
    assert job_model_name(sqlite_db, job) is None  # no result yet
    job_id = stored_id(job)
    job = update_job(sqlite_db, job_id, status=JobStatus.SUCCEEDED, result_model=adapter.format(job_id))
    assert job_model_name(sqlite_db, job) == f"job #{job_id} adapter"
    register_model(sqlite_db, name="acme-support-v12", backend="local", base_model=job.base_model,
                   location=adapter.format(job_id), job_id=job_id)
    assert job_model_name(sqlite_db, job) == "acme-support-v12"

"""Local training on a real Ray cluster (a head started by the test session): the worker runs as a Ray job.

Covers what a team relies on when its GPUs are a Ray cluster: the job runs there and registers its model, one job per
ftbot job however often Start is retried, ``ftbot cancel`` stops it at Ray, it outlives a kill -9 of the process that
submitted it, and a job Ray ends on its own is failed with Ray's log.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
from typer.testing import CliRunner

from bot.cli import app
from storage import evals
from storage.errors import ClusterError
from storage.examples import import_records
from storage.jobs import get_job, list_jobs, list_models, register_model, update_job
from storage.vocabulary import JobStatus
from tests.fixtures.concurrency import wait_until
from tests.fixtures.db import database_url
from tests.trainers.training.local_jobs import quoted_local_job
from trainers.cluster import RayCluster, RayJobState, RayWork, WorkKind, submission_id
from trainers.evaluation.generation import spawn_generation
from trainers.tiny_model import sample_conversations
from trainers.training.jobs import refresh_job, start_job, wait_for_job

pytestmark = [pytest.mark.slow, pytest.mark.usefixtures("ray_cluster_env")]

def _quoted_job(db, base_model: Path, **options):
    return quoted_local_job(db, base_model, **{"max_steps": 3, **options})


def _ray_jobs(address: str) -> dict[str, str]:
    """submission id → status, as Ray's own job list says."""
    return {j.submission_id: str(j.status.value) for j in RayCluster(address).client.list_jobs() if j.submission_id}


def test_a_tiny_sft_job_runs_as_a_ray_job_and_registers_its_model(db, local_env, ray_cluster_env):
    job = _quoted_job(db, local_env)
    started = start_job(db, job.id).job
    assert started.external_id == submission_id(WorkKind.TRAINING, job.id, started.created_at)
    assert started.config["runner"] == "ray" and started.config["ray_address"] == ray_cluster_env.address
    update = wait_for_job(db, job.id, interval=0.5, timeout=240)
    assert update.job.status == JobStatus.SUCCEEDED, (update.job.error, update.job.log_tail)
    # Ray's own record agrees (its process may take a moment to exit after writing the result).
    assert RayCluster(ray_cluster_env.address).wait(started.external_id, timeout=60, interval=0.5) == RayJobState.SUCCEEDED
    assert _ray_jobs(ray_cluster_env.address)[started.external_id] == "SUCCEEDED"
    assert update.model is not None and Path(update.model.location, "adapter_config.json").is_file()
    # The worker reported its steps through the database, as a child process would.
    assert update.job.progress.get("heldout_prompts", 0) >= 1
    info = RayCluster(ray_cluster_env.address).client.get_job_info(started.external_id)
    assert f"trainers.training.worker --job-id {job.id}" in info.entrypoint
    assert info.metadata["ftbot_job"] == str(job.id)
    # `ftbot eval score` runs on the cluster too, and measures what the worker measured after training.
    before = {j.submission_id for j in RayCluster(ray_cluster_env.address).client.list_jobs()}
    report = json.loads(_cli("eval", "score", update.model.name, "--json", database=db).stdout)
    assert report["loss"] == pytest.approx(update.job.progress["heldout_loss"], rel=1e-3)
    assert report["baseline_loss"] == pytest.approx(update.job.progress["baseline_heldout_loss"], rel=1e-3)
    scoring = [j for j in RayCluster(ray_cluster_env.address).client.list_jobs() if j.submission_id not in before]
    assert [j.submission_id.startswith("ftbot-score-") for j in scoring] == [True]


def test_evaluation_answers_are_generated_by_a_ray_job(sqlite_db, tiny_model_dir, adapter_dir, tmp_path, monkeypatch,
                                                        ray_cluster_env):
    monkeypatch.setenv("FTBOT_HOME", str(tmp_path / "home"))
    monkeypatch.setenv("FTBOT_EVAL_MAX_TOKENS", "8")
    register_model(sqlite_db, name="tiny-sft-job1", backend="local", base_model=str(tiny_model_dir), location=str(adapter_dir))
    prompts = [[{"role": "user", "content": f"Question {i}?"}] for i in range(3)]
    round_ = evals.create_round(sqlite_db, candidate_model="tiny-sft-job1", baseline_model=f"local:{tiny_model_dir}",
                                prompts=prompts).example
    worker = spawn_generation(round_.id, database_url=database_url(sqlite_db), created_at=round_.created_at)
    assert isinstance(worker, RayWork) and worker.job_id.startswith(f"ftbot-eval-{round_.id}-")
    assert wait_until(lambda: worker.poll() is not None, timeout=180) is not None and worker.poll() == 0
    assert all(c.answer_a and c.answer_b for c in evals.round_comparisons(sqlite_db, round_.id))
    assert worker.job_id.endswith("-1")
    # `/ft eval resume` runs the round's worker again: a second attempt while the first stays in Ray's list; asked
    # again while that one runs, it is the one watched (never two at once).
    again = spawn_generation(round_.id, database_url=database_url(sqlite_db), created_at=round_.created_at)
    same = spawn_generation(round_.id, database_url=database_url(sqlite_db), created_at=round_.created_at)
    assert again.job_id == worker.job_id.removesuffix("-1") + "-2" and same.job_id == again.job_id
    wait_until(lambda: again.poll() is not None, timeout=180)
    assert again.poll() == 0


def test_a_retried_submit_never_starts_a_second_ray_job(sqlite_db, local_env, ray_cluster_env):
    job = _quoted_job(sqlite_db, local_env, max_steps=100000)
    started = start_job(sqlite_db, job.id).job
    # A bot killed after writing the submission id and before hearing Ray's answer: the job is still pending, and the
    # next refresh submits it again. Ray keeps one job under that id.
    cluster = RayCluster(ray_cluster_env.address)
    update_job(sqlite_db, job.id, status=JobStatus.PENDING)
    refresh_job(sqlite_db, job.id)
    cluster.submit(started.external_id, "trainers.training.worker", ["--job-id", str(job.id)],
                   database_url=database_url(sqlite_db))
    assert [j for j in cluster.client.list_jobs() if j.submission_id == started.external_id].__len__() == 1
    wait_until(lambda: get_job(sqlite_db, job.id).status == JobStatus.RUNNING, timeout=120)
    _cli("cancel", str(job.id), database=sqlite_db)


def _cli(*args: str, database):
    env = {"FTBOT_DATABASE_URL": database_url(database)}
    result = CliRunner().invoke(app, list(args), env=env, catch_exceptions=False)
    assert result.exit_code == 0, result.output
    return result


def test_ftbot_cancel_stops_a_running_ray_job(db, local_env, ray_cluster_env):
    job = _quoted_job(db, local_env, max_steps=100000)
    started = start_job(db, job.id).job
    wait_until(lambda: get_job(db, job.id).status == JobStatus.RUNNING, timeout=120, what="the worker running on Ray")
    result = _cli("cancel", str(job.id), database=db)
    assert f"Job #{job.id} is cancelled." in result.output
    cluster = RayCluster(ray_cluster_env.address)
    assert cluster.wait(started.external_id, timeout=60, interval=0.5) == RayJobState.STOPPED
    final = refresh_job(db, job.id).job
    assert final.status == JobStatus.CANCELLED and final.error is None
    assert list_models(db) == []
    records = json.loads(_cli("jobs", "--json", database=db).stdout)
    assert [r["status"] for r in records if r["id"] == job.id] == ["cancelled"]


def test_a_ray_job_outlives_a_kill_9_of_the_cli_that_submitted_it(sqlite_db, local_env, ray_cluster_env, tmp_path):
    import_records(sqlite_db, enumerate(sample_conversations(12, max_turns=1), 1), source_file="t.jsonl", approved_by="U1")
    env = {**os.environ, "FTBOT_DATABASE_URL": database_url(sqlite_db)}
    command = [str(Path(sys.executable).parent / "ftbot"), "train", "--backend", "local", "--base-model", str(local_env),
               "--max-steps", "40", "--yes", "--wait"]
    cli = subprocess.Popen(command, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    try:
        job = wait_until(lambda: next(iter(list_jobs(sqlite_db, status=JobStatus.RUNNING)), None), timeout=180,
                         what="the job running on Ray")
        os.kill(cli.pid, signal.SIGKILL)
        cli.wait(timeout=10)
    finally:
        if cli.poll() is None:
            cli.kill()
    # Nobody watches the job now; it runs on. A later refresh (a restarted bot, `ftbot jobs`) finds it done.
    update = wait_for_job(sqlite_db, job.id, interval=0.5, timeout=300)
    assert update.job.status == JobStatus.SUCCEEDED, (update.job.error, update.job.log_tail)
    assert update.model is not None and update.model.job_id == job.id
    assert RayCluster(ray_cluster_env.address).wait(job.external_id, timeout=60, interval=0.5) == RayJobState.SUCCEEDED


def test_a_ray_job_stopped_behind_ftbots_back_fails_with_rays_log(sqlite_db, local_env, ray_cluster_env):
    job = _quoted_job(sqlite_db, local_env, max_steps=100000)
    started = start_job(sqlite_db, job.id).job
    wait_until(lambda: get_job(sqlite_db, job.id).status == JobStatus.RUNNING, timeout=120)
    cluster = RayCluster(ray_cluster_env.address)
    cluster.client.stop_job(started.external_id)  # an operator, or the cluster, ends it
    cluster.wait(started.external_id, timeout=60, interval=0.5)
    update = wait_until(lambda: (u := refresh_job(sqlite_db, job.id)).finished and u, timeout=60)
    assert update.job.status in (JobStatus.FAILED,)
    assert "Ray" in (update.job.error or "") or "stopped" in (update.job.error or "").lower()
    assert f"--job-id {job.id}" in (update.job.log_tail or "") or update.job.log_tail


def test_a_failing_worker_on_ray_keeps_rays_log_tail(sqlite_db, local_env, tmp_path):
    not_a_model = tmp_path / "not-a-model"
    not_a_model.mkdir()
    job = _quoted_job(sqlite_db, not_a_model)
    start_job(sqlite_db, job.id)
    update = wait_for_job(sqlite_db, job.id, interval=0.5, timeout=180)
    assert update.job.status == JobStatus.FAILED
    assert "has no config.json" in update.job.error
    # The worker ran under Ray: its traceback is in Ray's log, which the record now carries.
    assert "Traceback" in update.job.log_tail and "ConfigError" in update.job.log_tail


def test_an_unreachable_cluster_leaves_the_job_quoted_with_a_clear_error(sqlite_db, local_env, monkeypatch):
    from tests.fixtures.ray_head import free_port

    monkeypatch.setenv("FTBOT_RAY_ADDRESS", f"http://127.0.0.1:{free_port()}")
    job = _quoted_job(sqlite_db, local_env)
    with pytest.raises(ClusterError, match="cannot reach the Ray cluster"):
        start_job(sqlite_db, job.id)
    assert get_job(sqlite_db, job.id).status == JobStatus.QUOTED  # Start works again once the cluster is back


def test_on_ray_the_adapter_lands_in_s3_and_a_generation_job_reads_it_back(sqlite_db, local_env, s3_artifacts,
                                                                          tmp_path, monkeypatch):
    job = _quoted_job(sqlite_db, local_env)
    start_job(sqlite_db, job.id)
    update = wait_for_job(sqlite_db, job.id, interval=0.5, timeout=240)
    assert update.job.status == JobStatus.SUCCEEDED, (update.job.error, update.job.log_tail)
    assert update.model is not None and update.model.location == f"{s3_artifacts.url}/models/{job.id}/adapter"
    assert any(key.endswith(f"models/{job.id}/adapter/adapter_config.json") for key in s3_artifacts.keys())
    # The answers come from another "node": a worker whose ftbot home has never seen the adapter.
    fresh_home = tmp_path / "another-node"
    monkeypatch.setenv("FTBOT_HOME", str(fresh_home))
    monkeypatch.setenv("FTBOT_EVAL_MAX_TOKENS", "8")
    round_ = evals.create_round(sqlite_db, candidate_model=update.model.name, baseline_model=f"local:{local_env}",
                                prompts=[[{"role": "user", "content": "Where is my order?"}]]).example
    worker = spawn_generation(round_.id, database_url=database_url(sqlite_db), created_at=round_.created_at)
    wait_until(lambda: worker.poll() is not None, timeout=180)
    assert worker.poll() == 0, worker.log_tail()
    assert all(c.answer_a and c.answer_b for c in evals.round_comparisons(sqlite_db, round_.id))
    downloaded = list((fresh_home / "cache" / "artifacts").glob("*/adapter_config.json"))
    assert len(downloaded) == 1

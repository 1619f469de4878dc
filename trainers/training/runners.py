"""Where a local job's worker runs, and watching it there: a child process, or a Ray job (``trainers.training.jobs``
calls these; no ML imports).

A local job started without ``FTBOT_RAY_ADDRESS`` runs its worker (``python -m trainers.training.worker``) as a child
process of the bot or the CLI (``trainers.training.launch``); its record keeps the pid. With the setting, the worker
runs as a Ray job. Its record keeps ``config["runner"] = "ray"``, ``config["ray_address"]`` and the submission id as
``external_id``, written *before* the submit: a bot killed between the two finds the id, and submitting it again is
harmless (Ray keeps one job per id). Later refreshes ask the cluster the job was sent to, even if the bot's own
setting has changed since.
"""

from __future__ import annotations

import logging
import time

from storage.config import Settings
from storage.db import Database
from storage.errors import FtbotError, TrainingError
from storage.jobs import claim_job, finish_job, get_job, update_job
from storage.models import Job, stored_id
from storage.scrub import scrub_credentials
from storage.vocabulary import JobStatus
from trainers.cluster import JobRunner, RayCluster, RayJobState, WorkKind, submission_id
from trainers.training.launch import read_log_tail, spawn_worker, stop_worker, worker_exit_code

log = logging.getLogger(__name__)

WORKER_MODULE = "trainers.training.worker"
# A job Ray reports ended may still be writing its own result to the database: wait this long before calling it lost.
RESULT_GRACE_SECONDS = 2.0


def runs_on_ray(job: Job) -> bool:
    return (job.config or {}).get("runner") == JobRunner.RAY


def start_worker(db: Database, job: Job, *, database_url: str, settings: Settings | None = None) -> Job:
    """Start the worker of a claimed (``pending``) local job: on the configured Ray cluster, else as a child process.

    Raises TrainingError (the child could not start: the job failed) or an FtbotError from Ray (unreachable or
    refusing: the job is quoted again, so Start works once that is fixed, under the same submission id).
    """
    job_id = stored_id(job)
    cluster = RayCluster.from_settings(settings)
    if cluster is not None:
        try:
            return submit_training(db, job, cluster, database_url=database_url)
        except FtbotError:
            claim_job(db, job_id, from_status=JobStatus.PENDING, to_status=JobStatus.QUOTED)
            raise
    try:
        pid = spawn_worker(job_id, database_url=database_url)
    except OSError as error:
        finish_job(db, job_id, JobStatus.FAILED, error=f"Could not start the training worker: {error}")
        raise TrainingError(f"could not start the training worker process: {error}") from error
    return update_job(db, job_id, worker_pid=pid)


def check_worker(db: Database, job: Job, settings: Settings | None = None) -> bool:
    """Fail a local job whose worker is gone without recording a result (killed, crashed, out of memory, or a Ray
    job that ended); True when the record changed."""
    if runs_on_ray(job):
        try:
            return check_ray_job(db, job, database_url=db.engine.url.render_as_string(hide_password=False),
                                 settings=settings)
        except FtbotError as error:
            log.warning("cannot check job %s on Ray: %s", job.id, error)  # asked again at the next refresh
            return False
    if job.worker_pid is None:
        return False
    code = worker_exit_code(job.worker_pid)
    if code is None:
        return False
    time.sleep(0.05)
    job_id = stored_id(job)
    if get_job(db, job_id).status in JobStatus.FINISHED:
        return True  # the worker recorded its own result before exiting
    how = f"was killed by signal {-code}" if code < -1 else ("is gone" if code == -1 else f"exited with code {code}")
    finish_job(
        db, job_id, JobStatus.FAILED,
        error=f"The training worker (pid {job.worker_pid}) {how} before finishing; its log tail is kept with the job. "
        f"fix the cause and start a new job (`/ft train local`).",
        log_tail=scrub_credentials(read_log_tail(job_id)),
    )
    return True


def stop_job_worker(job: Job, settings: Settings | None = None) -> None:
    """Stop the worker of a job already marked cancelled (its SIGTERM handler leaves that record as it is)."""
    if runs_on_ray(job):
        cluster_of(job, settings).stop(str(job.external_id))
    elif job.worker_pid is not None and worker_exit_code(job.worker_pid) is None:
        stop_worker(job.worker_pid)


def cluster_of(job: Job, settings: Settings | None = None) -> RayCluster:
    """The cluster the job was submitted to (its recorded address), with today's other settings."""
    settings = settings or Settings.from_env()
    return RayCluster(str(job.config.get("ray_address") or settings.ray_address), settings=settings)


def submit_training(db: Database, job: Job, cluster: RayCluster, *, database_url: str) -> Job:
    """Submit a claimed (``pending``) local job as a Ray job; raises ClusterError when Ray cannot take it."""
    job_id = stored_id(job)
    ray_id = submission_id(WorkKind.TRAINING, job_id, job.created_at)
    config = {**job.config, "runner": JobRunner.RAY.value, "ray_address": cluster.address}
    job = update_job(db, job_id, config=config, external_id=ray_id)
    _submit(job, cluster, database_url)
    return job


def _submit(job: Job, cluster: RayCluster, database_url: str) -> None:
    processes = max(1, int((job.config or {}).get("num_processes", 1)))
    cluster.submit(str(job.external_id), WORKER_MODULE, ["--job-id", str(job.id)], database_url=database_url,
                   gpus=cluster.settings.ray_num_gpus * processes,
                   metadata={"ftbot_job": str(job.id), "kind": WorkKind.TRAINING.value, "method": job.method})


def check_ray_job(db: Database, job: Job, *, database_url: str, settings: Settings | None = None) -> bool:
    """Compare ftbot's record of a Ray-run job with Ray's; True when the record changed.

    - Ray says FAILED, STOPPED or SUCCEEDED but the worker recorded no result: the job failed, with Ray's log tail.
    - Ray does not know the job: still ``pending`` means the submit never reached Ray (it is submitted again);
      ``running`` means the cluster forgot it (a head restarted without fault tolerance): the job failed.
    - A failed job whose worker could not keep its own log (it ran elsewhere) gets Ray's log tail.
    A cluster that cannot be reached changes nothing: the next refresh asks again.
    """
    cluster = cluster_of(job, settings)
    ray_id = str(job.external_id)
    state = cluster.state(ray_id)
    job_id = stored_id(job)
    if job.status in JobStatus.FINISHED:
        if job.status == JobStatus.FAILED and not (job.log_tail or "").strip() and state != RayJobState.UNKNOWN:
            update_job(db, job_id, log_tail=cluster.log_tail(ray_id))
            return True
        return False
    if state == RayJobState.UNKNOWN and job.status == JobStatus.PENDING:
        log.warning("Ray does not know job %s of ftbot job %s: submitting it again", ray_id, job_id)
        _submit(job, cluster, database_url)
        return False
    if not state.is_terminal:
        return False
    time.sleep(0.05)
    fresh = get_job(db, job_id)
    if fresh.status not in JobStatus.FINISHED and state != RayJobState.UNKNOWN:
        time.sleep(RESULT_GRACE_SECONDS)  # the worker's last write may be on its way
        fresh = get_job(db, job_id)
    if fresh.status in JobStatus.FINISHED:
        if fresh.status == JobStatus.FAILED and not (fresh.log_tail or "").strip():
            update_job(db, job_id, log_tail=cluster.log_tail(ray_id))
        return True
    if state == RayJobState.UNKNOWN:
        error = (f"The Ray cluster at {cluster.address} no longer knows job {ray_id} (its head node restarted?); "
                 "the training is lost. Start a new job (`/ft train local`).")
        tail = ""
    else:
        said = cluster.message(ray_id)
        error = (f"Ray reports job {ray_id} {state.value}" + (f" ({said})" if said else "") +
                 " before the worker recorded a result; its log tail is kept with the job. Fix the cause and start a "
                 "new job (`/ft train local`).")
        tail = cluster.log_tail(ray_id)
    finish_job(db, job_id, JobStatus.FAILED, error=error, log_tail=tail)
    return True


def full_log(job: Job, settings: Settings | None = None) -> str:
    """The whole worker log of a Ray-run job, as Ray kept it ("" when the cluster cannot say)."""
    return cluster_of(job, settings).logs(str(job.external_id))

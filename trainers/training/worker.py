"""The training worker: ``python -m trainers.training.worker --job-id N`` runs one local job to its end.

Started by the bot or the CLI (``trainers.training.launch.spawn_worker``) so the bot never imports the ML stack. The worker
marks the job running, trains (in-process, or under ``accelerate launch`` for several processes), and records the
outcome. Any error marks the job failed with the error and the tail of the worker log; a worker killed outright
is noticed by whoever watches the job (``trainers.monitor``), which does the same from the pid and the log.
"""

from __future__ import annotations

import argparse
import logging
import os
import signal
import subprocess
import sys
import traceback

from storage.config import Settings
from storage.db import Database
from storage.errors import FtbotError
from storage.jobs import finish_job, get_job, update_unfinished_job
from storage.models import utcnow
from storage.scrub import scrub_credentials
from storage.vocabulary import JobStatus
from trainers.training.launch import launch_plan, read_log_tail, training_command
from trainers.training.local.entry import run

log = logging.getLogger("ftbot.worker")


def _terminate(signum, _frame):
    raise SystemExit(128 + signum)


def run_worker(db: Database, job_id: int, settings: Settings | None = None) -> int:
    """Run job ``job_id`` to its end; the exit code (0: done or nothing to do). ``settings``: the launcher."""
    job = get_job(db, job_id)
    if job.status in JobStatus.FINISHED:
        log.info("job %s is already %s; nothing to do", job_id, job.status)
        return 0
    if not update_unfinished_job(db, job_id, status=JobStatus.RUNNING, started_at=utcnow(), worker_pid=os.getpid()):
        return 0  # cancelled before the worker got going
    plan = launch_plan(int(job.config.get("num_processes", 1)), settings=settings)
    try:
        if plan.launcher == "python":
            run(db, job_id)
        else:
            command = training_command(job_id, plan)
            print("$", " ".join(command), flush=True)
            completed = subprocess.run(command, check=False)
            if completed.returncode != 0:
                raise FtbotError(f"`accelerate launch` exited with code {completed.returncode}")
            if get_job(db, job_id).status not in JobStatus.FINISHED:
                raise FtbotError("the training processes ended without recording a result")
    except BaseException as error:  # noqa: BLE001 - every way out must leave the job finished
        traceback.print_exc()
        sys.stdout.flush()
        sys.stderr.flush()
        what = f"{type(error).__name__}: {error}" if str(error) else type(error).__name__
        if isinstance(error, SystemExit):
            what = f"worker stopped by signal/exit ({error.code})"
        finish_job(db, job_id, JobStatus.FAILED, error=scrub_credentials(f"Local training failed: {what}"),
                   log_tail=scrub_credentials(read_log_tail(job_id)))
        return 1
    return 0


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m trainers.training.worker", description="Run one local training job.")
    parser.add_argument("--job-id", type=int, required=True)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    signal.signal(signal.SIGTERM, _terminate)
    settings = Settings.from_env()
    db = Database.open(settings.database_url)
    try:
        code = run_worker(db, args.job_id, settings)
    finally:
        db.close()
    sys.exit(code)


if __name__ == "__main__":
    main()

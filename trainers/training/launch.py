"""Starting and watching the training worker process (no ML imports: the bot and the CLI use this).

The worker is ``python -m trainers.training.worker --job-id N``; it writes status, progress, metrics and artifacts to
the database and its stdout/stderr to ``<ftbot home>/jobs/<id>/worker.log``. For several GPUs the worker runs the
training entry point (``trainers.training.local.entry``) under ``accelerate launch`` (``Settings.launcher`` is
``accelerate``, or ``num_processes > 1``); :func:`training_command` builds that command.
"""

from __future__ import annotations

import os
import shlex
import signal
import subprocess
import sys
from collections import deque
from dataclasses import dataclass
from pathlib import Path

from storage.config import Settings, ftbot_home
from storage.errors import ConfigError
from trainers.worker_processes import PACKAGE_ROOT, worker_environment

LOG_NAME = "worker.log"

# Popen objects of workers this process started: polling them reaps the exit status (no zombies).
_children: dict[int, subprocess.Popen] = {}


def job_dir(job_id: int) -> Path:
    return ftbot_home() / "jobs" / str(job_id)


def model_dir(job_id: int) -> Path:
    """Where a local job's adapter (``adapter/``) and optional merged model (``merged/``) are saved."""
    return ftbot_home() / "models" / str(job_id)


def log_path(job_id: int) -> Path:
    return job_dir(job_id) / LOG_NAME


@dataclass(frozen=True)
class LaunchPlan:
    launcher: str
    num_processes: int
    accelerate_config: str | None = None


def launch_plan(num_processes: int | None = None, *, settings: Settings | None = None) -> LaunchPlan:
    """The launcher and process count: ``num_processes`` (the job's), else ``settings.num_processes``; the launcher
    and its config file come from ``settings`` (``FTBOT_LAUNCHER``, ``FTBOT_ACCELERATE_CONFIG``; None: the defaults)."""
    settings = settings or Settings()
    launcher = settings.launcher
    if num_processes is None:
        num_processes = settings.num_processes
    if num_processes < 1:
        raise ConfigError(f"the number of training processes must be at least 1, got {num_processes}")
    if num_processes > 1:
        launcher = "accelerate"  # several processes only make sense under a distributed launcher
    return LaunchPlan(launcher, num_processes, settings.accelerate_config)


def worker_command(job_id: int, *, python: str | None = None) -> list[str]:
    """The command the bot and the CLI start for a local job."""
    return [python or sys.executable, "-m", "trainers.training.worker", "--job-id", str(job_id)]


def training_command(job_id: int, plan: LaunchPlan, *, python: str | None = None) -> list[str]:
    """The command that runs the training entry point: plain Python, or ``accelerate launch`` for N processes.

    ``accelerate launch --num_processes N [--multi_gpu] [--config_file F] -m trainers.training.local.entry --job-id J``:
    every rank runs the same script; only rank 0 writes metrics and saves the adapter.
    """
    python = python or sys.executable
    entry = ["-m", "trainers.training.local.entry", "--job-id", str(job_id)]
    if plan.launcher == "python":
        return [python, *entry]
    command = [python, "-m", "accelerate.commands.launch", "--num_processes", str(plan.num_processes)]
    if plan.accelerate_config:
        command += ["--config_file", plan.accelerate_config]
    elif plan.num_processes > 1:
        command.append("--multi_gpu")
    return command + entry


def spawn_worker(job_id: int, *, database_url: str, python: str | None = None, env: dict[str, str] | None = None) -> int:
    """Start the worker detached from the caller's terminal; return its pid. Output goes to the job's log file."""
    directory = job_dir(job_id)
    directory.mkdir(parents=True, exist_ok=True)
    with log_path(job_id).open("ab") as log:
        log.write(f"$ {shlex.join(worker_command(job_id, python=python))}\n".encode())
        log.flush()
        process = subprocess.Popen(
            worker_command(job_id, python=python),
            stdout=log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            env=worker_environment(database_url, env),
            cwd=str(PACKAGE_ROOT),
            start_new_session=True,  # a Ctrl-C in the bot's terminal does not kill training
        )
    _children[process.pid] = process
    return process.pid


def worker_exit_code(pid: int) -> int | None:
    """None while the process runs; its exit code (or -signal) once it is gone (-1 when unknown)."""
    child = _children.get(pid)
    if child is not None:
        code = child.poll()
        if code is not None:
            _children.pop(pid, None)
        return code
    try:
        finished, status = os.waitpid(pid, os.WNOHANG)
        if finished == 0:
            return None
        return os.waitstatus_to_exitcode(status)
    except ChildProcessError:
        pass  # not our child (started by a previous bot process): its parent reaps it
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return -1
    except PermissionError:
        return None  # exists, owned by someone else
    return None if not _is_zombie(pid) else -1


def _is_zombie(pid: int) -> bool:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat.rsplit(")", 1)[-1].split()[0] == "Z"


def stop_worker(pid: int) -> None:
    """Ask a worker to stop (SIGTERM to its process group, so accelerate's ranks stop too)."""
    try:
        os.killpg(os.getpgid(pid), signal.SIGTERM)
    except (ProcessLookupError, PermissionError):
        pass


def read_log_tail(job_id: int, lines: int = 30, max_chars: int = 4000) -> str:
    path = log_path(job_id)
    if not path.is_file():
        return ""
    with path.open("r", encoding="utf-8", errors="replace") as handle:
        tail = "".join(deque(handle, maxlen=lines))
    return tail[-max_chars:]

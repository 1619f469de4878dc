"""Model work on a Ray cluster: ftbot's worker processes submitted as Ray jobs through the Ray Jobs API.

With ``FTBOT_RAY_ADDRESS`` set (a Ray dashboard address such as ``http://gpu-head:8265``), training, merges,
evaluation answers and ``eval score`` run as Ray jobs instead of child processes. The job runs the same
``python -m trainers.…`` command a child process would, on a node Ray picks; it reports status, progress and metrics
through the shared database exactly as a child process does. Ray's job status is only the liveness signal: a job Ray
calls FAILED or STOPPED while ftbot's record says it runs is failed with Ray's log tail.

- A job's submission id comes from the ftbot object it runs (:func:`submission_id`), so a retried submit finds the
  first job instead of starting a second one.
- Jobs outlive the bot or CLI process that submitted them: the record keeps the submission id and the cluster's
  address, and whoever refreshes the job later asks Ray about it.
- Ray's client is imported only here and only when a cluster is configured: the bot host needs the ``cluster`` extra
  (``ray[default]``), never torch.
"""

from __future__ import annotations

import json
import logging
import os
import shlex
import threading
import time
from collections.abc import Mapping
from datetime import datetime
from enum import StrEnum
from typing import TYPE_CHECKING, Any, Protocol

from storage.config import DATABASE_URL_VARIABLE, Settings
from storage.errors import ClusterError, ConfigError
from storage.scrub import scrub_credentials

if TYPE_CHECKING:
    from ray.job_submission import JobSubmissionClient

log = logging.getLogger(__name__)

# Ray's client prefers these to the address it is given: ftbot refuses to run when they name another cluster.
RAY_ADDRESS_OVERRIDES = ("RAY_API_SERVER_ADDRESS", "RAY_ADDRESS")
# What a Ray job inherits from the submitter's environment: ftbot's settings, storage credentials, the Hugging Face
# switches, and OpenAI's client settings (an evaluation round may answer one side with OpenAI). Never Slack tokens.
PASSED_PREFIXES = ("FTBOT_", "AWS_", "HF_", "TRANSFORMERS_", "TIKTOKEN_", "DATA_GYM_")
PASSED_NAMES = ("OPENAI_API_KEY", "OPENAI_BASE_URL", "TOKENIZERS_PARALLELISM")


class JobRunner(StrEnum):
    """How a local job's worker runs (``Job.config["runner"]``): a child process, or a Ray job."""

    PROCESS = "process"
    RAY = "ray"


class WorkKind(StrEnum):
    """What a Ray job does: the first part of its submission id."""

    TRAINING = "train"
    GENERATION = "eval"
    SCORING = "score"


class RayJobState(StrEnum):
    """Ray's job status, plus UNKNOWN: the cluster does not know the job (never submitted, or its head restarted
    without fault tolerance and forgot every job)."""

    PENDING = "PENDING"
    RUNNING = "RUNNING"
    STOPPED = "STOPPED"
    SUCCEEDED = "SUCCEEDED"
    FAILED = "FAILED"
    UNKNOWN = "UNKNOWN"

    @property
    def is_terminal(self) -> bool:
        return self in (RayJobState.STOPPED, RayJobState.SUCCEEDED, RayJobState.FAILED, RayJobState.UNKNOWN)

    @property
    def exit_code(self) -> int | None:
        """What a child process would have returned: None while it runs, 0 on success, 1 otherwise."""
        if not self.is_terminal:
            return None
        return 0 if self == RayJobState.SUCCEEDED else 1


def submission_id(kind: WorkKind, object_id: int | str, created_at: datetime) -> str:
    """``ftbot-train-17-20261130T040812123456``: the ftbot object and its creation time, so a retried submit of one
    job finds the first submission, and two ftbot databases sharing one cluster never collide."""
    return f"ftbot-{kind}-{object_id}-{created_at.strftime('%Y%m%dT%H%M%S%f')}"


def job_environment(database_url: str, environ: Mapping[str, str] | None = None) -> dict[str, str]:
    """The variables a Ray job gets: the submitter's ftbot settings and credentials it needs, and the database."""
    env = os.environ if environ is None else environ
    passed = {k: v for k, v in env.items() if k.startswith(PASSED_PREFIXES) or k in PASSED_NAMES}
    passed[DATABASE_URL_VARIABLE] = database_url
    passed["PYTHONUNBUFFERED"] = "1"
    passed.setdefault("TOKENIZERS_PARALLELISM", "false")
    return passed


_clients: dict[str, JobSubmissionClient] = {}
_clients_lock = threading.Lock()


def _client(address: str) -> JobSubmissionClient:
    """One Jobs API client per address (building one asks the dashboard for its version: a network round trip)."""
    for name in RAY_ADDRESS_OVERRIDES:
        other = os.environ.get(name, "").strip()
        if other and other.rstrip("/") != address.rstrip("/"):
            raise ConfigError(f"{name}={other} names another Ray cluster than FTBOT_RAY_ADDRESS={address}, and Ray's "
                              f"client would use {name}: unset {name}, or set both to the same address.")
    with _clients_lock:
        client = _clients.get(address)
        if client is not None:
            return client
        try:
            from ray.job_submission import JobSubmissionClient
        except ImportError:
            raise ConfigError("FTBOT_RAY_ADDRESS is set but Ray's job client is not installed here: "
                              "`pip install 'ftbot[cluster]'`, or unset FTBOT_RAY_ADDRESS to run jobs on this machine.") from None
        try:
            client = JobSubmissionClient(address)
        except Exception as error:  # Ray raises ConnectionError, ValueError or RuntimeError here
            raise ClusterError(f"cannot reach the Ray cluster at {address}: {_reason(error)}. Check FTBOT_RAY_ADDRESS "
                               "(the dashboard address, port 8265 by default) and that the head node is up.") from None
        _clients[address] = client
        return client


def _reason(error: BaseException) -> str:
    text = str(error).strip().splitlines()
    return scrub_credentials(text[-1] if text else type(error).__name__)[:300]


class RayCluster:
    """ftbot's view of one Ray cluster: submit, ask, stop and read the logs of ftbot's jobs there."""

    def __init__(self, address: str, *, settings: Settings | None = None, client: JobSubmissionClient | None = None):
        self.address = address
        self.settings = settings or Settings.from_env()
        self._given_client = client

    @classmethod
    def from_settings(cls, settings: Settings | None = None) -> RayCluster | None:
        """The configured cluster; None when ``FTBOT_RAY_ADDRESS`` is unset (workers run as child processes)."""
        settings = settings or Settings.from_env()
        return cls(settings.ray_address, settings=settings) if settings.ray_address else None

    @property
    def client(self) -> JobSubmissionClient:
        return self._given_client or _client(self.address)

    def entrypoint(self, module: str, args: list[str]) -> str:
        return shlex.join([self.settings.ray_python, "-m", module, *args])

    def runtime_env(self, database_url: str) -> dict[str, Any]:
        """``FTBOT_RAY_RUNTIME_ENV`` with ftbot's variables added to its ``env_vars`` (the configured ones win)."""
        configured = json.loads(json.dumps(dict(self.settings.ray_runtime_env)))  # a deep, plain copy
        env_vars = {**job_environment(database_url), **dict(configured.get("env_vars") or {})}
        return {**configured, "env_vars": env_vars}

    def submit(self, job_id: str, module: str, args: list[str], *, database_url: str, gpus: float | None = None,
               metadata: Mapping[str, str] | None = None) -> str:
        """Submit ``python -m module args`` as Ray job ``job_id``, once: when Ray already has that job, it is kept.

        ``gpus``: GPUs to reserve (None: ``FTBOT_RAY_NUM_GPUS``). Raises ClusterError when Ray refuses or cannot be reached.
        """
        gpus = self.settings.ray_num_gpus if gpus is None else gpus
        options: dict[str, Any] = {}
        if gpus > 0:
            options["entrypoint_num_gpus"] = gpus
        if self.settings.ray_num_cpus > 0:
            options["entrypoint_num_cpus"] = self.settings.ray_num_cpus
        try:
            self.client.submit_job(entrypoint=self.entrypoint(module, args), submission_id=job_id,
                                   runtime_env=self.runtime_env(database_url), metadata=dict(metadata or {}), **options)
            log.info("submitted Ray job %s to %s", job_id, self.address)
        except Exception as error:
            if "already exists" not in str(error):
                raise ClusterError(f"the Ray cluster at {self.address} refused job {job_id}: {_reason(error)}") from None
            log.info("Ray job %s was already submitted: not starting a second one", job_id)
        return job_id

    def submit_attempt(self, work_id: str, module: str, args: list[str], *, database_url: str,
                       metadata: Mapping[str, str] | None = None) -> str:
        """For work that may run again (an evaluation round resumed after a failure): the attempt still running on
        Ray, else a new one, ``<work_id>-1``, ``-2``, … (finished attempts stay in Ray's list with their logs)."""
        attempts = [j for j in self._call(self.client.list_jobs) if (j.submission_id or "").startswith(f"{work_id}-")]
        for attempt in attempts:
            if not RayJobState(str(getattr(attempt.status, "value", attempt.status))).is_terminal:
                return str(attempt.submission_id)
        return self.submit(f"{work_id}-{len(attempts) + 1}", module, args, database_url=database_url, metadata=metadata)

    def state(self, job_id: str) -> RayJobState:
        """Ray's status of the job; UNKNOWN when Ray does not know it. Raises ClusterError when Ray cannot answer."""
        try:
            status = self.client.get_job_status(job_id)
        except Exception as error:
            if "does not exist" in str(error) or "404" in str(error):
                return RayJobState.UNKNOWN
            raise ClusterError(f"cannot ask the Ray cluster at {self.address} about job {job_id}: {_reason(error)}") from None
        return RayJobState(str(getattr(status, "value", status)))

    def message(self, job_id: str) -> str:
        """Ray's own words on how the job ended ("" when it has none or cannot be asked)."""
        try:
            info = self.client.get_job_info(job_id)
        except Exception:  # noqa: BLE001 - only ever decoration for an error message
            return ""
        return scrub_credentials(str(getattr(info, "message", "") or "")).strip()

    def stop(self, job_id: str) -> bool:
        """Ask Ray to stop the job (SIGTERM, then a kill); False when Ray could not (already ended, or still PENDING:
        Ray cannot stop a job waiting for resources, and ftbot's worker exits on its own when it finds the job cancelled)."""
        try:
            return bool(self.client.stop_job(job_id))
        except Exception as error:  # noqa: BLE001 - the job is cancelled in ftbot's record whatever Ray says
            log.warning("Ray could not stop job %s: %s", job_id, _reason(error))
            return False

    def logs(self, job_id: str) -> str:
        """The job's whole log (stdout and stderr of the entrypoint), without credentials; "" when Ray has none."""
        try:
            return scrub_credentials(self.client.get_job_logs(job_id))
        except Exception as error:  # noqa: BLE001 - a missing log never hides the job's own error
            log.warning("cannot read the log of Ray job %s: %s", job_id, _reason(error))
            return ""

    def log_tail(self, job_id: str, lines: int = 30, max_chars: int = 4000) -> str:
        return "".join(self.logs(job_id).splitlines(keepends=True)[-lines:])[-max_chars:]

    def wait(self, job_id: str, *, timeout: float, interval: float = 1.0) -> RayJobState:
        """Poll until the job ends; ClusterError when it has not ended within ``timeout`` seconds (it is stopped)."""
        deadline = time.monotonic() + timeout
        while True:
            state = self.state(job_id)
            if state.is_terminal:
                return state
            if time.monotonic() > deadline:
                self.stop(job_id)
                raise ClusterError(f"Ray job {job_id} did not finish within {timeout:.0f} s; it was stopped.")
            time.sleep(interval)

    def _call(self, method: Any, *args: Any) -> Any:
        try:
            return method(*args)
        except Exception as error:
            raise ClusterError(f"the Ray cluster at {self.address} refused a request: {_reason(error)}") from None


class WorkerHandle(Protocol):
    """A started worker a caller waits on: a child process (``subprocess.Popen``) or a Ray job (:class:`RayWork`)."""

    def poll(self) -> int | None: ...


class RayWork:
    """A submitted Ray job seen like a child process (``poll()``), for callers that wait on a worker."""

    def __init__(self, cluster: RayCluster, job_id: str):
        self.cluster = cluster
        self.job_id = job_id

    def poll(self) -> int | None:
        try:
            return self.cluster.state(self.job_id).exit_code
        except ClusterError as error:
            log.warning("%s", error)  # a blip in reaching the cluster is not the job's end
            return None

    def log_tail(self, max_chars: int = 1500) -> str:
        return self.cluster.log_tail(self.job_id, lines=200, max_chars=max_chars)

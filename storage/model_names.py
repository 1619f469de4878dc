"""Models as people read them: a registered model's name, an OpenAI model id, or a base model's short name, never
a server path. The App Home, ``/ft jobs``, ``/ft models``, the CLI's tables, evaluation results and charts all name
models through :func:`display_name` (a name alone) or :func:`job_model_name` (what a training job produced).

Evaluation rounds name a model that is not registered ``openai:<model id>`` or ``local:<base model>``. A local base
model can be a directory, and a local job's result is its adapter directory (``<ftbot home>/models/<job id>/adapter``):
both would show where the server keeps its files, which means nothing to the team and is not for everyone in a channel.
"""

from __future__ import annotations

import re
from pathlib import PurePosixPath

from storage.db import Database
from storage.jobs import model_for_job
from storage.models import Job, stored_id

OPENAI_PREFIX = "openai:"
LOCAL_PREFIX = "local:"

# What a local job writes under ``<ftbot home>/models/<job id>/`` (trainers.training.launch.model_dir): shown as
# "job #3 adapter", since the folder name alone ("adapter") would not say which model it is.
_JOB_OUTPUTS = ("adapter", "merged")
_JOB_FOLDER = re.compile(r"(?:job-?)?(\d+)")
_WINDOWS_DRIVE = re.compile(r"^[A-Za-z]:[\\/]")


def is_path(name: str) -> bool:
    """Whether a model name is a directory rather than an id: absolute, relative to home or to ``.``, a Windows path,
    or with more than one ``/`` (a Hugging Face id has exactly one: ``Qwen/Qwen2.5-0.5B-Instruct``)."""
    return (name.startswith(("/", "~", "./", "../")) or "\\" in name or bool(_WINDOWS_DRIVE.match(name))
            or name.count("/") > 1)


def _without_path(name: str) -> str:
    """A directory by its folder's name (``/srv/models/Qwen2.5-0.5B-Instruct`` → ``Qwen2.5-0.5B-Instruct``, a job's own
    ``…/models/3/adapter`` → ``job #3 adapter``); any other name as it is."""
    parts = PurePosixPath(name.rstrip("/")).parts if is_path(name) else ()
    if not parts:
        return name
    if len(parts) > 1 and parts[-1] in _JOB_OUTPUTS and (job := _JOB_FOLDER.fullmatch(parts[-2])):
        return f"job #{job.group(1)} {parts[-1]}"
    return parts[-1]


def display_name(name: str) -> str:
    """A model name for people: ``openai:gpt-4o-mini`` → ``gpt-4o-mini (OpenAI)``, ``local:ftbot:tiny`` →
    ``ftbot:tiny (local base model)``, a directory → its folder's name (see :func:`is_path`); else the name itself."""
    if name.startswith(OPENAI_PREFIX):
        return f"{name[len(OPENAI_PREFIX):]} (OpenAI)"
    if name.startswith(LOCAL_PREFIX):
        return f"{_without_path(name[len(LOCAL_PREFIX):])} (local base model)"
    return _without_path(name)


def job_model_name(db: Database, job: Job) -> str | None:
    """The model ``job`` produced, named as ``/ft use`` and ``ftbot use`` take it: its registered name, else its result
    as :func:`display_name` shows it (an OpenAI model id; ``job #N adapter`` for an adapter directory). None while the
    job has no result."""
    if not job.result_model:
        return None
    model = model_for_job(db, stored_id(job))
    return model.name if model is not None else display_name(job.result_model)

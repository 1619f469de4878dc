"""Filling an evaluation round's answers: ``python -m trainers.evaluation.generation --round N``.

The bot never imports torch, so a round with a local model is answered in this worker process; a round with only
OpenAI models is answered in the bot's own thread through :func:`generate_round` (the openai client is light).
Answers are written to the round's comparisons in the database, model by model. The work is resumable: a
comparison that already has a model's answer is not asked again, so a restarted worker finishes the rest.

Model names in a round: a registered model's name, or ``openai:<model id>`` / ``local:<base model>`` for a
model that is not in the registry (typically the baseline: the candidate's base model).
"""

from __future__ import annotations

import argparse
import logging
import subprocess
import sys
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING

from storage.config import DEFAULT_OPENAI_MAX_RETRIES, Settings, ftbot_home
from storage.db import Database
from storage.errors import ConfigError
from storage.evals import RoundStatus, get_round, move_round, round_comparisons, set_answers
from storage.jobs import ModelNotFound, get_model
from storage.model_names import LOCAL_PREFIX, OPENAI_PREFIX
from storage.model_names import display_name as display_name  # re-exported: the charts and /ft eval name models with it
from storage.models import RegisteredModel, stored_id, utcnow
from storage.scrub import scrub_credentials
from trainers.cluster import RayCluster, RayWork, WorkerHandle, WorkKind, submission_id
from trainers.evaluation.inference import GenerationSettings, LocalGenerator, ModelSpec, generate_openai
from trainers.worker_processes import PACKAGE_ROOT, worker_environment

if TYPE_CHECKING:
    from openai import OpenAI

log = logging.getLogger(__name__)

BASE = "base"
_OPENAI_NAMES = ("gpt-", "ft:", "o1", "o3", "o4", "chatgpt-")


def model_spec(db: Database, name: str) -> ModelSpec:
    """How to run the model a round calls `name`."""
    if name.startswith(OPENAI_PREFIX):
        return ModelSpec(name, "openai", name[len(OPENAI_PREFIX):])
    if name.startswith(LOCAL_PREFIX):
        return ModelSpec(name, "local", name[len(LOCAL_PREFIX):])
    try:
        model = get_model(db, name)
    except ModelNotFound:
        raise ConfigError(
            f"model {name!r} is neither registered nor written as openai:<model> or local:<base model>; "
            "`/ft models` lists the registered ones."
        ) from None
    return registered_spec(model)


def registered_spec(model: RegisteredModel) -> ModelSpec:
    if model.backend == "openai":
        return ModelSpec(model.name, "openai", model.location)
    # Local and Together AI models alike: a Together fine-tune was brought home as an adapter for its public base.
    return ModelSpec(model.name, "local", model.base_model, adapter=model.location)


def baseline_name(db: Database, candidate: RegisteredModel, configured: str | None) -> str:
    """The baseline to compare `candidate` with: `configured` (``FTBOT_EVAL_BASELINE``) or its base model.

    ``base`` (or nothing) means the candidate's own base model on the same back end; ``openai:<model>`` or a bare
    OpenAI model name means that OpenAI model; a registered model's name means that model; anything else is a
    local base model (a directory or a Hugging Face id).
    """
    value = (configured or "").strip()
    if not value or value.lower() == BASE:
        prefix = OPENAI_PREFIX if candidate.backend == "openai" else LOCAL_PREFIX
        return prefix + candidate.base_model
    if value.startswith((OPENAI_PREFIX, LOCAL_PREFIX)):
        return value
    try:
        return get_model(db, value).name
    except ModelNotFound:
        pass
    return (OPENAI_PREFIX if value.startswith(_OPENAI_NAMES) else LOCAL_PREFIX) + value


@dataclass(frozen=True)
class RoundGeneration:
    round_id: int
    answered: dict[str, int]  # model name → answers written by this call
    prompt_tokens: dict[str, int]
    completion_tokens: dict[str, int]


def generate_round(
    db: Database,
    round_id: int,
    *,
    settings: GenerationSettings | None = None,
    openai_client: OpenAI | None = None,
    openai_max_retries: int = DEFAULT_OPENAI_MAX_RETRIES,
    progress: Callable[[str, int, int], None] | None = None,
    local_generators: dict[str, LocalGenerator] | None = None,
) -> RoundGeneration:
    """Answer every comparison of the round that still lacks a model's answer, for both models.

    ``settings``: ``GenerationSettings.from_settings(...)`` (None: the defaults); ``openai_client``: the client to
    use, else one that retries ``openai_max_retries`` times."""
    settings = settings or GenerationSettings()
    round_ = get_round(db, round_id)
    answered: dict[str, int] = {}
    prompt_tokens: dict[str, int] = {}
    completion_tokens: dict[str, int] = {}
    for name in (round_.candidate_model, round_.baseline_model):
        spec = model_spec(db, name)
        missing = [
            c for c in round_comparisons(db, round_id)
            if not (c.answer_a if c.model_a == name else c.answer_b)
        ]
        if not missing:
            answered[name] = 0
            continue
        prompts = [c.prompt for c in missing]
        total = len(prompts)

        def report(done: int, _name: str = name, _total: int = total) -> None:
            if progress is not None:
                progress(_name, done, _total)

        if spec.backend == "openai":
            finished = 0

            def one_done(_index: int) -> None:
                nonlocal finished
                finished += 1
                report(finished)

            generations = generate_openai(spec.model, prompts, settings, client=openai_client,
                                          max_retries=openai_max_retries, on_done=one_done)
        else:
            generator = (local_generators or {}).get(name) or LocalGenerator(spec.model, spec.adapter)
            generations = generator.generate(prompts, settings, on_batch=report)
        # An empty answer would look "missing" forever and confuse voters: say so explicitly.
        answers = {stored_id(c): g.text or "(no answer)" for c, g in zip(missing, generations, strict=True)}
        set_answers(db, round_id, name, answers)
        answered[name] = len(missing)
        prompt_tokens[name] = sum(g.prompt_tokens for g in generations)
        completion_tokens[name] = sum(g.completion_tokens for g in generations)
    return RoundGeneration(round_id, answered, prompt_tokens, completion_tokens)


def round_needs_worker(db: Database, round_id: int) -> bool:
    """True when a side runs locally (torch must stay out of the bot process)."""
    round_ = get_round(db, round_id)
    return any(model_spec(db, n).backend == "local" for n in (round_.candidate_model, round_.baseline_model))


def log_path(round_id: int) -> Path:
    return ftbot_home() / "evals" / str(round_id) / "generate.log"


def worker_command(round_id: int, *, python: str | None = None) -> list[str]:
    return [python or sys.executable, "-m", "trainers.evaluation.generation", "--round", str(round_id)]


def spawn_generation(round_id: int, *, database_url: str, env: dict[str, str] | None = None,
                     settings: Settings | None = None, created_at: datetime | None = None) -> WorkerHandle:
    """Start the generation worker for a round: a Ray job when ``FTBOT_RAY_ADDRESS`` is set (``created_at``, the
    round's, names it), else a child process whose output goes to the round's log file. Wait on it with ``poll()``."""
    cluster = RayCluster.from_settings(settings)
    if cluster is not None:
        # `/ft eval resume` runs a round's worker again: a new attempt, unless one is still running (then it is watched).
        job_id = cluster.submit_attempt(
            submission_id(WorkKind.GENERATION, round_id, created_at or utcnow()), "trainers.evaluation.generation",
            ["--round", str(round_id)], database_url=database_url,
            metadata={"ftbot_round": str(round_id), "kind": WorkKind.GENERATION.value})
        return RayWork(cluster, job_id)
    path = log_path(round_id)
    path.parent.mkdir(parents=True, exist_ok=True)
    child_env = worker_environment(database_url, env)
    child_env.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")  # keeps download progress bars out of the log
    with path.open("ab") as handle:
        return subprocess.Popen(
            worker_command(round_id), stdout=handle, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
            env=child_env, cwd=str(PACKAGE_ROOT),
        )


def read_log_tail(round_id: int, max_chars: int = 1500, *, worker: WorkerHandle | None = None) -> str:
    """The end of the round's worker log (Ray's log for a Ray job), without credentials an error body may have echoed."""
    if isinstance(worker, RayWork):
        return scrub_credentials(worker.log_tail(max_chars))
    try:
        text = log_path(round_id).read_text(encoding="utf-8", errors="replace")
    except OSError:
        return ""
    return scrub_credentials(text[-max_chars:])


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m trainers.evaluation.generation", description=__doc__.splitlines()[0])
    parser.add_argument("--round", type=int, required=True, dest="round_id")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")
    db = Database.open(migrate=False)
    try:
        # Read here, inside the try: a wrong setting fails the round with a message, like any other error.
        settings = Settings.from_env()
        result = generate_round(
            db, args.round_id, settings=GenerationSettings.from_settings(settings),
            openai_max_retries=settings.openai_max_retries,
            progress=lambda name, done, total: log.info("%s: %d/%d answered", name, done, total),
        )
        log.info("round %d done: %s", args.round_id, result.answered)
        return 0
    except Exception as error:
        log.exception("generation for round %d failed", args.round_id)
        move_round(db, args.round_id, RoundStatus.FAILED, from_status=RoundStatus.GENERATING)
        print(f"error: {error}", file=sys.stderr)
        return 1
    finally:
        db.close()


if __name__ == "__main__":
    raise SystemExit(main())

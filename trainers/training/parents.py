"""Where a DPO job starts: the team's fine-tuned model the votes judged, or (asked for) the plain base model."""

from __future__ import annotations

from dataclasses import dataclass

from storage.db import Database
from storage.errors import ConfigError
from storage.jobs import active_model, get_model, list_models
from storage.models import RegisteredModel

FROM_BASE = "base"  # `--from base`: DPO on the plain base model, not on a fine-tuned one


@dataclass(frozen=True)
class Parent:
    """Where a DPO job starts: a registered fine-tuned model (``model``), or the base model (``model`` None)."""

    model: RegisteredModel | None
    note: str


def dpo_parent(db: Database, backend: str, choice: str | None = None) -> Parent:
    """The model a DPO job continues from: the votes judged the team's fine-tuned model, so DPO must move *that*
    policy (and use it as the reference), not the plain base model.

    ``choice``: a registered model's name (or id), ``base`` for the plain base model, or None for the default:
    the model in use (``/ft use``) when it is on this back end, else the newest model a job of this back end
    registered, else the base model (the note says why).
    """
    if choice and choice.strip().lower() == FROM_BASE:
        return Parent(None, "starts from the base model (--from base)")
    if choice:
        chosen = get_model(db, choice)
        if chosen.backend != backend:
            raise ConfigError(
                f"{chosen.name} is an {chosen.backend} model and this job trains on {backend}: DPO continues a model "
                f"of the same back end. Pick one with --from NAME (`/ft models` lists them) or use --from base."
            )
        return Parent(chosen, f"continues from {chosen.name} (chosen)")
    active = active_model(db)
    if active is not None and active.backend == backend:
        return Parent(active, f"continues from {active.name} (the model in use)")
    # Team-registered baselines (no job) are not fine-tuned models; OpenAI parents are ft: ids.
    trained = [m for m in list_models(db) if m.backend == backend and m.job_id is not None
               and (backend != "openai" or m.location.startswith("ft:"))]
    skipped = f" (the model in use, {active.name}, is an {active.backend} model)" if active is not None else ""
    if trained:
        return Parent(trained[0], f"continues from {trained[0].name}, the newest {backend} model{skipped}")
    return Parent(None, f"starts from the base model: no fine-tuned {backend} model is registered yet{skipped}")

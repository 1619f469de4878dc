"""Which model drafts, and getting it ready when a trainer chooses it (`/ft use`)."""

from __future__ import annotations

from typing import TYPE_CHECKING

from bot import blocks as bk
from storage.artifacts import artifact_exists
from storage.errors import ArtifactError, FtbotError
from storage.jobs import active_model, list_models
from storage.models import RegisteredModel
from trainers.drafts.generate import RUNS_ON_PREM

if TYPE_CHECKING:  # bot.app imports every feature (so this module): a type-only import avoids the cycle
    from bot.app import BotContext


def drafting_model(bot: BotContext) -> tuple[RegisteredModel, str | None]:
    """The model in use; with none chosen, the newest registered model and a note saying so (as `/ft eval` does)."""
    model = active_model(bot.db)
    if model is not None:
        return model, None
    models = list_models(bot.db)  # newest first
    if not models:
        raise FtbotError("There is no model to draft with yet: train one (`/ft train`), then a trainer chooses it "
                         "with `/ft use <model>`.")
    return models[0], (f":information_source: No model is in use, so this draft comes from the newest one, "
                       f"*{bk.escape(models[0].name)}*; a trainer chooses the model with `/ft use &lt;model&gt;`.")


def activation_line(bot: BotContext, model: RegisteredModel) -> str | None:
    """Get ``model`` ready for drafts (load it where drafts run); a line for the trainer, or None. Slow: defer it."""
    embedded = model.backend in RUNS_ON_PREM and not bot.settings.inference_url
    try:
        # Never start the drafting process for an adapter it cannot load: a directory here, or a finished upload in
        # the shared artifact store (the drafting process downloads it).
        missing = embedded and not artifact_exists(model.location, bot.settings)
    except ArtifactError as error:
        return f":warning: Drafts cannot use {bk.escape(model.name)}: {bk.escape(str(error))}"
    if missing:
        return (f":warning: Drafts cannot use {bk.escape(model.name)} on this machine: its adapter "
                f"`{bk.escape(model.location)}` is not here.")
    try:
        line = bot.draft_service().activate(model)
    except FtbotError as error:
        return f":warning: Drafts cannot use {bk.escape(model.name)} yet: {bk.escape(str(error))}"
    return bk.escape(line) if line else None

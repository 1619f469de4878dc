"""``/ft eval score [model]``: a model's held-out loss next to its baseline's, privately to the trainer who asked.

Scoring loads the model, so it runs in a worker process (``python -m trainers.evaluation.score``) after the ack; the
answer comes back through the command's response URL.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from bot import blocks as bk
from bot.commands import CommandContext
from storage.config import Settings
from storage.errors import FtbotError
from storage.jobs import get_model
from storage.vocabulary import TrainingBackend
from trainers.evaluation.score import ScoreUnavailable, loss_line, model_to_score, score_in_worker

if TYPE_CHECKING:  # bot.app imports every feature (so this module): a type-only import avoids the cycle
    from bot.app import BotContext

USAGE = "`/ft eval score [model]` (default: the model in use, else the newest)"


def score_command(bot: BotContext, ctx: CommandContext) -> None:
    if not bot.roles.may_train(ctx.user_id):
        raise FtbotError("only trainers can score models (FTBOT_TRAINERS); ask an ftbot admin.")
    args = ctx.args[1:]  # after "score"
    if len(args) > 1:
        raise FtbotError(f"Usage: {USAGE}")
    model = get_model(bot.db, args[0]) if args else model_to_score(bot.db, None)
    if model.backend == TrainingBackend.OPENAI:
        raise FtbotError(f"*{bk.escape(model.name)}* is an OpenAI model: OpenAI gives log-probabilities only of text the "
                         "model writes, not of your team's replies, so its held-out loss cannot be measured. "
                         "Compare it with `/ft eval` instead.")
    ctx.respond(bk.escape(f"Scoring {model.name} and its baseline on held-out replies… (about a minute)"))
    url = bot.db.engine.url.render_as_string(hide_password=False)
    bot.defer(_score_and_answer, ctx, model.name, url, bot.settings)


def _score_and_answer(ctx: CommandContext, name: str, database_url: str, settings: Settings) -> None:
    try:
        report = score_in_worker(name, database_url=database_url, settings=settings)
    except (ScoreUnavailable, TimeoutError) as error:
        ctx.respond(bk.escape(f"Could not score {name}: {error}"))
        return
    verdict = ("learned the team's replies: worth a round of votes (`/ft eval`)" if report.relative_change < -0.02
               else "barely moved from its baseline: more or better examples may help before a round of votes")
    line = (f"{report.model} vs {report.baseline}: {loss_line(report.loss, report.baseline_loss)} on {report.prompts} "
            f"held-out replies ({report.tokens:,} tokens); it {verdict}.")
    ctx.respond(bk.escape(line), blocks=[bk.section(f":straight_ruler: {bk.escape(line)}")])

"""``/ft eval`` and its subcommands, and ``/ft results``.

``/ft eval [model] [--n 20] [--parallel]`` starts a round: the candidate (the named model, the one marked with ``/ft use``, else
the newest registered one), the baseline (``FTBOT_EVAL_BASELINE``; by default the model the candidate started from)
and the held-out questions; while another round is open for voting in the channel only with ``--parallel``.
``close``, ``resume`` and ``cancel`` end voting, finish a round a restart interrupted, or discard a round (an open
one too: its votes never count and its models stay hidden); ``add`` is in ``bot.evaluation.questions``.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import TYPE_CHECKING

from bot import blocks as bk
from bot.access import RESULTS_OPEN, require
from bot.commands import CommandContext, int_arg
from bot.evaluation.questions import add_question
from bot.evaluation.quotes import generation_cost, generation_quote
from bot.evaluation.rounds import close_and_report, close_due_rounds, is_in_flight, post_results, post_round, run_round
from bot.evaluation.score import score_command
from bot.evaluation.views import results_blocks
from bot.threads import UserNames
from storage import eval_prompts, evals
from storage.errors import FtbotError
from storage.evals import RoundStatus
from storage.jobs import ModelNotFound, active_model, get_model, list_models
from storage.models import EvalRound, RegisteredModel, stored_id
from storage.vocabulary import TrainingBackend
from trainers.evaluation.generation import BASE, baseline_name, display_name, model_spec, registered_spec
from trainers.evaluation.results import resolve_round, round_report

if TYPE_CHECKING:  # bot.app imports every feature (so this module): a type-only import avoids the cycle
    from bot.app import BotContext

DEFAULT_N = 20
MAX_N = 200
_start_lock = threading.Lock()


def eval_command(bot: BotContext, ctx: CommandContext) -> None:
    """``/ft eval``: start a round, or the subcommand named first."""
    sub = ctx.args[0].lower() if ctx.args else ""
    if sub in EVAL_SUBCOMMANDS:
        EVAL_SUBCOMMANDS[sub](bot, ctx)
    else:
        model, n, parallel = parse_eval_args(ctx.args)
        start_round(bot, ctx, model, n, parallel=parallel)


# --- arguments ------------------------------------------------------------------------------------------------------


def parse_eval_args(args: list[str]) -> tuple[str | None, int, bool]:
    """``[model] [--n 20] [--parallel]`` → (model, n, parallel)."""
    model: str | None = None
    n = DEFAULT_N
    parallel = False
    i = 0
    while i < len(args):
        arg = args[i]
        if arg == "--parallel":
            parallel, i = True, i + 1
            continue
        if arg in ("--n", "-n") or arg.startswith("--n="):
            raw = arg.split("=", 1)[1] if "=" in arg else (args[i + 1] if i + 1 < len(args) else "")
            i += 1 if "=" in arg else 2
            n = int_arg(raw, "--n (the number of questions)", high=MAX_N, usage="/ft eval [model] [--n 20] [--parallel]")
            continue
        if arg.startswith("-"):
            raise FtbotError(f"unknown option `{arg}`. Usage: `/ft eval [model] [--n 20] [--parallel]`")
        if model is not None:
            raise FtbotError("name one model at most. Usage: `/ft eval [model] [--n 20] [--parallel]`")
        model = arg
        i += 1
    return model, n, parallel


def parse_round_arg(args: list[str]) -> int | None:
    """The round number among the arguments (``12`` or ``#12``), if any."""
    for arg in args:
        if arg.lstrip("#").isdigit():  # any digits, so that one out of range is told, not taken for a model name
            return int_arg(arg, "the round number")
    return None


# --- starting a round -----------------------------------------------------------------------------------------------


def _candidate(bot: BotContext, name: str | None) -> RegisteredModel:
    if name:
        return get_model(bot.db, name)
    model = active_model(bot.db)
    if model is None:
        models = list_models(bot.db)  # newest first
        model = models[0] if models else None
    if model is None:
        raise FtbotError("there is no trained model to evaluate yet: train one with `/ft train`, then run `/ft eval`.")
    return model


def choose_baseline(bot: BotContext, candidate: RegisteredModel) -> str:
    """``FTBOT_EVAL_BASELINE``; by default (``base``) the model the candidate started from: for a DPO model that
    continued a fine-tuned one, that parent — the votes must say whether DPO improved on it — else its base model."""
    configured = bot.settings.eval_baseline
    parent = (candidate.metrics or {}).get("parent_model")
    if parent and (configured or BASE).strip().lower() == BASE:
        try:
            return get_model(bot.db, parent).name
        except ModelNotFound:
            pass  # the parent was removed: its merged weights are the candidate's base model, compared below
    return baseline_name(bot.db, candidate, configured)


def _refuse_if_preparing(bot: BotContext, channel: str, *, parallel: bool = False) -> None:
    """One round in preparation per channel, and one open for voting unless ``parallel``: say which, and how to
    close or discard it."""
    if not parallel:
        voting = [r for r in evals.list_rounds(bot.db, statuses=(RoundStatus.OPEN,)) if r.channel == channel]
        if voting:
            last = voting[-1]
            raise FtbotError(f"round #{last.id} is open for voting in this channel: `/ft eval close {last.id}` ends voting "
                             f"and posts its results, `/ft eval cancel {last.id}` discards it (its votes never count). "
                             "To run another round alongside it, add `--parallel` to `/ft eval`.")
    preparing = (RoundStatus.QUOTED, RoundStatus.GENERATING, RoundStatus.POSTING)
    busy = [r for r in evals.list_rounds(bot.db, statuses=preparing) if r.channel == channel]
    if not busy:
        return
    last = busy[-1]
    if last.status != RoundStatus.QUOTED and not is_in_flight(bot, stored_id(last)):
        raise FtbotError(f"round #{last.id} stopped while {last.status} (was ftbot restarted?): "
                         f"`/ft eval resume {last.id}` finishes it, `/ft eval cancel {last.id}` drops it.")
    raise FtbotError(f"round #{last.id} is still being prepared in this channel ({last.status}); "
                     f"wait for it to be posted, or `/ft eval cancel {last.id}`.")


def start_round(bot: BotContext, ctx: CommandContext, model_name: str | None, n: int, *, parallel: bool = False) -> EvalRound:
    """Create the round and either ask to confirm the OpenAI cost or start generating."""
    if not bot.roles.may_train(ctx.user_id):
        raise FtbotError("only trainers can start an evaluation round (FTBOT_TRAINERS); ask an ftbot admin.")
    close_due_rounds(bot)
    _refuse_if_preparing(bot, ctx.channel_id, parallel=parallel)
    candidate = _candidate(bot, model_name)
    baseline = choose_baseline(bot, candidate)
    items = eval_prompts.eval_items(bot.db, candidate, limit=n)
    if not items:
        raise FtbotError(
            f"there are no held-out questions for {candidate.name}: its snapshot has no validation questions it did not "
            "train on. Add some with `/ft eval add <message link>` (or `/ft eval add <question>`)."
        )
    specs = [registered_spec(candidate), model_spec(bot.db, baseline)]
    paid = [spec for spec in specs if spec.backend == TrainingBackend.OPENAI]
    # Price the round before creating it: an estimate that fails leaves nothing half-made behind.
    quote_lines, quote_total = generation_cost(paid, items, bot.settings) if paid else ([], "")
    with _start_lock:  # a double-submitted /ft eval must not create two rounds
        _refuse_if_preparing(bot, ctx.channel_id, parallel=parallel)
        round_ = evals.create_round(
            bot.db, candidate_model=candidate.name, baseline_model=baseline, prompts=[item.prompt for item in items],
            channel=ctx.channel_id, created_by=ctx.user_id, status=RoundStatus.QUOTED if paid else RoundStatus.GENERATING,
        ).example
    round_id = stored_id(round_)
    who = f"*{len(items)}* questions, {bk.escape(display_name(candidate.name))} vs {bk.escape(display_name(baseline))}"
    if not paid:
        ctx.respond(f"Round #{round_id}: {len(items)} questions. Generating answers locally; the blind comparisons "
                    "will be posted in this channel.", blocks=[bk.section(f":hourglass_flowing_sand: Round #{round_id}: {who}. "
                    "Generating answers locally; the blind comparisons will be posted here.")])
        bot.defer(run_round, bot, round_id, started_by=ctx.user_id)
        return round_

    text, blocks = generation_quote(round_id, len(items), who, quote_lines, quote_total, bot.settings)
    ctx.respond(text, blocks=blocks)
    return round_


# --- close, resume, cancel, results ---------------------------------------------------------------------------------


def _votable_round(bot: BotContext, channel: str, round_id: int | None) -> EvalRound:
    if round_id is not None:
        return evals.get_round(bot.db, round_id)
    round_ = evals.latest_round(bot.db, channel=channel, statuses=RoundStatus.VOTABLE) or evals.latest_round(
        bot.db, statuses=RoundStatus.VOTABLE)
    if round_ is None:
        raise FtbotError("no evaluation round is open for voting; start one with `/ft eval`.")
    return round_


def close_command(bot: BotContext, ctx: CommandContext) -> None:
    if not bot.roles.may_train(ctx.user_id):
        raise FtbotError("only trainers can close an evaluation round (FTBOT_TRAINERS).")
    round_ = _votable_round(bot, ctx.channel_id, parse_round_arg(ctx.args[1:]))
    if not close_and_report(bot, stored_id(round_), closed_by=ctx.user_id):
        raise FtbotError(f"round #{round_.id} is {round_.status}, not open for voting; `/ft results {round_.id}` shows it.")
    ctx.respond(f"Closed round #{round_.id}; the results are posted in the channel.")


def resume_command(bot: BotContext, ctx: CommandContext) -> None:
    """Finish a round a restart interrupted: generation is resumable, posting skips what is already posted."""
    if not bot.roles.may_train(ctx.user_id):
        raise FtbotError("only trainers can resume an evaluation round (FTBOT_TRAINERS).")
    round_id = parse_round_arg(ctx.args[1:])
    if round_id is None:
        raise FtbotError("usage: `/ft eval resume <round>`")
    round_ = evals.get_round(bot.db, round_id)
    if is_in_flight(bot, round_id):
        raise FtbotError(f"round #{round_id} is being prepared right now.")
    if round_.status == RoundStatus.FAILED and any(not c.message_ts for c in evals.round_comparisons(bot.db, round_id)):
        # Generation failed (a model that could not load, OpenAI down): answers already written are kept.
        evals.move_round(bot.db, round_id, RoundStatus.GENERATING, from_status=RoundStatus.FAILED)
        round_ = evals.get_round(bot.db, round_id)
    if round_.status == RoundStatus.GENERATING:
        ctx.respond(f"Resuming round #{round_id}: answering the remaining questions, then posting.")
        run_round(bot, round_id, started_by=ctx.user_id)
    elif round_.status == RoundStatus.POSTING:
        ctx.respond(f"Resuming round #{round_id}: posting the comparisons not posted yet.")
        post_round(bot, round_id, started_by=ctx.user_id, resume=True)
    else:
        raise FtbotError(f"round #{round_id} is {round_.status}: there is nothing to resume.")


def cancel_command(bot: BotContext, ctx: CommandContext) -> None:
    if not bot.roles.may_train(ctx.user_id):
        raise FtbotError("only trainers can cancel an evaluation round (FTBOT_TRAINERS).")
    round_id = parse_round_arg(ctx.args[1:])
    if round_id is None:
        raise FtbotError("usage: `/ft eval cancel <round>` (`/ft eval close` ends voting on an open round)")
    if is_in_flight(bot, round_id):
        raise FtbotError(f"round #{round_id} is being prepared right now; cancel it once it is posted or failed.")
    discardable = (RoundStatus.QUOTED, RoundStatus.GENERATING, RoundStatus.POSTING, RoundStatus.OPEN, RoundStatus.FAILED)
    was = evals.get_round(bot.db, round_id).status
    if not evals.move_round(bot.db, round_id, RoundStatus.CANCELLED, from_status=discardable):
        status = evals.get_round(bot.db, round_id).status
        raise FtbotError(f"round #{round_id} is {status}; only rounds that are not closed yet can be cancelled.")
    if was == RoundStatus.OPEN:
        ctx.respond(f"Round #{round_id} cancelled: voting on it stopped, its votes never count (no result, no preference "
                    "pairs, no leaderboard) and its models are never revealed. `/ft eval` starts a new round.")
    else:
        ctx.respond(f"Round #{round_id} cancelled.")


def results_command(bot: BotContext, ctx: CommandContext) -> None:
    """``/ft results [round]``: posted in the channel once voting closed, else an interim tally to the asker only."""
    round_id = parse_round_arg(ctx.args)
    if len(ctx.args) > 1 or (ctx.args and round_id is None):
        raise FtbotError("Usage: `/ft results [round]`: a round number like `12` (`/ft results` alone: this channel's latest).")
    close_due_rounds(bot)
    round_ = resolve_round(bot.db, round_id, channel=ctx.channel_id)
    if round_.status == RoundStatus.CANCELLED:
        raise FtbotError(f"round #{round_.id} was cancelled: it has no result, its votes never count and its models stay "
                         "hidden. `/ft eval` starts a new round.")
    if round_.status == RoundStatus.CLOSED:
        post_results(bot, stored_id(round_), channel=ctx.channel_id)
        ctx.respond(f"Posted the results of round #{round_.id}.")
        return
    # Still open: interim numbers to the asker only, model names hidden, so the tally does not sway the voters.
    # Only the team may see them (the middleware cannot tell an open round from a closed one).
    require(bot.roles, ctx.user_id, RESULTS_OPEN)
    report = round_report(bot.db, round_.id)
    text, view = results_blocks(report, name_of=UserNames(ctx.client), note="Interim result, only visible to you. "
                                "`/ft eval close` ends voting, reveals the models and posts the result with its chart.")
    ctx.respond(text, blocks=view)


# ``/ft eval <word>`` subcommands (each has its own rule in ``bot.access.POLICY``); any other word is a model name.
EVAL_SUBCOMMANDS: dict[str, Callable[[BotContext, CommandContext], None]] = {
    "add": add_question, "close": close_command, "resume": resume_command, "cancel": cancel_command,
    "score": score_command,
}

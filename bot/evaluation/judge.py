"""``/ft judge [round] [--model …]``: score a round with an LLM judge and compare it with the voters.

Judging calls OpenAI, so it first quotes the cost with Judge / Cancel; the quote has its own id, and whichever button
is clicked first claims it, so a double click judges once. The judging itself is ``trainers.evaluation.judge``.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from slack_bolt import Respond

from bot import blocks as bk
from bot.commands import CommandContext
from bot.evaluation.commands import parse_round_arg
from bot.evaluation.quotes import estimate_line, evaluation_quote_blocks
from bot.payloads import button_json
from storage.errors import FtbotError
from storage.evals import RoundStatus
from storage.events import claim_event
from storage.models import stored_id
from trainers.data.pricing import load_price_table
from trainers.evaluation.judge import (
    JUDGE_MAX_TOKENS,
    estimate_judge_cost,
    judge_round,
)
from trainers.evaluation.results import resolve_round, round_report
from trainers.training.jobs import openai_key_missing

if TYPE_CHECKING:  # bot.app imports every feature (so this module): a type-only import avoids the cycle
    from bot.app import BotContext

JUDGE_ACTION = "ft_judge_run"
JUDGE_CANCEL_ACTION = "ft_judge_cancel"


def judge_command(bot: BotContext, ctx: CommandContext) -> None:
    """Quote what judging a round costs (OpenAI), with Judge / Cancel; nothing is spent before Judge."""
    if not bot.roles.may_train(ctx.user_id):
        raise FtbotError("only trainers can run the LLM judge (it calls OpenAI); ask an ftbot admin.")
    model = bot.settings.judge_model
    args = list(ctx.args)
    if "--model" in args:
        index = args.index("--model")
        if index + 1 >= len(args):
            raise FtbotError("`--model` needs a model name, e.g. `/ft judge --model gpt-4.1-2025-04-14`")
        model = args[index + 1]
        del args[index : index + 2]
    round_id = parse_round_arg(args)  # a bad argument is told first
    if openai_key_missing(bot.openai_client):
        raise FtbotError("the LLM judge calls OpenAI, which is not configured: an admin sets `OPENAI_API_KEY` in the bot's "
                         "environment and restarts it. The votes in `/ft results` need no key.")
    round_ = resolve_round(bot.db, round_id, channel=ctx.channel_id)
    if round_.status not in RoundStatus.WITH_RESULTS:
        raise FtbotError(f"round #{round_.id} is {round_.status}: there are no posted answers to judge.")
    estimate = estimate_judge_cost(bot.db, stored_id(round_), model, prices=load_price_table(bot.settings.prices_file))
    if not estimate.prompts:
        raise FtbotError(f"round #{round_.id} has no question with both answers to judge.")
    questions = estimate.prompts // 2
    priced = estimate.max_usd is not None
    cost = f"at most ${estimate.max_usd:.4f}" if priced else f"an unknown amount (no price for {model} in the table)"
    # The quote's own id: Judge and Cancel both claim it, so only the first click of either does anything.
    value = json.dumps({"round": round_.id, "model": model, "quote": uuid.uuid4().hex}, separators=(",", ":"))
    # The model is whatever was typed after --model: escaped in the notification text as in the blocks.
    text = bk.escape(f"Judging round #{round_.id} with {model}: {questions} questions, each judged twice (answers swapped), "
                     f"costs {cost}. Judge or cancel?")
    blocks = evaluation_quote_blocks(
        f"Round #{round_.id}: judging *{questions}* questions twice (answers swapped) with `{bk.escape(model)}` "
        f"costs {f'at most *${estimate.max_usd:.4f}*' if priced else '*an unknown amount*'}:\n"
        + estimate_line(estimate),
        f"input tokens counted on the exact judge prompts, output at its limit of {JUDGE_MAX_TOKENS} tokens per call.",
        confirm=("Judge", JUDGE_ACTION), cancel_action=JUDGE_CANCEL_ACTION, value=value, block_id=f"judge_quote_{round_.id}",
        settings=bot.settings,
    )
    ctx.respond(text, blocks=blocks)


def _judge_button(action: dict[str, Any]) -> tuple[int, str, str]:
    """(round id, judge model, quote id) from a Judge / Cancel button."""
    value = button_json(action, round=int, model=str, quote=str)
    return int(value["round"]), value["model"], value["quote"]


def _claim_judge_quote(bot: BotContext, quote: str) -> bool:
    return claim_event(bot.db, f"judge_quote:{quote}")


def accept_judge_quote(bot: BotContext, body: dict[str, Any], action: dict[str, Any], respond: Respond) -> None:
    """The Judge button: judge the round (once) in the background and replace the quote with the result."""
    user = (body.get("user") or {}).get("id")
    if not bot.roles.may_train(user):
        respond(text="Only trainers can run the LLM judge (FTBOT_TRAINERS).", response_type="ephemeral",
                replace_original=False)
        return
    round_id, model, quote = _judge_button(action)
    if not _claim_judge_quote(bot, quote):
        respond(text=f"That quote for judging round #{round_id} was already used or cancelled; `/ft judge` makes a new one.",
                response_type="ephemeral", replace_original=False)
        return
    respond(text=f"Judging round #{round_id} with {bk.escape(model)} (each question twice, answers swapped)…",
            replace_original=True)

    def say(text: str, blocks: list[bk.Block] | None) -> None:
        respond(text=bk.fallback(bk.escape(text)), blocks=blocks, replace_original=True)

    bot.defer(run_judge, bot, round_id, model, say)


def cancel_judge_quote(bot: BotContext, action: dict[str, Any], respond: Respond) -> None:
    """The Cancel button of a judge quote: nothing was spent."""
    round_id, _, quote = _judge_button(action)
    if _claim_judge_quote(bot, quote):
        respond(text=f"Judging round #{round_id} cancelled. Nothing was spent.", replace_original=True)
    else:
        respond(text=f"That quote for judging round #{round_id} was already used or cancelled.",
                response_type="ephemeral", replace_original=False)


def run_judge(bot: BotContext, round_id: int, model: str, say: Callable[[str, list[bk.Block] | None], None]) -> None:
    """Judge the round (the slow part: two OpenAI calls per question) and tell the result through `say`: a plain-text
    line (the caller escapes it for Slack) and its blocks."""
    try:
        run = judge_round(bot.db, round_id, model=model, client=bot.openai_client, max_retries=bot.settings.openai_max_retries)
    except FtbotError as error:
        line = f"Judging round #{round_id} with {model} stopped: {error}"
        say(line, [bk.section(":warning: " + bk.escape(line))])
        return
    report = round_report(bot.db, round_id)
    agreement = next((j for j in report.judges if j.judge_model == model), None)
    line = (f"{model} judged {run.judged} questions; {run.consistent} verdicts held in both orders "
            f"(the others count as ties).")
    if agreement is not None:
        rate = "n/a" if agreement.rate is None else f"{agreement.rate:.0%}"
        line += (f" For the candidate: {agreement.judge_wins} wins, {agreement.judge_losses} losses, {agreement.judge_ties} ties."
                 f" Agreement with the voters: {agreement.agreed}/{agreement.compared} decided questions ({rate}).")
    say(line, [bk.section(":scales: " + bk.escape(line))])

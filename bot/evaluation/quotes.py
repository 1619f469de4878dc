"""The cost quote shown before the evaluation spends money on OpenAI, and the Post / Cancel buttons of a round's quote.

Generating a round's answers with OpenAI is quoted here (Post / Cancel); judging a round reuses the same quote layout
(``bot.evaluation.judge``, Judge / Cancel). Nothing is spent before the confirm button, and its handler claims the
quote, so a double click runs once.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from slack_bolt import Respond

from bot import blocks as bk
from bot.evaluation.rounds import run_round
from bot.payloads import button_int
from storage import evals
from storage.config import Settings
from storage.eval_prompts import EvalItem
from storage.evals import RoundStatus
from trainers.data.pricing import load_price_table
from trainers.evaluation.inference import (
    CostEstimate,
    GenerationSettings,
    ModelSpec,
    estimate_openai_cost,
    mean_answer_tokens,
)

if TYPE_CHECKING:  # bot.app imports every feature (so this module): a type-only import avoids the cycle
    from bot.app import BotContext

POST_ACTION = "ft_eval_post"
CANCEL_ACTION = "ft_eval_cancel"


def estimate_line(estimate: CostEstimate) -> str:
    """One line of a cost quote for one model."""
    name = f"`{bk.escape(estimate.model)}`"
    if estimate.expected_usd is None or estimate.max_usd is None:
        return (f"• {name}: {estimate.input_tokens:,} input tokens, up to {estimate.max_output_tokens:,} output tokens "
                "— *no price in the table*")
    if estimate.expected_output_tokens >= estimate.max_output_tokens:  # priced at the full output allowance
        return (f"• {name}: {estimate.input_tokens:,} input + up to {estimate.max_output_tokens:,} output tokens: "
                f"at most *${estimate.max_usd:.4f}*")
    return (f"• {name}: {estimate.input_tokens:,} input + ~{estimate.expected_output_tokens:,} output tokens "
            f"≈ *${estimate.expected_usd:.4f}* (at most ${estimate.max_usd:.4f})")


def generation_cost(paid: list[ModelSpec], items: list[EvalItem], settings: Settings) -> tuple[list[str], str]:
    """(one line per OpenAI model, the total) for generating answers to `items`."""
    generation = GenerationSettings.from_settings(settings)
    prices = load_price_table(settings.prices_file)
    prompts = [item.prompt for item in items]
    lines = []
    expected_total = maximum_total = 0.0
    unknown = False
    for spec in paid:
        estimate = estimate_openai_cost(
            spec.model, prompts, generation,
            expected_answer_tokens=mean_answer_tokens([i.reference or "" for i in items], spec.model),
            prices=prices,
        )
        lines.append(estimate_line(estimate))
        if estimate.expected_usd is None or estimate.max_usd is None:
            unknown = True
            continue
        expected_total += estimate.expected_usd
        maximum_total += estimate.max_usd
    total = f"≈ *${expected_total:.4f}* (at most ${maximum_total:.4f})" + (" plus unpriced models" if unknown else "")
    return lines, total


def evaluation_quote_blocks(summary: str, footnote: str, *, confirm: tuple[str, str], cancel_action: str, value: str,
                            block_id: str, settings: Settings) -> list[bk.Block]:
    """The ephemeral cost quote of OpenAI calls an evaluation makes (generating a round's answers, judging a round):
    what it costs, where the prices come from, and confirm / Cancel buttons."""
    label, action_id = confirm
    return [
        bk.section(f":moneybag: {summary}"),
        bk.context(f"Prices as of {bk.escape(load_price_table(settings.prices_file).as_of)} (trainers/data/prices.toml); {footnote}"),
        bk.actions(
            bk.button(label, action_id, value, style="primary"),
            bk.button("Cancel", cancel_action, value),
            block_id=block_id,
        ),
    ]


def generation_quote(round_id: int, questions: int, who: str, lines: list[str], total: str,
                     settings: Settings) -> tuple[str, list[bk.Block]]:
    """(fallback text, blocks) asking to confirm what generating the round's answers with OpenAI costs."""
    text = (f"Round #{round_id}: generating {questions} answers per model with OpenAI costs "
            f"{total.replace('*', '')}. Post or cancel?")
    blocks = evaluation_quote_blocks(
        f"Round #{round_id}: {who}.\nOpenAI generation costs {total}:\n" + "\n".join(lines),
        "output length is estimated from the team's reference replies.",
        confirm=("Post", POST_ACTION), cancel_action=CANCEL_ACTION, value=str(round_id), block_id=f"eval_quote_{round_id}",
        settings=settings,
    )
    return text, blocks


def post_quoted_round(bot: BotContext, body: dict[str, Any], action: dict[str, Any], respond: Respond) -> None:
    """The Post button: start generating (once) the round the quote was for."""
    user = (body.get("user") or {}).get("id")
    round_id = button_int(action, what="round id")
    if not bot.roles.may_train(user):
        respond(text="Only trainers can start an evaluation round (FTBOT_TRAINERS).", response_type="ephemeral",
                replace_original=False)
        return
    if not evals.move_round(bot.db, round_id, RoundStatus.GENERATING, from_status=RoundStatus.QUOTED):
        status = evals.get_round(bot.db, round_id).status
        respond(text=f"Round #{round_id} is already {status}.", response_type="ephemeral", replace_original=False)
        return
    respond(text=f"Round #{round_id}: generating answers with OpenAI; the comparisons will be posted in the channel.",
            replace_original=True)
    bot.defer(run_round, bot, round_id, started_by=user)


def cancel_quoted_round(bot: BotContext, action: dict[str, Any], respond: Respond) -> None:
    """The Cancel button: drop the quoted round; nothing was generated."""
    round_id = button_int(action, what="round id")
    if evals.move_round(bot.db, round_id, RoundStatus.CANCELLED, from_status=RoundStatus.QUOTED):
        respond(text=f"Round #{round_id} cancelled. Nothing was generated or spent.", replace_original=True)
    else:
        status = evals.get_round(bot.db, round_id).status
        respond(text=f"Round #{round_id} is already {status}.", response_type="ephemeral", replace_original=False)

"""Blind side-by-side evaluation in Slack: ``/ft eval``, emoji votes, ``/ft results``, ``/ft judge``.

The flow of a round:

1. ``/ft eval [model] [--n 20]`` picks the candidate (the named model, the one marked with ``/ft use``, else the
   newest registered one) and the baseline (``FTBOT_EVAL_BASELINE``, by default the candidate's base model, or
   for a DPO model the fine-tuned model it continued), and the held-out questions (the candidate's validation
   split plus ``/ft eval add`` questions, never a prompt it trained on). OpenAI generation costs money, so it first
   shows the estimate with Post / Cancel; local generation starts at once in a worker process (the bot never
   imports torch).
2. Each question is posted as one message: the question, Answer A and Answer B — which model is on which side is
   randomized per comparison, stored, and hidden — and the bot seeds the vote reactions :a: :b: :handshake: :-1:.
   Posting is paced (about one message per second per channel) and retries Slack's 429s.
3. ``reaction_added`` / ``reaction_removed`` on those messages are votes: one per voter per comparison (a new
   reaction moves it; removing the reaction that cast it falls back to another vote reaction the voter still has
   on the message, else withdraws it), skin tones normalised, the bot's own
   reactions ignored, the optional voter allowlist (``FTBOT_VOTERS``) enforced; retried events count once.
4. Voting closes after ``FTBOT_EVAL_HOURS`` (a scheduler job, and lazily on the next event or command) or with
   ``/ft eval close``. Closing reveals the models, posts the results with a chart, and turns every decided
   comparison into a DPO preference pair for ``/ft train --method dpo``.
5. ``/ft judge`` (optional) scores a round with an LLM judge; it calls OpenAI, so like OpenAI generation it first
   shows the cost with Judge / Cancel.

One module per part: ``commands`` (``/ft eval`` and its subcommands, ``/ft results``), ``questions``
(``/ft eval add``), ``score`` (``/ft eval score``), ``quotes`` (the cost quote and its Post / Cancel buttons),
``rounds`` (generating, posting, closing), ``views`` (the messages' layout), ``votes`` (reactions as votes) and
``judge`` (``/ft judge``). This module only connects them to Slack.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Any

from slack_bolt import Ack, App, BoltContext, Respond
from slack_sdk import WebClient

from bot.evaluation import commands, judge, quotes, votes

# Scheduler jobs stored before evaluation became a package name their function "bot.evaluation:close_due_rounds_job";
# a bot restarted on such a database must still find it here.
from bot.evaluation.rounds import close_due_rounds_job

if TYPE_CHECKING:  # bot.app imports every feature (so this module): a type-only import avoids the cycle
    from bot.app import BotContext

log = logging.getLogger(__name__)

__all__ = ["register", "close_due_rounds_job"]


def register(app: App, bot: BotContext) -> None:
    """``/ft eval``, ``/ft results``, ``/ft judge``, the Post/Cancel and Judge/Cancel buttons and the reaction listeners."""
    bot.router.add(
        "eval", usage=("/ft eval [model] [--n 20] [--parallel] · /ft eval add <link|question> · "
               "/ft eval close|resume|cancel [round] · /ft eval score [model]"),
        summary="Blind side-by-side answers of the candidate and the baseline, voted with reactions",
        handler=lambda ctx: commands.eval_command(bot, ctx),
    )
    bot.router.add("results", usage="/ft results [round]",
                   summary="Win rate with 95% interval, sign test, chart; reveals the models once voting closed",
                   handler=lambda ctx: commands.results_command(bot, ctx))
    bot.router.add("judge", usage="/ft judge [round] [--model gpt-4.1]",
                   summary="Score a round with an LLM judge (both answer orders) and compare with the voters",
                   handler=lambda ctx: judge.judge_command(bot, ctx))

    @app.action(quotes.POST_ACTION)
    def on_post(ack: Ack, body: dict[str, Any], action: dict[str, Any], respond: Respond) -> None:
        ack()
        quotes.post_quoted_round(bot, body, action, respond)

    @app.action(quotes.CANCEL_ACTION)
    def on_cancel(ack: Ack, action: dict[str, Any], respond: Respond) -> None:
        ack()
        quotes.cancel_quoted_round(bot, action, respond)

    @app.action(judge.JUDGE_ACTION)
    def on_judge(ack: Ack, body: dict[str, Any], action: dict[str, Any], respond: Respond) -> None:
        ack()
        judge.accept_judge_quote(bot, body, action, respond)

    @app.action(judge.JUDGE_CANCEL_ACTION)
    def on_judge_cancel(ack: Ack, action: dict[str, Any], respond: Respond) -> None:
        ack()
        judge.cancel_judge_quote(bot, action, respond)

    @app.event("reaction_added")
    def on_reaction_added(event: dict[str, Any], client: WebClient, context: BoltContext) -> None:
        outcome = votes.handle_reaction(bot, client, event, added=True, bot_user_id=context.bot_user_id)
        log.debug("reaction_added: %s", outcome)

    @app.event("reaction_removed")
    def on_reaction_removed(event: dict[str, Any], client: WebClient, context: BoltContext) -> None:
        outcome = votes.handle_reaction(bot, client, event, added=False, bot_user_id=context.bot_user_id)
        log.debug("reaction_removed: %s", outcome)

"""``/ft eval add``: a held-out question from a message link (the thread up to the customer's question) or typed text.

Rounds ask these questions besides the candidate's validation split; a question a model trained on is skipped when
evaluating that model, and the reply says which models that is.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from slack_sdk import WebClient

from bot import blocks as bk
from bot.capture import channel_system_prompt
from bot.commands import CommandContext
from bot.evaluation.views import blockquote
from bot.threads import (
    Turn,
    UserNames,
    conversation_turns,
    fetch_thread,
    find_message,
    is_permalink,
    parse_permalink,
    require_member,
    resolve_bot_user_id,
)
from storage import eval_prompts
from storage.errors import FtbotError
from storage.jobs import list_models

if TYPE_CHECKING:  # bot.app imports every feature (so this module): a type-only import avoids the cycle
    from bot.app import BotContext


def question_turns(bot: BotContext, client: WebClient, channel: str, ts: str, thread_ts: str | None,
                   *, bot_user_id: str | None) -> tuple[list[Turn], str | None]:
    """The conversation up to the customer's question the link points at, and the team's reply when the link points
    at one (the question before it is the question; the reply is its reference answer)."""
    thread = fetch_thread(client, channel, thread_ts or ts)
    chosen = find_message(thread, ts)
    if chosen is None:
        raise FtbotError("I could not find that message in its thread (deleted?); nothing was added")
    roles = bot.roles
    customer = chosen.get("user")
    stop_before = roles.configured and roles.is_team(customer)

    def is_team(user: str | None) -> bool:
        # Without configured roles, whoever is not the customer who asked speaks for the team.
        return roles.is_team(user) if roles.configured else user != customer

    turns = conversation_turns(thread, until_ts=ts, include_until=True, is_team=is_team,
                               names=UserNames(client), bot_user_id=bot_user_id)
    reference = None
    if stop_before and turns and turns[-1]["role"] == "assistant":
        reference = str(turns.pop()["content"])
    if not turns or turns[-1]["role"] != "user":
        raise FtbotError("that link does not end at a customer question: link the customer's message "
                         "(or a team reply, to use the question above it).")
    return [{"role": "system", "content": channel_system_prompt(bot, channel)}, *turns], reference


def add_question(bot: BotContext, ctx: CommandContext) -> None:
    """``/ft eval add <message link|question text>``."""
    if not bot.roles.may_capture(ctx.user_id):
        raise FtbotError("only the support team can add evaluation questions (FTBOT_AGENTS/REVIEWERS/TRAINERS).")
    rest = ctx.rest.split(None, 1)[1] if len(ctx.rest.split(None, 1)) > 1 else ""
    if not rest.strip():
        raise FtbotError("usage: `/ft eval add <message link>` (⋮ → Copy link on the customer's question) "
                         "or `/ft eval add <question text>`")
    reference: str | None = None
    if is_permalink(rest):
        channel, ts, thread_ts = parse_permalink(rest)
        require_member(ctx.client, channel, ctx.user_id)
        messages, reference = question_turns(bot, ctx.client, channel, ts, thread_ts,
                                             bot_user_id=resolve_bot_user_id(ctx.client, bot))
        source = f"slack:{channel}:{ts}"
    else:
        messages = [{"role": "system", "content": channel_system_prompt(bot, ctx.channel_id)},
                    {"role": "user", "content": rest.strip()}]
        source = None
    result = eval_prompts.add_eval_prompt(bot.db, messages, reference=reference, source_key=source, added_by=ctx.user_id)
    count = len(eval_prompts.list_eval_prompts(bot.db))
    question = bk.truncate(messages[-1]["content"], 300)
    if not result.created:
        ctx.respond(f"That question is already in the evaluation set (#{result.example.id}).")
        return
    warning = ""
    trained = _trained_by(bot, result.example.content_hash)
    if trained:
        warning = (f"\n:warning: {bk.escape(', '.join(trained))} trained on this exact question, "
                   "so it is skipped when evaluating that model.")
    ctx.respond(f"Added evaluation question #{result.example.id} ({count} added by hand so far).",
                blocks=[bk.section(f":white_check_mark: Added evaluation question #{result.example.id}:\n{blockquote(question)}"
                                   f"\n{count} question(s) added by hand; each round also uses the model's validation split.{warning}")])


def _trained_by(bot: BotContext, digest: str) -> list[str]:
    """The newest models (ten at most) that trained on the question with this hash."""
    names = []
    for model in list_models(bot.db)[:10]:
        if digest in eval_prompts.model_trained_prompt_hashes(bot.db, model):  # its SFT parent's training counts too
            names.append(model.name)
    return names

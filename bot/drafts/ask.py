"""The ways to ask for a draft: `@ftbot draft` in a thread, the message shortcut *Draft a reply*, `/ft draft <link>`, and
`/ft drafts on|off` for auto mode in a channel.

Each listener acks at once and hands the work to :func:`bot.drafts.request.offer_draft` on ``BotContext.work``: reading
the thread and the model's generation never delay an ack. Only the support team may ask (``bot.access`` refuses the
shortcut and the commands to anyone else; the mention, whose rule admits everyone, is checked here), and only for a
conversation they are a member of.
"""

from __future__ import annotations

import time
from typing import TYPE_CHECKING, Any

from slack_bolt import Ack, App, BoltContext, Respond
from slack_sdk import WebClient

from bot import blocks as bk
from bot.access import RULES, RequestKind, require
from bot.commands import CommandContext, Handler
from bot.drafts.request import DraftRequest, RequestSource, mention_request, offer_draft
from bot.threads import is_permalink, parse_permalink, resolve_bot_user_id
from storage.drafts import channel_drafts_on, set_channel_drafts
from storage.errors import FtbotError
from storage.jobs import active_model

if TYPE_CHECKING:  # bot.app imports every feature (so this module): a type-only import avoids the cycle
    from bot.app import BotContext, MentionHandler

SHORTCUT_ID = "ft_draft_message"
MENTION_WORD = "draft"
DRAFT_USAGE = "/ft draft <message link>"
AUTO_USAGE = "/ft drafts [on | off]"
ASK_RULE = RULES[(RequestKind.COMMAND, "draft")]


def _mention_listener(bot: BotContext) -> MentionHandler:
    def on_draft_mention(event: dict[str, Any], client: WebClient, context: BoltContext) -> None:
        """`@ftbot draft` (routed here by bot.capture's app_mention listener)."""
        received = time.monotonic()
        user, channel, thread_ts = event["user"], event["channel"], event.get("thread_ts")

        def tell(text: str) -> None:
            client.chat_postEphemeral(channel=channel, user=user, text=bk.fallback(text), thread_ts=thread_ts)

        try:
            require(bot.roles, user, ASK_RULE)
        except FtbotError as refusal:
            tell(f":no_entry: {bk.escape(str(refusal))}")
            return
        if not thread_ts:
            tell("Mention `@ftbot draft` as a reply *inside the customer's thread*: I draft a reply to the latest "
                 "customer message there, visible only to you. (Or use the message shortcut *Draft a reply*.)")
            return
        request = mention_request(event, bot_user_id=context.bot_user_id or resolve_bot_user_id(client, bot),
                                  received=received)
        bot.defer_event(context, offer_draft, bot, client, request)

    return on_draft_mention


def _ft_draft(bot: BotContext) -> Handler:
    def ft_draft(ctx: CommandContext) -> None:
        received = time.monotonic()
        require(bot.roles, ctx.user_id, ASK_RULE)
        if len(ctx.args) != 1 or not is_permalink(ctx.args[0]):
            raise FtbotError(f"Usage: `{DRAFT_USAGE}` (⋮ → *Copy link* on the customer's message). In the thread, "
                             "mention `@ftbot draft` or use the message shortcut *Draft a reply*")
        channel, ts, thread_ts = parse_permalink(ctx.args[0])
        response_url = ctx.command.get("response_url")
        request = DraftRequest(RequestSource.COMMAND, channel=channel, ts=ts, thread_ts=thread_ts, agents=(ctx.user_id,),
                               received=received, bot_user_id=resolve_bot_user_id(ctx.client, bot),
                               respond=Respond(response_url=response_url) if response_url else None)
        offer_draft(bot, ctx.client, request)  # the router already runs this after the ack, on the work pool

    return ft_draft


def _ft_drafts(bot: BotContext) -> Handler:
    def ft_drafts(ctx: CommandContext) -> None:
        action = ctx.args[0].lower() if ctx.args else "status"
        where = f"<#{ctx.channel_id}>"
        if action == "status":
            state = "on" if channel_drafts_on(bot.db, ctx.channel_id) else "off"
            ctx.respond(f"Auto drafts are *{state}* in {where}. `{AUTO_USAGE}`: with them on, each new customer question "
                        "here gets a draft offered privately to the channel's agents.")
            return
        if action not in ("on", "off") or len(ctx.args) > 1:
            raise FtbotError(f"Usage: `{AUTO_USAGE}`")
        require(bot.roles, ctx.user_id, RULES[(RequestKind.COMMAND, f"drafts {action}")])
        set_channel_drafts(bot.db, ctx.channel_id, action == "on")
        if action == "off":
            ctx.respond(f"Auto drafts are *off* in {where}. Agents can still ask with `@ftbot draft`.")
            return
        warning = "" if active_model(bot.db) is not None else (
            " No model is in use yet: drafts come from the newest registered model until a trainer runs `/ft use &lt;model&gt;`.")
        ctx.respond(f"Auto drafts are *on* in {where}: each new customer question here (a new message or a thread reply "
                    "by someone outside the team) gets a draft offered privately to the channel's agents. Customers "
                    f"never see drafts, and nothing is posted until an agent clicks *Send*.{warning}")

    return ft_drafts


def register(app: App, bot: BotContext) -> None:
    @app.shortcut(SHORTCUT_ID)
    def on_shortcut(ack: Ack, shortcut: dict[str, Any], client: WebClient, respond: Respond, context: BoltContext) -> None:
        ack()
        message = shortcut.get("message") or {}
        request = DraftRequest(
            RequestSource.SHORTCUT, channel=shortcut["channel"]["id"], ts=message.get("ts") or shortcut["message_ts"],
            thread_ts=message.get("thread_ts"), agents=(shortcut["user"]["id"],), received=time.monotonic(),
            bot_user_id=context.bot_user_id, respond=respond)
        bot.defer(offer_draft, bot, client, request)

    bot.mention_handlers[MENTION_WORD] = _mention_listener(bot)
    bot.router.add("draft", usage=DRAFT_USAGE, summary="A private draft reply to a customer's message, by the model in use",
                   handler=_ft_draft(bot))
    bot.router.add("drafts", usage=AUTO_USAGE, summary="Auto drafts in this channel: every new customer question gets one",
                   handler=_ft_drafts(bot))

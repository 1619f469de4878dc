"""Slack listeners: serving a Together AI fine-tune on a dedicated endpoint (``/ft deploy``, ``/ft undeploy``; admins).

A dedicated endpoint bills per minute while it runs, even idle, so it never starts silently: ``/ft deploy NAME``
answers the admin privately with a quote (the hardware, Together's price per minute and per hour, the idle auto-stop)
and Deploy / Cancel buttons; nothing exists on Together before the click. The Deploy click claims the quote in the
database (a double click creates one endpoint) and replaces the quote with the endpoint's name and status.
``/ft undeploy NAME`` deletes the endpoint. The Together calls run after the ack (``bot.defer``).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from slack_bolt import Ack, App, Respond

from bot import blocks as bk
from bot.commands import CommandContext, Handler
from bot.payloads import button_int
from storage.deployments import discard_deployment_quote, get_deployment
from storage.errors import FtbotError
from storage.models import Deployment, stored_id
from storage.vocabulary import DeploymentStatus
from trainers.training.together_backend import together_key_missing
from trainers.training.together_endpoints import ServingPlan, quote_deployment, start_deployment, stop_deployment

if TYPE_CHECKING:  # bot.app imports every feature (so this module): a type-only import avoids the cycle
    from bot.app import BotContext

DEPLOY_ACTION = "ft_deploy_start"
DISCARD_ACTION = "ft_deploy_discard"
DEPLOY_USAGE = "/ft deploy <model> [hardware]"
UNDEPLOY_USAGE = "/ft undeploy <model>"
NOT_CONFIGURED = (":warning: Together AI is not configured: an admin sets `TOGETHER_API_KEY` in the bot's environment "
                  "and restarts it.")


def price_lines(row: Deployment) -> list[str]:
    """The quote's lines (plain text: escape before showing)."""
    per_hour = row.price_cents_per_hour / 100
    return [
        f"Model: {row.model_name}",
        f"Hardware: {row.hardware} (1 replica)",
        f"Price: ${per_hour / 60:,.4f} per minute (${per_hour:,.2f} per hour), billed while running, even idle",
        f"Idle auto-stop: after {row.idle_minutes} minutes without a request",
    ]


def quote_blocks(row: Deployment, plan: ServingPlan | None = None) -> tuple[str, list[dict[str, Any]]]:
    """(fallback text, blocks) of a deployment quote with its Deploy / Cancel buttons."""
    row_id = stored_id(row)
    lines = price_lines(row)
    text = bk.escape(f"Together endpoint quote #{row_id}: " + "; ".join(lines))
    out = [bk.header(f"Together endpoint quote · #{row_id}"), bk.section("\n".join(bk.escape(line) for line in lines))]
    if plan is not None and len(plan.options) > 1:
        others = ", ".join(f"{o.hardware} (${o.usd_per_hour:,.2f}/h)" for o in plan.options if o != plan.hardware)
        out.append(bk.context(bk.escape(f"Other hardware: {others}. Ask for one with `/ft deploy {row.model_name} <hardware>`.")))
    out.append(bk.actions(
        bk.button("Deploy", DEPLOY_ACTION, str(row_id), style="primary", confirm=bk.confirm_dialog(
            "Start a dedicated endpoint?",
            bk.escape(f"{row.hardware} bills ${row.price_cents_per_hour / 100:,.2f} per hour while it runs, even idle, "
                      f"until `/ft undeploy` or {row.idle_minutes} idle minutes."),
            confirm="Deploy")),
        bk.button("Cancel", DISCARD_ACTION, str(row_id)),
        block_id=f"deploy-quote-{row_id}"))
    return text, bk.fit_blocks(out)


def status_text(row: Deployment, state: str | None = None) -> str:
    name = bk.escape(row.model_name)
    if row.status == DeploymentStatus.RUNNING:
        shown = f", {bk.escape(state)}" if state else ""
        return (f":rocket: *{name}* is deployed on Together (endpoint `{bk.escape(row.endpoint_name or '')}`{shown}). "
                f"It bills ${row.price_cents_per_hour / 100:,.2f}/h while running and stops itself after "
                f"{row.idle_minutes} idle minutes; `/ft undeploy {name}` stops it now.")
    return f"Endpoint quote #{stored_id(row)} for *{name}* is {bk.escape(row.status)}."


def _ft_deploy(bot: BotContext) -> Handler:
    def handler(ctx: CommandContext) -> None:
        if not ctx.args or len(ctx.args) > 2:
            ctx.respond(f"Usage: `{bk.escape(DEPLOY_USAGE)}` (`/ft models` lists the models).")
            return
        if together_key_missing():
            ctx.respond(NOT_CONFIGURED)
            return
        hardware = ctx.args[1] if len(ctx.args) > 1 else bot.settings.together_hardware
        row, plan = quote_deployment(bot.db, ctx.args[0], hardware=hardware,
                                     idle_minutes=bot.settings.together_idle_minutes, requested_by=ctx.user_id)
        text, blocks = quote_blocks(row, plan)
        ctx.respond(text, blocks=blocks)

    return handler


def _ft_undeploy(bot: BotContext) -> Handler:
    def handler(ctx: CommandContext) -> None:
        if len(ctx.args) != 1:
            ctx.respond(f"Usage: `{bk.escape(UNDEPLOY_USAGE)}`")
            return
        if together_key_missing():
            ctx.respond(NOT_CONFIGURED)
            return
        row = stop_deployment(bot.db, ctx.args[0], user=ctx.user_id)
        ctx.respond(f":white_check_mark: Stopped *{bk.escape(row.model_name)}*: endpoint "
                    f"`{bk.escape(row.endpoint_name or '')}` deleted on Together; it no longer bills.")

    return handler


def _deploy_listener(bot: BotContext) -> Callable[..., None]:
    def listener(ack: Ack, body: dict[str, Any], respond: Respond) -> None:
        ack()  # the policy (bot.access) admitted an admin; Together's calls run after the ack
        row_id = button_int(body["actions"][0], what="deployment id")
        bot.defer(deploy_from_slack, bot, respond, row_id, user=body["user"]["id"])

    return listener


def deploy_from_slack(bot: BotContext, respond: Respond, row_id: int, *, user: str) -> None:
    try:
        result = start_deployment(bot.db, row_id, user=user)
    except FtbotError as error:
        respond(text=f":warning: {bk.escape(str(error))}", replace_original=True)
        return
    row = result.deployment
    if not result.started:
        respond(text=status_text(row), response_type="ephemeral", replace_original=False)
        return
    respond(text=status_text(row, "provisioning"), replace_original=True)


def _discard_listener(bot: BotContext) -> Callable[..., None]:
    def listener(ack: Ack, body: dict[str, Any], respond: Respond) -> None:
        ack()
        row_id = button_int(body["actions"][0], what="deployment id")
        if discard_deployment_quote(bot.db, row_id, user=body["user"]["id"]):
            respond(text=f"Endpoint quote #{row_id} discarded. Nothing was created on Together.", replace_original=True)
        else:
            respond(text=status_text(get_deployment(bot.db, row_id)), response_type="ephemeral", replace_original=False)

    return listener


def register(app: App, bot: BotContext) -> None:
    """Add this feature's listeners to the Bolt `app` and its /ft subcommands to `bot.router`."""
    bot.router.add("deploy", usage=DEPLOY_USAGE, handler=_ft_deploy(bot),
                   summary="Quote serving a Together model on a dedicated endpoint (billed per minute), then start it")
    bot.router.add("undeploy", usage=UNDEPLOY_USAGE, summary="Stop a model's Together dedicated endpoint",
                   handler=_ft_undeploy(bot))
    app.action(DEPLOY_ACTION)(_deploy_listener(bot))
    app.action(DISCARD_ACTION)(_discard_listener(bot))

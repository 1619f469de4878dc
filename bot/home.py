"""App Home: dataset status, the latest snapshot and job, how to capture, who reviews; onboarding on first visit."""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Any

from slack_bolt import App
from slack_sdk import WebClient

from bot import blocks as bk
from storage.examples import count_by_status
from storage.jobs import list_jobs
from storage.model_names import display_name, job_model_name
from storage.models import Job, Snapshot
from storage.snapshots import latest_snapshot
from storage.workspace_settings import get_setting, set_setting

if TYPE_CHECKING:  # bot.app imports every feature (so this module): a type-only import avoids the cycle
    from bot.app import BotContext

log = logging.getLogger(__name__)

SEEN_PREFIX = "home_seen:"


def _latest(bot: BotContext) -> tuple[Snapshot | None, Job | None]:
    """The newest snapshot and job, or None (their tables may be empty)."""
    return latest_snapshot(bot.db), next(iter(list_jobs(bot.db, limit=1)), None)


def home_view(bot: BotContext, user: str, *, first_visit: bool) -> dict[str, Any]:
    counts = count_by_status(bot.db)
    out: list[dict[str, Any]] = [bk.header("ftbot")]
    if first_visit:
        out.append(bk.section(
            f":wave: Welcome, <@{user}>! ftbot turns your team's best Slack replies into a fine-tuned model and proves "
            "it is better with blind side-by-side votes.\n*1.* Capture good replies  *2.* Reviewers approve them  "
            "*3.* `/ft validate` and `/ft price`  *4.* Train and evaluate."))
    out.append(bk.fields_section([
        (":white_check_mark: Approved", str(counts.get("approved", 0))),
        (":hourglass: Pending review", str(counts.get("pending", 0))),
        (":no_entry_sign: Rejected", str(counts.get("rejected", 0))),
    ]))
    snapshot, job = _latest(bot)
    if snapshot is not None:
        out.append(bk.section(f"*Latest snapshot:* #{snapshot.id} ({snapshot.kind}, {snapshot.train_count} train / "
                              f"{snapshot.validation_count} validation), {snapshot.created_at:%Y-%m-%d %H:%M} UTC"))
    if job is not None:
        # The model by the name `/ft use` takes and the base by its short name: never the server's directories.
        model = job_model_name(bot.db, job)
        made = f" → `{bk.escape(model)}`" if model else ""
        out.append(bk.section(f"*Latest training job:* #{job.id} on {bk.escape(job.backend)} "
                              f"(`{bk.escape(display_name(job.base_model))}`): *{bk.escape(job.status)}*{made}"))
    out.append(bk.divider())
    out.append(bk.section(
        "*How to capture a reply*\n"
        "• On the reply in a thread: ⋮ → *Add to ftbot* (message shortcut)\n"
        "• Or reply in the thread with `@ftbot add`\n"
        "• Or in a channel: `/ft add &lt;message link&gt;`\n"
        "The thread up to that reply becomes the example: customers are `user` turns, your team `assistant` turns."))
    out.append(bk.section(f"*Reviewers:* {bot.roles.reviewers_text()}"))
    out.append(bk.context("Type `/ft help` for every command."))
    return {"type": "home", "blocks": out[: bk.MAX_VIEW_BLOCKS]}


def register(app: App, bot: BotContext) -> None:
    @app.event("app_home_opened")
    def on_home_opened(event: dict[str, Any], client: WebClient) -> None:
        if event.get("tab", "home") != "home":
            return
        user = event["user"]
        first_visit = not get_setting(bot.db, SEEN_PREFIX + user)
        client.views_publish(user_id=user, view=home_view(bot, user, first_visit=first_visit))
        if first_visit:
            set_setting(bot.db, SEEN_PREFIX + user, True)

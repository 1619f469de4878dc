"""Reviewing captured examples: Approve/Reject buttons on capture confirmations, ``/ft review`` (a paged
list), and the dataset overviews ``/ft list`` and ``/ft stats`` (with the drafts' statistics per model).

Only reviewers and admins may approve or reject (everyone, when no roles are configured); anyone else gets
a private refusal and nothing changes. A confirmation message is updated in place; the ephemeral review
list is redrawn through its ``response_url`` and the capture's confirmation in its thread is updated too.
A button is acted on only while its example is still pending: a stale one (someone decided first) changes
nothing and says privately what happened.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from slack_bolt import Ack, App, Respond
from slack_sdk import WebClient
from slack_sdk.errors import SlackApiError

from bot import blocks as bk
from bot.commands import CommandContext, Handler, int_arg
from bot.payloads import button_int, id_value
from bot.threads import fetch_thread
from storage.errors import FtbotError
from storage.examples import change_status, count_by_status, dataset_stats, list_examples, recent_examples
from storage.jobs import active_model
from storage.models import Example
from storage.vocabulary import ExampleStatus
from trainers.drafts.stats import draft_stats

if TYPE_CHECKING:  # bot.app imports every feature (so this module): a type-only import avoids the cycle
    from bot.app import BotContext

log = logging.getLogger(__name__)

APPROVE_ACTION = "ft_review_approve"
REJECT_ACTION = "ft_review_reject"
PAGE_ACTION = "ft_review_page"
REVIEW_PAGE_SIZE = 5


def example_summary(example: Example, *, limit: int = 600) -> str:
    """Last customer turn and the reply, escaped, for confirmations and the review list."""
    messages = example.messages or []
    question = next((m.get("content") for m in reversed(messages) if m.get("role") == "user"), "") or ""
    reply = next((m.get("content") for m in reversed(messages) if m.get("role") == "assistant"), "") or ""
    return (f"*Customer:* {bk.escape(bk.truncate(str(question), limit))}\n"
            f"*Reply:* {bk.escape(bk.truncate(str(reply), limit))}")


STATUS_EMOJI = {"pending": ":hourglass:", "approved": ":white_check_mark:", "rejected": ":no_entry_sign:"}


def confirmation_blocks(example: Example, *, created: bool, verb: str | None = None,
                        note: str | None = None) -> tuple[str, list[dict[str, Any]]]:
    """The capture's confirmation; `note` (mrkdwn, already escaped) says what happened to its status, if anything."""
    verb = verb or ("Captured" if created else "Updated")
    status = example.status
    head = (f"{STATUS_EMOJI.get(status, '')} {verb} example *#{example.id}* by <@{example.captured_by}> "
            f"({len(example.messages)} turns) — *{status}*")
    if status == "approved" and example.approved_by:
        head += f" by <@{example.approved_by}>"
    out = [bk.section(head), bk.section(example_summary(example))]
    if note:
        out.append(bk.context(note))
    if example.tags:
        out.append(bk.context("Tags: " + bk.escape(", ".join(example.tags))))
    if status == "pending":
        out.append(bk.actions(bk.button("Approve", APPROVE_ACTION, str(example.id), style="primary"),
                              bk.button("Reject", REJECT_ACTION, str(example.id), style="danger"),
                              block_id=f"review_{example.id}"))
    text = f"{verb} example #{example.id} ({status})"
    return text, out


def review_page(bot: BotContext, page: int) -> tuple[str, list[dict[str, Any]]]:
    pending_total = count_by_status(bot.db).get("pending", 0)
    pages = max(1, -(-pending_total // REVIEW_PAGE_SIZE))
    page = min(max(page, 1), pages)
    items = list_examples(bot.db, status="pending", limit=REVIEW_PAGE_SIZE, offset=(page - 1) * REVIEW_PAGE_SIZE)
    if not items:
        return "Nothing to review", [bk.section(":tada: Nothing waiting for review.")]
    out: list[dict[str, Any]] = [bk.section(f"*{pending_total} example(s) waiting for review* — page {page} of {pages}")]
    for example in items:
        out.append(bk.divider())
        link = f" · <{example.source_permalink}|thread>" if example.source_permalink else ""
        out.append(bk.section(f"*#{example.id}* by <@{example.captured_by}>{link}\n{example_summary(example, limit=400)}"))
        out.append(bk.actions(bk.button("Approve", APPROVE_ACTION, f"{example.id}:{page}", style="primary"),
                              bk.button("Reject", REJECT_ACTION, f"{example.id}:{page}", style="danger"),
                              block_id=f"review_{example.id}"))
    pager = []
    if page > 1:
        pager.append(bk.button("◀ Previous", PAGE_ACTION + "_prev", str(page - 1)))
    if page < pages:
        pager.append(bk.button("Next ▶", PAGE_ACTION + "_next", str(page + 1)))
    if pager:
        out.append(bk.actions(*pager, block_id="review_pager"))
    return f"{pending_total} example(s) waiting for review", bk.fit_blocks(out)


def register(app: App, bot: BotContext) -> None:
    for action_id in (APPROVE_ACTION, REJECT_ACTION):
        app.action(action_id)(_review_listener(bot))
    app.action(re.compile(f"^{PAGE_ACTION}_"))(_page_listener(bot))

    def ft_review(ctx: CommandContext) -> None:
        if not bot.roles.may_review(ctx.user_id):
            raise FtbotError("Only reviewers can review captures (FTBOT_REVIEWERS). Ask an ftbot admin")
        page = int_arg(ctx.args[0], "the page", usage="/ft review [page]") if ctx.args else 1
        text, page_blocks = review_page(bot, page)
        ctx.respond(text, blocks=page_blocks)

    bot.router.add("review", usage="/ft review [page]", summary="Approve or reject captured examples", handler=ft_review)
    bot.router.add("list", usage="/ft list", summary="Recent examples and counts by status", handler=_ft_list(bot))
    bot.router.add("stats", usage="/ft stats", summary="Dataset statistics: statuses, tags, top capturers, drafts",
                   handler=_ft_stats(bot))


def review_button(action: dict[str, Any]) -> tuple[int, int | None]:
    """(example id, page of the /ft review list or None) from an Approve / Reject button: ``"12"`` or ``"12:3"``."""
    example_raw, _, page_raw = (action.get("value") or "").partition(":")
    return id_value(example_raw, what="example id"), (id_value(page_raw, what="page") if page_raw else None)


def _review_listener(bot: BotContext) -> Callable[..., None]:
    def on_review(ack: Ack, body: dict[str, Any], action: dict[str, Any], client: WebClient, respond: Respond) -> None:
        ack()
        review_button(action)  # a stale value is answered here, by the app's error handler; deferred work has none
        bot.defer(review, body, action, client, respond)

    def review(body: dict[str, Any], action: dict[str, Any], client: WebClient, respond: Respond) -> None:
        user = body["user"]["id"]
        channel = (body.get("channel") or {}).get("id") or (body.get("container") or {}).get("channel_id")
        if not bot.roles.may_review(user):
            respond(text="Only reviewers can approve or reject examples (FTBOT_REVIEWERS). Ask an ftbot admin.",
                    response_type="ephemeral", replace_original=False)
            return
        example_id, page = review_button(action)
        status = "approved" if action["action_id"] == APPROVE_ACTION else "rejected"
        try:
            change = change_status(bot.db, example_id, status, by=user, expected=ExampleStatus.PENDING)
        except FtbotError as exc:
            respond(text=f":warning: {bk.escape(str(exc))}", response_type="ephemeral", replace_original=False)
            return
        example = change.example
        if not change.changed:  # a stale button: the example was decided (or reopened and edited) meanwhile
            respond(text=already_decided(example), response_type="ephemeral", replace_original=False)
            return
        container = body.get("container") or {}
        text, confirm = confirmation_blocks(example, created=True)
        verdict = f"{STATUS_EMOJI[status]} *{status.capitalize()}* by <@{bk.escape(user)}>"
        confirm = [b for b in confirm if b.get("type") != "actions"] + [bk.context(verdict)]
        if page is not None:  # from the /ft review list (ephemeral): redraw the page, and settle the thread's buttons
            text_page, page_blocks = review_page(bot, page)
            respond(text=text_page, blocks=page_blocks, replace_original=True)
            update_thread_confirmations(client, example, text=f"{text}: {status} by {user}", blocks=confirm)
            return
        if container.get("is_ephemeral") or not container.get("message_ts") or not channel:
            respond(text=text, blocks=confirm, replace_original=True)
        else:
            client.chat_update(channel=channel, ts=container["message_ts"], text=f"{text}: {status} by {user}", blocks=confirm)

    return on_review


def already_decided(example: Example) -> str:
    """What a stale Approve / Reject says instead of acting: ``#12 was already approved by @x``."""
    who = f" by <@{bk.escape(example.approved_by)}>" if example.status == ExampleStatus.APPROVED and example.approved_by else ""
    return f"#{example.id} was already {example.status}{who}; your click changed nothing."


def update_thread_confirmations(client: WebClient, example: Example, *, text: str, blocks: list[dict[str, Any]]) -> int:
    """Replace the capture's confirmation(s) in its thread, so their buttons do not outlive the decision.

    The example does not store the confirmation's ts: its thread (``source_thread_ts`` or ``source_ts``) is read and
    the bot's messages carrying this example's review buttons (block_id ``review_<id>``) are updated. Returns how
    many; 0 when the thread cannot be read (the bot left the channel) or has none.
    """
    root = example.source_thread_ts or example.source_ts
    if not example.source_channel or not root:
        return 0
    block_id = f"review_{example.id}"
    try:
        thread = fetch_thread(client, example.source_channel, root)
        stale = [m["ts"] for m in thread if any(b.get("block_id") == block_id for b in m.get("blocks") or [])]
        for ts in stale:
            client.chat_update(channel=example.source_channel, ts=ts, text=text, blocks=blocks)
    except (SlackApiError, FtbotError) as exc:
        log.warning("cannot update the confirmation of example %s in its thread: %s", example.id, exc)
        return 0
    return len(stale)


def _page_listener(bot: BotContext) -> Callable[..., None]:
    def on_page(ack: Ack, action: dict[str, Any], respond: Respond, body: dict[str, Any]) -> None:
        ack()
        if not bot.roles.may_review(body["user"]["id"]):
            return
        text, page_blocks = review_page(bot, button_int(action, what="page"))
        respond(text=text, blocks=page_blocks, replace_original=True)

    return on_page


def _ft_list(bot: BotContext) -> Handler:
    def ft_list(ctx: CommandContext) -> None:
        counts = count_by_status(bot.db)
        recent = recent_examples(bot.db, limit=10)
        head = " · ".join(f"{STATUS_EMOJI.get(s, '')} {counts.get(s, 0)} {s}" for s in ("approved", "pending", "rejected"))
        out = [bk.section(f"*Examples:* {head}")]
        lines = []
        for example in recent:
            question = next((m.get("content") for m in reversed(example.messages) if m.get("role") == "user"), "")
            who = f" by <@{example.captured_by}>" if example.captured_by else f" ({example.source_kind})"
            lines.append(f"{STATUS_EMOJI.get(example.status, '')} *#{example.id}*{who}: "
                         f"{bk.escape(bk.truncate(str(question or ''), 120))}")
        out.append(bk.section("\n".join(lines) if lines else "_No examples yet. Capture a reply with the *Add to ftbot* shortcut._"))
        ctx.respond(f"Examples: {counts.get('approved', 0)} approved, {counts.get('pending', 0)} pending, "
                    f"{counts.get('rejected', 0)} rejected", blocks=out)

    return ft_list


def _ft_stats(bot: BotContext) -> Handler:
    def ft_stats(ctx: CommandContext) -> None:
        counts = count_by_status(bot.db)
        stats = dataset_stats(bot.db)
        tags, capturers, total = stats.tags, stats.capturers, stats.total
        pairs = [("Approved", str(counts.get("approved", 0))), ("Pending", str(counts.get("pending", 0))),
                 ("Rejected", str(counts.get("rejected", 0))),
                 ("Avg turns", f"{stats.average_turns:.1f}" if stats.average_turns is not None else "–")]
        out = [bk.header("ftbot dataset"), bk.fields_section(pairs)]
        if capturers:
            out.append(bk.section("*Top capturers:* " + ", ".join(
                (f"<@{who}> ({n})" if re.fullmatch(r"[UW][A-Z0-9_]+", who) else f"{bk.escape(who)} ({n})")
                for who, n in capturers.most_common(5))))
        if tags:
            out.append(bk.section("*Tags:* " + bk.escape(", ".join(f"{t} ({n})" for t, n in tags.most_common(15)))))
        in_use = active_model(bot.db)
        drafts = draft_stats(bot.db, current_model=in_use.name if in_use else None).lines()
        out.append(bk.section("*Drafts*\n" + "\n".join(f"• {bk.escape(line)}" for line in drafts)))
        ctx.respond(f"{total} examples: {counts.get('approved', 0)} approved", blocks=out)

    return ft_stats

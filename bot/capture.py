"""Capturing replies from Slack threads as training examples.

Three ways in, one flow: the message shortcut ``ft_add_message`` on a reply, ``/ft add <permalink>``, and
``@ftbot add`` as a thread reply (no trigger_id there, so it answers with a button that opens the form).
The modal opens right after ``ack()`` (trigger_ids expire in 3 s) with a loading view, the thread is read
with ``conversations.replies`` and the form is filled with ``views.update``. The draft lives in the database
(``storage.capture_drafts``), so long threads never hit the 3000-character ``private_metadata`` limit.

Submitting validates the edited example (``trainers.data.validate.check_record``), stores it idempotently on
``slack:<channel>:<ts>`` and posts a confirmation whose buttons ``bot.review`` handles. A message captured before
opens its stored example instead of the thread (``bot.recapture``): redactions, edits and status are never lost.
"""

from __future__ import annotations

import json
import logging
import re
from dataclasses import asdict
from typing import TYPE_CHECKING, Any

from slack_bolt import Ack, App, BoltContext
from slack_sdk import WebClient
from slack_sdk.errors import SlackApiError

from bot import blocks as bk
from bot.capture_draft import Draft
from bot.commands import CommandContext, Handler
from bot.payloads import button_json, stale_view, view_metadata
from bot.recapture import already_captured_notice, confirm_capture, draft_from_example, save_recapture
from bot.threads import (
    SlackMessage,
    Turn,
    UserNames,
    conversation_turns,
    fetch_thread,
    find_message,
    is_bot_message,
    parse_permalink,
    require_member,
    resolve_bot_user_id,
    slack_to_plain,
    ts_order,
    without_user_mentions,
)
from storage.capture_drafts import delete_capture_draft, load_capture_draft, save_capture_draft
from storage.errors import FtbotError, StaleAction
from storage.events import claim_event
from storage.examples import example_by_source_key, save_capture
from storage.workspace_settings import delete_setting, get_setting, set_setting
from trainers.data.pii import PiiFinding, find_pii, redact
from trainers.data.validate import check_record

if TYPE_CHECKING:  # bot.app imports every feature (so this module): a type-only import avoids the cycle
    from bot.app import BotContext

log = logging.getLogger(__name__)

SHORTCUT_ID = "ft_add_message"
VIEW_ID = "ft_capture"
OPEN_ACTION = "ft_capture_open"
REDACT_ACTION = "ft_capture_redact"
TAGS_BLOCK = "tags"
REOPEN_BLOCK = "reopen"
DRAFT_PREFIX = "capture_draft:"
PROMPT_PREFIX = "channel_prompt:"
# Turns shown as editable inputs; earlier ones are kept as captured (a modal holds at most 100 blocks).
MAX_EDITABLE_TURNS = 40
ROLE_LABELS = {"system": "System prompt", "user": "Customer (user)", "assistant": "Agent reply (assistant)"}

_MESSAGES_INDEX = re.compile(r"messages\[(\d+)\]")


# ---- conversation building ----------------------------------------------------------------------------------------
def channel_system_prompt(bot: BotContext, channel: str) -> str:
    stored = get_setting(bot.db, PROMPT_PREFIX + channel)
    return stored if isinstance(stored, str) and stored.strip() else bot.settings.channel_prompt(channel)


def _is_capture_mention(message: SlackMessage, bot_user_id: str | None) -> bool:
    return bool(bot_user_id) and f"<@{bot_user_id}>" in (message.get("text") or "")


def build_turns(bot: BotContext, client: WebClient, channel: str, ts: str, thread_ts: str | None,
                *, bot_user_id: str | None) -> tuple[list[Turn], str]:
    """The conversation up to and including the chosen reply, with the channel's system prompt first,
    and the thread's root ts."""
    root = thread_ts or ts
    thread = fetch_thread(client, channel, root)
    chosen = find_message(thread, ts)
    if chosen is not None and chosen.get("thread_ts") not in (None, root):
        # A reply's link without ?thread_ts=: read its whole thread from the real parent.
        root = chosen["thread_ts"]
        thread = fetch_thread(client, channel, root)
    if chosen is None:
        raise FtbotError("I could not find that message in its thread (deleted?); nothing was captured")
    author = chosen.get("user")
    roles = bot.roles
    if is_bot_message(chosen, bot_user_id):
        raise FtbotError("That message was written by a bot; capture a reply written by your support team")
    if roles.configured and not roles.is_team(author):
        raise FtbotError(
            "That message is by someone who is not on the support team (FTBOT_AGENTS/REVIEWERS/TRAINERS/ADMINS), "
            "so it would be a customer turn. Capture the agent's reply instead"
        )
    turns = conversation_turns(
        thread, until_ts=ts, is_team=lambda user: user == author or roles.is_team(user), names=UserNames(client),
        bot_user_id=bot_user_id, skip=lambda message: _is_capture_mention(message, bot_user_id),
    )
    if not any(t["role"] == "user" for t in turns):
        raise FtbotError("There is no customer message before that reply in its thread, so there is nothing to learn from. "
                         "Capture a reply inside a thread that starts with the customer's question")
    return [{"role": "system", "content": channel_system_prompt(bot, channel)}, *turns], root


# ---- the modal ------------------------------------------------------------------------------------------------------
def _loading_view() -> dict[str, Any]:
    return bk.modal("Add to ftbot", [bk.section(":hourglass_flowing_sand: Reading the thread…")], callback_id=VIEW_ID)


def _error_view(message: str) -> dict[str, Any]:
    return bk.modal("Add to ftbot", [bk.section(f":warning: {message}")], callback_id=VIEW_ID + "_error")


def _turn_block_id(index: int, rev: int) -> str:
    # A new block_id per revision makes Slack show the new initial_value after a redaction.
    return f"turn_{index}_r{rev}"


def _pii_findings(turns: list[dict[str, str]]) -> list[tuple[int, PiiFinding]]:
    return [(i, finding) for i, turn in enumerate(turns) for finding in find_pii(turn["content"])]


def capture_view(draft: Draft, draft_key: str, *, notice: str | None = None) -> dict[str, Any]:
    """The capture form: one multiline input per turn (role shown), PII findings with a redact button, tags."""
    view_blocks: list[dict[str, Any]] = []
    source = f"<{draft.permalink}|the message>" if draft.permalink else "the message"
    view_blocks.append(bk.context(f"Captured from {source} in <#{draft.channel}>. Edit the turns, then *Save*."))
    if notice:
        view_blocks.append(bk.section(notice))
    findings = _pii_findings(draft.turns)
    if findings:
        listed = ", ".join(f"{f.kind} in turn {i}" for i, f in findings[:10])
        more = f" and {len(findings) - 10} more" if len(findings) > 10 else ""
        view_blocks.append(bk.section(
            f":shield: *Possible personal data*: {bk.escape(listed)}{more}. Redact it before it leaves the premises.",
            accessory=bk.button("Redact PII", REDACT_ACTION, "redact", style="danger"), block_id="pii"))
    first_editable = max(1, len(draft.turns) - MAX_EDITABLE_TURNS)
    if first_editable > 1:
        view_blocks.append(bk.context(f"_{first_editable - 1} earlier turns are kept as captured._"))
    editable = editable_turns(draft)
    for index, turn in enumerate(draft.turns):
        label = f"{index}. {ROLE_LABELS.get(turn['role'], turn['role'])}"
        if index != 0 and index < first_editable:
            continue
        if index not in editable:
            preview = bk.truncate(turn["content"], 2500)
            view_blocks.append(bk.section(f"*{bk.escape(label)}* (too long to edit here; kept as captured)\n"
                                          f"{bk.escape(preview)}", block_id=f"locked_{index}"))
            continue
        view_blocks.append(bk.text_input(_turn_block_id(index, draft.rev), label, action_id="text", initial=turn["content"],
                                         multiline=True))
    if draft.may_reopen:
        view_blocks.append({
            "type": "input", "block_id": REOPEN_BLOCK, "optional": True, "label": bk.plain("Rejected example"),
            "element": {"type": "checkboxes", "action_id": REOPEN_BLOCK, "options": [
                {"text": bk.plain("Reopen for review"), "value": REOPEN_BLOCK}]},
        })
    view_blocks.append(bk.text_input(TAGS_BLOCK, "Tags", action_id="value", initial=", ".join(draft.tags), optional=True,
                                     placeholder="billing, refund", hint="Comma-separated; used to filter and report."))
    meta = json.dumps({"draft": draft_key, "rev": draft.rev})
    return bk.modal("Add to ftbot", view_blocks, callback_id=VIEW_ID, submit="Save", close="Cancel", private_metadata=meta)


def editable_turns(draft: Draft) -> set[int]:
    """Turns shown as inputs: the system prompt and the last ``MAX_EDITABLE_TURNS``, unless too long to edit."""
    first_editable = max(1, len(draft.turns) - MAX_EDITABLE_TURNS)
    return {i for i, turn in enumerate(draft.turns)
            if (i == 0 or i >= first_editable) and len(turn["content"]) <= bk.MAX_INPUT_VALUE}


def _save_draft(bot: BotContext, draft: Draft) -> str:
    key = f"{DRAFT_PREFIX}{draft.source_key}:{draft.captured_by}"
    save_capture_draft(bot.db, key, asdict(draft))
    return key


def _load_draft(bot: BotContext, key: str) -> Draft | None:
    if not key.startswith(DRAFT_PREFIX):
        return None
    raw = load_capture_draft(bot.db, key)
    return Draft(**raw) if isinstance(raw, dict) else None


def _apply_edits(draft: Draft, values: dict[str, dict[str, Any]]) -> None:
    """Copy the modal's current input values into the draft."""
    for index, turn in enumerate(draft.turns):
        entry = values.get(_turn_block_id(index, draft.rev), {}).get("text")
        if entry is not None and entry.get("value") is not None:
            turn["content"] = entry["value"].replace("\r\n", "\n").strip()
    tags_raw = (values.get(TAGS_BLOCK, {}).get("value") or {}).get("value")
    if tags_raw is not None:
        draft.tags = [t.strip().lower() for t in re.split(r"[,\n]", tags_raw) if t.strip()][:20]
    reopen = (values.get(REOPEN_BLOCK, {}).get(REOPEN_BLOCK) or {}).get("selected_options") or []
    draft.reopen = draft.may_reopen and any(option.get("value") == REOPEN_BLOCK for option in reopen)


def open_capture(bot: BotContext, client: WebClient, *, trigger_id: str, channel: str, ts: str, thread_ts: str | None,
                 user: str, bot_user_id: str | None) -> None:
    """Open the modal at once, then read the thread and fill it in."""
    try:
        opened = client.views_open(trigger_id=trigger_id, view=_loading_view())
    except SlackApiError as exc:
        # trigger_ids expire after 3 s and work once: say so instead of failing silently.
        log.warning("views.open failed: %s", exc.response.get("error"))
        try:
            client.chat_postEphemeral(channel=channel, user=user, thread_ts=thread_ts,
                                      text="Slack did not let me open the capture form in time; please try again.")
        except SlackApiError:
            pass
        return
    view = opened["view"]
    try:
        if not bot.roles.may_capture(user):
            raise FtbotError("Only the support team can capture replies. Ask an ftbot admin to add you to FTBOT_AGENTS")
        require_member(client, channel, user)  # before anything from that channel: the thread or its stored example
        stored = example_by_source_key(bot.db, f"slack:{channel}:{ts}")
        if stored is not None:
            # Never the raw thread again: that would undo the redactions and edits saved with the example.
            draft = draft_from_example(stored, user, may_reopen=bot.roles.may_review(user))
            notice = already_captured_notice(stored, draft, edits_need_review=bot.roles.capture_status(user) != "approved")
            key = _save_draft(bot, draft)
            client.views_update(view_id=view["id"], hash=view.get("hash"), view=capture_view(draft, key, notice=notice))
            return
        turns, root_ts = build_turns(bot, client, channel, ts, thread_ts, bot_user_id=bot_user_id)
        try:
            permalink = client.chat_getPermalink(channel=channel, message_ts=ts).get("permalink")
        except SlackApiError:
            permalink = None
        draft = Draft(source_key=f"slack:{channel}:{ts}", channel=channel, ts=ts,
                      thread_ts=root_ts if root_ts != ts else None, permalink=permalink,
                      captured_by=user, turns=turns)
        key = _save_draft(bot, draft)
        client.views_update(view_id=view["id"], hash=view.get("hash"), view=capture_view(draft, key))
    except FtbotError as exc:
        client.views_update(view_id=view["id"], view=_error_view(bk.escape(str(exc))))


def submission_errors(draft: Draft) -> dict[str, str]:
    """Field errors for ``response_action: errors``, from the data core's per-line checks."""
    checked = check_record(draft.record(), 1, kind="sft", pii=False)
    errors: dict[str, str] = {}
    # Errors can only be attached to blocks the modal shows.
    editable = {i: _turn_block_id(i, draft.rev) for i in editable_turns(draft)}
    fallback_block = editable[max(editable)] if editable else TAGS_BLOCK
    for issue in checked.errors:
        message = re.sub(r"^line \d+: ", "", issue.message)
        match = _MESSAGES_INDEX.search(message)
        block = editable.get(int(match.group(1))) if match else None
        block = block or fallback_block
        errors[block] = (errors[block] + " " + message) if block in errors else message
    return {k: bk.truncate(v, 2000) for k, v in errors.items()}


# ---- listeners ------------------------------------------------------------------------------------------------------
def register(app: App, bot: BotContext) -> None:
    @app.shortcut(SHORTCUT_ID)
    def on_shortcut(ack: Ack, shortcut: dict[str, Any], client: WebClient, context: BoltContext) -> None:
        ack()
        message = shortcut.get("message") or {}
        bot.defer(open_capture, bot, client, trigger_id=shortcut["trigger_id"], channel=shortcut["channel"]["id"],
                  ts=message.get("ts") or shortcut["message_ts"], thread_ts=message.get("thread_ts"),
                  user=shortcut["user"]["id"], bot_user_id=context.bot_user_id)

    def ft_add(ctx: CommandContext) -> None:
        if not ctx.args:
            raise FtbotError("Usage: `/ft add <message link>` (⋮ → Copy link on the reply). In a thread, use the "
                             "message shortcut *Add to ftbot* or mention `@ftbot add`")
        channel, ts, thread_ts = parse_permalink(ctx.args[0])
        trigger_id = ctx.command.get("trigger_id")
        if not trigger_id:
            raise FtbotError("Slack sent no trigger to open the form; run the command again")
        open_capture(bot, ctx.client, trigger_id=trigger_id, channel=channel, ts=ts, thread_ts=thread_ts,
                     user=ctx.user_id, bot_user_id=resolve_bot_user_id(ctx.client, bot))

    bot.router.add("add", usage="/ft add <message link>", summary="Capture a reply (and its thread) as a training example",
                   handler=ft_add)

    @app.event("app_mention")
    def on_mention(event: dict[str, Any], client: WebClient, context: BoltContext) -> None:
        # Slack's app_mention event always names who mentioned the bot and where.
        user, channel = event["user"], event["channel"]
        text = slack_to_plain(without_user_mentions(event.get("text") or ""))
        words = text.split()
        thread_ts = event.get("thread_ts")

        def tell(message: str, blocks: list[dict[str, Any]] | None = None) -> None:
            client.chat_postEphemeral(channel=channel, user=user, text=bk.fallback(message), blocks=blocks,
                                      thread_ts=thread_ts)

        routed = bot.mention_handlers.get(words[0].lower()) if words else None
        if routed is not None:  # another feature's word: `@ftbot draft` (bot.drafts)
            routed(event, client, context)
            return
        if not words or words[0].lower() != "add":
            tell("Mention me in a thread reply with `add` to capture the reply above it, or with `draft` for a private "
                 "draft reply to the customer; or type `/ft help`.")
            return
        if len(words) > 1:
            try:
                link_channel, ts, link_thread = parse_permalink(words[1])
                require_member(client, link_channel, user)
            except FtbotError as exc:
                tell(f":warning: {bk.escape(str(exc))}")
                return
            target = {"channel": link_channel, "ts": ts, "thread_ts": link_thread}
            quoted = "the linked message"
        else:
            if not thread_ts:
                tell("Use `@ftbot add` as a reply *inside the thread* you want to capture (or `/ft add <link>`).")
                return
            try:
                require_member(client, channel, user)
            except FtbotError as exc:
                tell(f":warning: {bk.escape(str(exc))}")
                return
            thread = fetch_thread(client, channel, thread_ts)
            target_message = _reply_before(bot, thread, event["ts"], context.bot_user_id, user)
            if target_message is None:
                tell("I found no reply by your team above this message to capture.")
                return
            target = {"channel": channel, "ts": target_message["ts"], "thread_ts": thread_ts}
            quoted = bk.escape(bk.truncate(slack_to_plain(target_message.get("text") or ""), 300))
        tell("Capture this reply for ftbot?", [
            bk.section(f"Capture this reply as a training example?\n>{quoted}"),
            bk.actions(bk.button("Open capture form", OPEN_ACTION, json.dumps(target), style="primary"), block_id="capture_open"),
        ])

    @app.action(OPEN_ACTION)
    def on_open(ack: Ack, body: dict[str, Any], action: dict[str, Any], client: WebClient, context: BoltContext) -> None:
        ack()
        target = button_json(action, channel=str, ts=str)
        bot.defer(open_capture, bot, client, trigger_id=body["trigger_id"], channel=target["channel"], ts=target["ts"],
                  thread_ts=target.get("thread_ts"), user=body["user"]["id"], bot_user_id=context.bot_user_id)

    @app.action(REDACT_ACTION)
    def on_redact(ack: Ack, body: dict[str, Any], client: WebClient) -> None:
        ack()
        bot.defer(redact_view, bot, client, body["view"])

    @app.view(VIEW_ID)
    def on_submit(ack: Ack, body: dict[str, Any], view: dict[str, Any], client: WebClient) -> None:
        if not view.get("private_metadata"):
            ack()  # the loading view
            return
        try:
            meta = view_metadata(view, draft=str)
        except StaleAction as stale:  # a form the bot did not write: say so in the modal instead of saving anything
            log.info("stale capture form: %s", stale)
            ack(response_action="update", view=stale_view("Add to ftbot", callback_id=VIEW_ID + "_error"))
            return
        draft = _load_draft(bot, meta["draft"])
        if draft is None:
            ack()  # the loading/error view, or a form whose draft was already saved by an earlier click
            return
        _apply_edits(draft, (view.get("state") or {}).get("values") or {})
        errors = submission_errors(draft)
        if errors:
            ack(response_action="errors", errors=errors)
            return
        ack()
        bot.defer(save_draft_as_example, bot, client, draft, meta["draft"], user=body["user"]["id"], view_id=view["id"])

    bot.router.add("prompt", usage="/ft prompt [show | set <text> | reset]",
                   summary="This channel's system prompt for new captures", handler=_ft_prompt(bot))


def _reply_before(bot: BotContext, thread: list[SlackMessage], mention_ts: str, bot_user_id: str | None,
                  mentioner: str | None) -> SlackMessage | None:
    """The message `@ftbot add` refers to: the latest team reply above the mention (with roles configured),
    else the mentioner's own latest message (agents mention the bot under their reply), else the latest human reply."""
    candidates = [m for m in thread if ts_order(m["ts"]) < ts_order(mention_ts)
                  and not is_bot_message(m, bot_user_id) and not _is_capture_mention(m, bot_user_id)]
    if bot.roles.configured:
        return next((m for m in reversed(candidates) if bot.roles.is_team(m.get("user"))), None)
    own = next((m for m in reversed(candidates) if m.get("user") == mentioner), None)
    replies = [m for m in candidates if m["ts"] != m.get("thread_ts", m["ts"]) or len(candidates) == 1]
    return own or (replies[-1] if replies else None)


def save_draft_as_example(bot: BotContext, client: WebClient, draft: Draft, draft_key: str, *, user: str,
                          view_id: str) -> None:
    """Store the submitted example once, then confirm (in the thread for review, or privately when approved)."""
    # A double-clicked Save sends the same view twice: only the first stores and confirms.
    if not claim_event(bot.db, f"view_submission:{view_id}:{draft.source_key}"):
        return
    if draft.example_id is not None:
        save_recapture(bot, client, draft, draft_key, user=user)
        return
    status = bot.roles.capture_status(user)
    try:
        # A form filled from the raw thread never overwrites a capture saved meanwhile (perhaps redacted, approved).
        result = save_capture(bot.db, record=draft.record(), source_key=draft.source_key, channel=draft.channel, ts=draft.ts,
                              thread_ts=draft.thread_ts, permalink=draft.permalink, captured_by=user, status=status,
                              approved_by=user if status == "approved" else None, tags=draft.tags, update_existing=False)
    except FtbotError as exc:
        client.chat_postEphemeral(channel=draft.channel, user=user, text=f":warning: {bk.escape(str(exc))}",
                                  thread_ts=draft.thread_ts)
        return
    delete_capture_draft(bot.db, draft_key)
    if not result.created:
        earlier = result.example
        by = f" by <@{bk.escape(earlier.captured_by)}>" if earlier.captured_by else ""
        client.chat_postEphemeral(
            channel=draft.channel, user=user, thread_ts=draft.thread_ts or draft.ts,
            text=(f":warning: This reply was already captured as #{earlier.id}{by} while your form was open; nothing "
                  "was overwritten. Capture it again to edit the stored example."))
        return
    confirm_capture(client, draft, result.example, user=user, created=True)


def redact_view(bot: BotContext, client: WebClient, view: dict[str, Any]) -> None:
    """Redact personal data in every turn (keeping the user's unsaved edits) and redraw the form."""
    try:
        draft = _load_draft(bot, view_metadata(view, draft=str)["draft"])
    except StaleAction as stale:  # deferred work has no error handler to answer for it: the modal says it
        log.info("stale capture form: %s", stale)
        client.views_update(view_id=view["id"], view=stale_view("Add to ftbot", callback_id=VIEW_ID + "_error"))
        return
    if draft is None:
        client.views_update(view_id=view["id"], view=_error_view("This form expired; start the capture again."))
        return
    _apply_edits(draft, (view.get("state") or {}).get("values") or {})
    for turn in draft.turns:
        turn["content"] = redact(turn["content"])
    draft.rev += 1
    key = _save_draft(bot, draft)
    client.views_update(view_id=view["id"], hash=view.get("hash"),
                        view=capture_view(draft, key, notice=":white_check_mark: Personal data redacted."))


def _ft_prompt(bot: BotContext) -> Handler:
    def ft_prompt(ctx: CommandContext) -> None:
        action = ctx.args[0].lower() if ctx.args else "show"
        key = PROMPT_PREFIX + ctx.channel_id
        if action in ("set", "reset") and not bot.roles.may_review(ctx.user_id):
            raise FtbotError("Only reviewers and admins can change a channel's system prompt")
        if action == "set":
            text = ctx.rest.split(None, 1)[1].strip() if len(ctx.rest.split(None, 1)) > 1 else ""
            if not text:
                raise FtbotError("Usage: `/ft prompt set <system prompt text>`")
            set_setting(bot.db, key, slack_to_plain(text))
            ctx.respond(f"System prompt for <#{ctx.channel_id}> set. New captures here start with it.")
        elif action == "reset":
            delete_setting(bot.db, key)
            ctx.respond(f"System prompt for <#{ctx.channel_id}> reset to the configured default.")
        elif action == "show":
            ctx.respond(f"System prompt for <#{ctx.channel_id}>:\n>{bk.escape(channel_system_prompt(bot, ctx.channel_id))}")
        else:
            raise FtbotError("Usage: `/ft prompt [show | set <text> | reset]`")

    return ft_prompt

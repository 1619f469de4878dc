"""The ``/ft`` slash command router.

Feature modules add subcommands with ``bot.router.add(name, usage=..., summary=..., handler=fn)``.
The router acks at once (Slack wants an answer within 3 s), then runs ``handler(ctx)`` after the ack
on the bot's work pool (``BotContext.defer``), so slow handlers never delay other requests' acks.
Replies are ephemeral (``ctx.respond``) unless a handler posts elsewhere.
"""

from __future__ import annotations

import logging
import shlex
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from slack_bolt import Ack, App, Respond
from slack_sdk import WebClient

from bot.access import may_use_command, rule_in_force
from bot.blocks import context, escape, fallback, section, truncate
from bot.payloads import MAX_STORED_ID
from bot.roles import Roles
from storage.errors import FtbotError

if TYPE_CHECKING:  # bot.app imports every feature (so this module): a type-only import avoids the cycle
    from bot.app import BotContext

log = logging.getLogger(__name__)

COMMAND = "/ft"


@dataclass
class CommandContext:
    """What a subcommand handler gets: the parsed arguments and ways to answer."""

    args: list[str]
    text: str
    user_id: str
    channel_id: str
    command: dict[str, Any]
    client: WebClient
    bot: BotContext
    _respond: Respond = field(repr=False)

    def respond(self, text: str = "", *, blocks: list[dict[str, Any]] | None = None, in_channel: bool = False,
                replace_original: bool | None = None) -> None:
        """Answer the user who typed the command: ephemeral unless ``in_channel``. Always sends a text fallback."""
        kwargs: dict[str, Any] = dict(text=fallback(text or " "), response_type="in_channel" if in_channel else "ephemeral")
        if blocks is not None:
            kwargs["blocks"] = blocks
        if replace_original is not None:
            kwargs["replace_original"] = replace_original
        self._respond(**kwargs)

    @property
    def rest(self) -> str:
        """Everything after the subcommand name, as typed (for free text such as a prompt)."""
        parts = self.text.strip().split(None, 1)
        return parts[1] if len(parts) > 1 else ""


Handler = Callable[[CommandContext], None]


@dataclass(frozen=True)
class Subcommand:
    name: str
    usage: str
    summary: str
    handler: Handler


class Router:
    """Subcommands of ``/ft`` by name; unknown names (and bare ``/ft``) get the help text."""

    def __init__(self) -> None:
        self._commands: dict[str, Subcommand] = {}
        self.add("help", usage="/ft help", summary="List every /ft subcommand", handler=self._help)

    def add(self, name: str, *, usage: str, summary: str, handler: Handler) -> None:
        name = name.lower()
        if name in self._commands and name != "help":
            raise ValueError(f"/ft {name} is registered twice")
        self._commands[name] = Subcommand(name, usage, summary, handler)

    def names(self) -> list[str]:
        return list(self._commands)

    def get(self, name: str) -> Subcommand | None:
        return self._commands.get(name.lower())

    def help_blocks(self, *, unknown: str | None = None, roles: Roles | None = None,
                    user: str | None = None) -> tuple[str, list[dict[str, Any]]]:
        """The subcommands; given `roles`, only those `user` may use, under the line saying which access rule is in force."""
        shown = [c for c in self._commands.values() if roles is None or may_use_command(roles, user, c.name)]
        lines = [f"`{escape(c.usage)}` — {escape(c.summary)}" for c in shown]
        intro = "*ftbot* turns your team's best Slack replies into a fine-tuned model."
        if unknown is not None:
            intro = f"I don't know `/ft {escape(unknown)}`. Here is what I can do:"
        blocks = [section(intro)]
        if roles is not None:
            blocks.append(context(rule_in_force(roles)))
        # One section holds up to 3000 characters; split the list when features add many commands.
        chunk: list[str] = []
        for line in lines:
            if sum(len(x) + 1 for x in chunk) + len(line) > 2900:
                blocks.append(section("\n".join(chunk)))
                chunk = []
            chunk.append(line)
        if chunk:
            blocks.append(section("\n".join(chunk)))
        if roles is None or may_use_command(roles, user, "add"):
            blocks.append(context("Capture a thread reply with the message shortcut *Add to ftbot* (⋮ on the message), "
                                  "`/ft add &lt;link&gt;` or `@ftbot add` in the thread."))
        # Usages name their arguments in angle brackets (`/ft add <message link>`): escaped, or Slack reads them as links.
        text = ("I don't know that subcommand. " if unknown is not None else "") + "ftbot commands: " + ", ".join(
            escape(c.usage) for c in shown)
        return text, blocks

    def _help(self, ctx: CommandContext) -> None:
        text, blocks = self.help_blocks(roles=ctx.bot.roles, user=ctx.user_id)
        ctx.respond(text, blocks=blocks)

    def dispatch(self, ctx: CommandContext) -> None:
        """Run the subcommand named by ``ctx.args[0]``; report user errors ephemerally, never as a traceback."""
        if not ctx.args:
            self._help(ctx)
            return
        sub = self.get(ctx.args[0])
        if sub is None:
            text, blocks = self.help_blocks(unknown=ctx.args[0], roles=ctx.bot.roles, user=ctx.user_id)
            ctx.respond(text, blocks=blocks)
            return
        ctx.args = ctx.args[1:]
        try:
            sub.handler(ctx)
        except FtbotError as exc:
            ctx.respond(f":warning: {escape(str(exc))}")
        except Exception:
            log.exception("/ft %s failed", sub.name)
            ctx.respond(f":x: `/ft {sub.name}` failed unexpectedly. The error is in ftbot's log; please tell your ftbot admin.")


def int_arg(raw: str, name: str, *, low: int = 1, high: int = MAX_STORED_ID, usage: str | None = None) -> int:
    """A whole-number ``/ft`` argument (``12`` or ``#12``) from ``low`` to ``high``; else a usage error naming it.

    The default ``high`` is the largest stored id, so an id argument never reaches the database out of range.
    """
    digits = raw.removeprefix("#")
    # Length first: int() of thousands of digits is slow (and refused past Python's limit).
    if digits.isascii() and digits.isdigit() and len(digits) <= len(str(high)) and low <= int(digits) <= high:
        return int(digits)
    hint = f" Usage: `{usage}`" if usage else ""
    raise FtbotError(f"{name} must be a whole number from {low:,} to {high:,}, not {truncate(raw, 24)!r}.{hint}")


def split_args(text: str) -> list[str]:
    """Split like a shell (quotes group words); fall back to whitespace on unbalanced quotes."""
    try:
        return shlex.split(text or "")
    except ValueError:
        return (text or "").split()


def register(app: App, bot: BotContext) -> None:
    """Listen for ``/ft`` and route it."""

    @app.command(COMMAND)
    def ft_command(ack: Ack, command: dict[str, Any], respond: Respond, client: WebClient) -> None:
        ack()  # first, always: the work below may take longer than Slack's 3 s
        ctx = CommandContext(
            args=split_args(command.get("text") or ""),
            text=command.get("text") or "",
            user_id=command.get("user_id") or "",
            channel_id=command.get("channel_id") or "",
            command=command,
            client=client,
            bot=bot,
            _respond=respond,
        )
        bot.defer(bot.router.dispatch, ctx)

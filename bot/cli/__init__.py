"""The ``ftbot`` command line. Each feature module adds its commands with ``register(app)``."""

from __future__ import annotations

from typing import Any

import typer
from rich.console import Console
from rich.markup import escape
from typer.core import TyperGroup

from bot.cli import checks, data, deploy, drafts, evaluation, slack, training
from bot.cli.common import invocation
from storage.errors import FtbotError


class FtbotGroup(TyperGroup):
    """The root command: one place that turns user errors into one line on stderr, for every subcommand.

    It wraps ``invoke`` (not ``main()``) so the error path is the same for the console script and for
    typer's CliRunner in the tests: ``FtbotError`` → ``error: ...`` and exit 1; Ctrl-C → exit 130, no traceback.
    It also opens the invocation whose ``Settings`` every command reads (once, on first use) through
    ``bot.cli.common.cli_settings``.
    """

    # typer 0.29 declares ``invoke`` with the Context of its bundled, private click copy (``typer._click``) and has no
    # public name for that class; ``typer.Context`` is its public subclass.
    def invoke(self, ctx: typer.Context) -> Any:  # type: ignore[override]
        try:
            with invocation():
                return super().invoke(ctx)
        except FtbotError as error:
            _err_console.print(f"[red]error:[/red] {escape(str(error))}", soft_wrap=True)
            raise typer.Exit(1) from None
        except KeyboardInterrupt:
            _err_console.print("interrupted")
            raise typer.Exit(130) from None


_err_console = Console(stderr=True, highlight=False)


app = typer.Typer(
    name="ftbot",
    help="Turn your support team's best Slack replies into a fine-tuned model, and prove it is better.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    cls=FtbotGroup,
)

for feature in (checks, data, slack, training, evaluation, drafts, deploy):
    feature.register(app)


def main() -> None:
    app()

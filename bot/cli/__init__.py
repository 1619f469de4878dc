"""The ``ftbot`` command line. Each feature module adds its commands with ``register(app)``."""

from __future__ import annotations

import typer

from bot.cli import checks, data, evaluation, slack, training

app = typer.Typer(
    name="ftbot",
    help="Turn your support team's best Slack replies into a fine-tuned model, and prove it is better.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)

for feature in (checks, data, slack, training, evaluation):
    feature.register(app)


def main() -> None:
    app()

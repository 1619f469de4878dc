"""Slack listeners: capture. Registered by bot.app.build_app."""

from __future__ import annotations


def register(app, bot) -> None:
    """Add this feature's listeners to the Bolt `app` and its /ft subcommands to `bot.router`."""

"""CLI commands: ``ftbot run [--http --port N]`` and ``ftbot shell``.

The bot itself (Bolt, slack_sdk, OpenAI's client, every feature: about 1 s to import) is imported inside the
commands that run it, so the other commands and ``ftbot --help`` start fast.
"""

from __future__ import annotations

import logging
import sys
from typing import TYPE_CHECKING, NoReturn

import typer

from bot.cli.common import cli_settings, database_errors
from storage.config import Settings
from storage.db import Database
from storage.errors import ConfigError

if TYPE_CHECKING:  # for the annotation only: Bolt is imported when the bot runs
    from slack_bolt import App

CONNECT_HINT = (
    "No Slack credentials set: starting the local console. To connect a real workspace, create the app from "
    "manifest.yml, then set SLACK_BOT_TOKEN and SLACK_APP_TOKEN (Socket Mode) or SLACK_BOT_TOKEN and "
    "SLACK_SIGNING_SECRET with `ftbot run --http` (see README, \"Slack app\")."
)


def _fail(message: str) -> NoReturn:
    typer.echo(f"ftbot: {message}", err=True)
    raise typer.Exit(2)


def _settings() -> Settings:
    try:
        return cli_settings()
    except ConfigError as exc:
        _fail(str(exc))


def _open_db(settings: Settings) -> Database:
    """The database, opened before anything starts: one line and exit code 1 when it cannot be reached."""
    with database_errors():
        return Database.open(settings.database_url)


def _console(settings: Settings, *, hint: str | None = None) -> None:
    from bot.console.shell import run_console  # the whole bot: imported only to run it (see the module docstring)

    db = _open_db(settings)  # first: an unreachable database is the one line printed
    if hint:
        typer.echo(hint, err=not sys.stdout.isatty())
    try:
        run_console(settings, db)
    finally:
        db.close()


def _serving_app(settings: Settings) -> App:
    """The bot app for a long-running process, its scheduler started (job relays, daily housekeeping)."""
    # The whole bot: imported only to run it (see the module docstring).
    from bot.app import bot_context, build_app
    from bot.scheduler import start_scheduler

    app = build_app(settings, _open_db(settings))
    start_scheduler(bot_context(app))
    return app


def _socket_mode_token(settings: Settings) -> str:
    """The app-level token Socket Mode connects with; exits with the reason when Socket Mode cannot start."""
    try:
        settings.require_socket_mode()
    except ConfigError as exc:
        _fail(f"{exc}. (For HTTP mode instead, set SLACK_SIGNING_SECRET and run `ftbot run --http`.)")
    token = settings.slack_app_token
    assert token is not None, "require_socket_mode() checked that the app token is set"
    return token


def register(app: typer.Typer) -> None:
    @app.command()
    def run(
        http: bool = typer.Option(False, "--http", help="Serve Slack's HTTP requests at /slack/events (needs SLACK_SIGNING_SECRET)."),
        port: int | None = typer.Option(None, "--port", help="HTTP port (default $PORT or 3000)."),
        host: str = typer.Option("0.0.0.0", "--host", help="HTTP interface to listen on."),
    ) -> None:
        """Run the Slack bot: Socket Mode with SLACK_APP_TOKEN, HTTP with --http, else the local console."""
        settings = _settings()
        if http or settings.slack_app_token or settings.slack_bot_token:
            logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
            # Alembic narrates every plugin and context at INFO on each start; its warnings and errors still show.
            logging.getLogger("alembic").setLevel(logging.WARNING)
        if http:
            try:
                settings.require_http()
            except ConfigError as exc:
                _fail(str(exc))
            from bot.http import serve  # uvicorn and Starlette: only for HTTP mode

            serve(_serving_app(settings), host=host, port=port or settings.http_port)
            return
        if settings.slack_app_token or settings.slack_bot_token:
            app_token = _socket_mode_token(settings)
            from bot.socket import serve as serve_socket  # the Socket Mode client: only for Socket Mode

            serve_socket(_serving_app(settings), app_token)
            return
        _console(settings, hint=CONNECT_HINT)

    @app.command()
    def shell() -> None:
        """The local console: the real bot against an in-process fake Slack workspace."""
        _console(_settings())

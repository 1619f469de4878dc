"""What every ``ftbot`` command shares: this invocation's settings, the database they name, and one clear line
(exit code 1) when that database cannot be used. ``FtbotError`` and Ctrl-C are handled once for every command by
the root group (``bot.cli.FtbotGroup``).
"""

from __future__ import annotations

import json
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from contextvars import ContextVar

import typer
from rich.console import Console
from rich.markup import escape
from sqlalchemy.engine import make_url
from sqlalchemy.exc import ArgumentError, OperationalError

from storage.config import Settings, default_database_url
from storage.db import Database

console = Console()
err_console = Console(stderr=True)


class InvocationSettings:
    """The settings of one ``ftbot`` command: read from the environment on first use, then kept, so the command and
    every helper it calls see the same object. A command that needs none never reads them (a wrong unrelated
    variable does not stop ``ftbot validate``)."""

    def __init__(self) -> None:
        self._settings: Settings | None = None

    def get(self) -> Settings:
        if self._settings is None:
            self._settings = Settings.from_env()
        return self._settings


# The command running now; the root group (``bot.cli.FtbotGroup``) opens one per invocation with ``invocation()``.
_current_invocation: ContextVar[InvocationSettings | None] = ContextVar("ftbot_invocation", default=None)


@contextmanager
def invocation() -> Iterator[None]:
    """The span of one ``ftbot`` command: settings read during it are read once."""
    token = _current_invocation.set(InvocationSettings())
    try:
        yield
    finally:
        _current_invocation.reset(token)


def cli_settings() -> Settings:
    """This invocation's settings (outside a command, e.g. a helper called directly: read now)."""
    current = _current_invocation.get()
    return current.get() if current is not None else Settings.from_env()


@contextmanager
def database_errors() -> Iterator[None]:
    """Unreachable databases and bad database URLs become one clear line and exit code 1."""
    try:
        yield
    except (OperationalError, ArgumentError) as error:
        url = cli_settings().database_url or default_database_url()
        reason = str(getattr(error, "orig", None) or error).strip().splitlines()[0]
        err_console.print(
            f"[red]error:[/red] cannot use the database {escape(_safe_url(url))}: {escape(reason)}. "
            "Check FTBOT_DATABASE_URL (or FTBOT_HOME) and that the server is running.",
            soft_wrap=True,
        )
        raise typer.Exit(1) from None


def _safe_url(url: str) -> str:
    try:
        return make_url(url).render_as_string(hide_password=True)
    except Exception:  # noqa: BLE001 - an unparsable URL is shown as "(invalid URL)"
        return "(invalid URL)"


@contextmanager
def open_database() -> Iterator[Database]:
    """The configured database, created/migrated if needed, closed (pool disposed) afterwards."""
    database = Database.open(cli_settings().database_url)
    try:
        yield database
    finally:
        database.close()


def print_json(value: object) -> None:
    sys.stdout.write(json.dumps(value, ensure_ascii=False, indent=2, default=str) + "\n")

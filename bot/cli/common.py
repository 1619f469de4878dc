"""What every ``ftbot`` command shares: this invocation's settings, the database they name, and one clear line
(exit code 1) when that database cannot be used. ``FtbotError`` and Ctrl-C are handled once for every command by
the root group (``bot.cli.FtbotGroup``).
"""

from __future__ import annotations

import json
import sys
from collections.abc import Collection, Iterator, Sequence
from contextlib import contextmanager
from contextvars import ContextVar

import typer
from rich.cells import cell_len
from rich.console import Console
from rich.markup import escape
from rich.table import Table
from sqlalchemy.engine import make_url
from sqlalchemy.exc import ArgumentError, OperationalError

from storage.config import Settings, default_database_url
from storage.db import Database
from storage.errors import FtbotError

console = Console()
err_console = Console(stderr=True)
# Wide enough that a table measured at it shows the width its columns need, not the terminal's.
_UNBOUNDED_WIDTH = 100_000
# The narrowest a column beside a model name may get before a table gives way to one "header: value" list per row:
# narrower, its folded text is no longer readable.
_NARROWEST_SHRUNK_COLUMN = 8
_PAIR_GAP = "  "
_ROW_INDENT = "  "


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


@contextmanager
def json_errors(as_json: bool) -> Iterator[None]:
    """With ``--json``, an ``FtbotError`` also prints ``{"ok": false, "error": {code, message}}`` on stdout, so a script
    reading stdout gets JSON too; the message still goes to stderr (the root command prints it) and the exit code is 1."""
    try:
        yield
    except FtbotError as error:
        if as_json:
            print_json({"ok": False, "error": {"code": type(error).__name__, "message": str(error)}})
        raise


def print_table(headers: Sequence[str], rows: Sequence[Sequence[str]], *, whole: Collection[str] = ()) -> None:
    """Print ``rows`` of plain text (escaped here) as a table under ``headers``.

    The columns named in ``whole`` hold what the user types next (``ftbot use NAME``), so their cells are never wrapped,
    cut or ellipsized: the other columns shrink instead, folding their text. When the terminal is too narrow even for
    that, each row is printed as "header: value" pairs on as few lines as the width allows, none split across lines.
    """
    probe = _table(headers, rows, whole, shrunk_to=_NARROWEST_SHRUNK_COLUMN)
    if console.measure(probe, options=console.options.update_width(_UNBOUNDED_WIDTH)).minimum <= console.width:
        console.print(_table(headers, rows, whole))
        return
    _print_as_pairs(headers, rows)


def _print_as_pairs(headers: Sequence[str], rows: Sequence[Sequence[str]]) -> None:
    """Each row as its "header: value" pairs, as many to a line as the width allows; a row's later lines are indented."""
    for row in rows:
        lines: list[list[tuple[str, str]]] = [[]]  # each line's pairs as (plain text, markup)
        for header, cell in zip(headers, row, strict=True):
            if not cell:
                continue
            plain = f"{header}: {cell}" if header else cell
            room = console.width - (len(_ROW_INDENT) if len(lines) > 1 else 0)
            if lines[-1] and cell_len(_PAIR_GAP.join([*(shown for shown, _ in lines[-1]), plain])) > room:
                lines.append([])
            lines[-1].append((plain, f"[bold]{escape(header)}:[/bold] {escape(cell)}" if header else escape(cell)))
        for number, pairs in enumerate(lines):
            indent = _ROW_INDENT if number else ""
            console.print(indent + _PAIR_GAP.join(markup for _, markup in pairs), soft_wrap=True, highlight=False)


def _table(headers: Sequence[str], rows: Sequence[Sequence[str]], whole: Collection[str], *,
           shrunk_to: int | None = None) -> Table:
    """``rows`` as a rich table; ``shrunk_to``: the width the other columns are measured at when shrunk (a probe)."""
    table = Table()
    for index, header in enumerate(headers):
        if header in whole:
            table.add_column(header, no_wrap=True, min_width=max((cell_len(row[index]) for row in rows), default=0))
        else:
            table.add_column(header, overflow="fold", max_width=shrunk_to)
    for row in rows:
        table.add_row(*(escape(cell) for cell in row))
    return table

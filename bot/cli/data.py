"""CLI commands for the dataset store: ``ftbot import``, ``ftbot export``, ``ftbot examples list``, ``ftbot db ...``.

The database is the one the settings name (``FTBOT_DATABASE_URL``, else SQLite under ``FTBOT_HOME``).
User errors print one line on stderr and exit 1, never a traceback (``FtbotError`` is printed by ``bot.cli``).
"""

from __future__ import annotations

import getpass
import sys
from enum import StrEnum
from pathlib import Path
from typing import Annotated, Any, TypedDict

import typer
from rich.markup import escape
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn
from rich.table import Table

from bot.cli.common import cli_settings, console, database_errors, err_console, open_database, print_json
from bot.payloads import MAX_STORED_ID
from storage import exports
from storage.errors import FtbotError
from storage.examples import count_by_status, example_record, iter_records, list_examples
from storage.models import Example
from storage.pairs import count_pairs, pair_records
from trainers.data.imports import count_lines, import_file

# Files with more lines than this get a progress bar (when stderr is a terminal).
PROGRESS_MIN_LINES = 5000
MAX_ERRORS_SHOWN = 20


class ExportFormat(StrEnum):
    openai = "openai"
    dpo = "dpo"
    trl_dpo = "trl-dpo"
    hf = "hf"


class StatusChoice(StrEnum):
    approved = "approved"
    pending = "pending"
    rejected = "rejected"
    all = "all"


# --- import ------------------------------------------------------------------------------------


def import_command(
    file: Annotated[Path, typer.Argument(help="OpenAI fine-tuning JSONL: SFT chat lines and/or DPO preference lines.")],
    by: Annotated[str | None, typer.Option("--by", help="Who approves the imported examples (default: your OS user).")] = None,
    skip_invalid: Annotated[
        bool, typer.Option("--skip-invalid", help="Store the valid lines even if other lines have errors.")
    ] = False,
    as_json: Annotated[bool, typer.Option("--json", help="Print the result as JSON.")] = False,
) -> None:
    """Validate FILE and store its valid lines as approved examples (all or nothing unless --skip-invalid)."""
    approved_by = by or _os_user()
    with database_errors(), open_database() as db:
        total = count_lines(file) if file.is_file() and not as_json and err_console.is_terminal else 0
        if total >= PROGRESS_MIN_LINES:
            columns = (TextColumn("importing"), BarColumn(), MofNCompleteColumn(), TimeRemainingColumn())
            with Progress(*columns, console=err_console, transient=True) as progress:
                task = progress.add_task("import", total=total)
                result = import_file(
                    db,
                    file,
                    approved_by=approved_by,
                    skip_invalid=skip_invalid,
                    on_line=lambda line: progress.update(task, completed=line),
                    max_line_bytes=cli_settings().max_line_bytes,
                )
        else:
            result = import_file(db, file, approved_by=approved_by, skip_invalid=skip_invalid,
                                 max_line_bytes=cli_settings().max_line_bytes)

    if as_json:
        print_json(result.to_json())
        if not result.stored:
            raise typer.Exit(1)
        return

    for issue in result.errors[:MAX_ERRORS_SHOWN]:
        where = f"line {issue.line}" if issue.line is not None else "file"
        message = issue.message.removeprefix(f"{where}: ")
        err_console.print(f"  {where}: [bold]{issue.code}[/bold]: {escape(message)}", soft_wrap=True, highlight=False)
    hidden = result.invalid_lines - min(len(result.errors), MAX_ERRORS_SHOWN)
    if result.errors and hidden > 0:
        err_console.print(f"  … and more errors on {hidden} other line(s); see them all with `ftbot validate {escape(str(file))}`")

    if not result.stored:
        err_console.print(
            f"[red]error:[/red] nothing imported: {escape(str(file))} has {result.invalid_lines} invalid line(s) "
            f"of {result.lines}. Fix them, or pass --skip-invalid to import the {result.valid_lines} valid line(s).",
            soft_wrap=True,
        )
        raise typer.Exit(1)

    parts = []
    if result.examples.added or result.examples.unchanged or not result.pairs.added + result.pairs.unchanged:
        parts.append(f"{result.examples.added} example(s) added")
    if result.pairs.added or result.pairs.unchanged:
        parts.append(f"{result.pairs.added} preference pair(s) added")
    summary = ", ".join(parts)
    if result.unchanged:
        summary += f", {result.unchanged} already stored"
    if result.invalid_lines:
        summary += f", {result.invalid_lines} invalid line(s) skipped"
    if result.added == 0 and result.unchanged and not result.invalid_lines:
        console.print(f"Nothing new: all {result.unchanged} line(s) of {escape(str(file))} are already stored.", soft_wrap=True)
    else:
        console.print(f"Imported {escape(str(file))}: {summary} (approved by {escape(approved_by)}).", soft_wrap=True)
        if result.warning_counts:
            counts = ", ".join(f"{code} ×{count}" for code, count in sorted(result.warning_counts.items()))
            console.print(
                f"Warnings: {counts}. Review them with `ftbot validate {escape(str(file))}`.", highlight=False, soft_wrap=True
            )


def _os_user() -> str:
    try:
        return getpass.getuser()
    except Exception:  # noqa: BLE001 - no login name in some containers
        return "unknown"


# --- export ------------------------------------------------------------------------------------


def export_command(
    format: Annotated[
        ExportFormat,
        typer.Option(
            "--format",
            "-f",
            help="openai: SFT JSONL; dpo: OpenAI preference JSONL; trl-dpo: TRL prompt/chosen/rejected JSONL; "
            "hf: a Hugging Face dataset directory (load_from_disk) with a messages column.",
        ),
    ] = ExportFormat.openai,
    out: Annotated[Path | None, typer.Option("--out", "-o", help="Output file (directory for hf). Default: stdout.")] = None,
    status: Annotated[StatusChoice, typer.Option("--status", help="Which examples to export (openai, hf).")] = StatusChoice.approved,
    force: Annotated[bool, typer.Option("--force", help="Replace an earlier hf export (never a directory ftbot did not write).")] = False,
) -> None:
    """Write stored examples (or preference pairs) in a training format."""
    wanted = None if status is StatusChoice.all else status.value
    with database_errors(), open_database() as db:
        if format is ExportFormat.openai:
            records = (record for _, record in iter_records(db, status=wanted))
            what = f"{status.value} example(s)"
        elif format is ExportFormat.hf:
            if out is None:
                raise FtbotError("--format hf writes a dataset directory: give it with --out DIR")
            import datasets  # heavy ML library (imports pyarrow, pandas...): kept out of every other command

            datasets.disable_progress_bars()  # our own one-line summary follows
            count = exports.save_hf_dataset(db, out, status=wanted, overwrite=force)
            err_console.print(
                f"Saved {count} {status.value} example(s) to {escape(str(out))} "
                "(load with datasets.load_from_disk)."
            )
            return
        else:
            records = (record for _, record in pair_records(db))
            if format is ExportFormat.trl_dpo:
                records = (exports.trl_preference_row(record) for record in records)
            what = "preference pair(s)"

        if out is None:
            count = exports.write_jsonl(records, sys.stdout)
            sys.stdout.flush()
        else:
            count = exports.write_jsonl_file(records, out)
    destination = "stdout" if out is None else str(out)
    err_console.print(f"Wrote {count} {what} to {escape(destination)}.")


# --- examples list -----------------------------------------------------------------------------


def _source(example: Example) -> str:
    if example.source_kind == "import" and example.source_file:
        return f"{Path(example.source_file).name}:{example.source_line}"
    if example.source_channel:
        return f"#{example.source_channel} {example.source_ts or ''}".strip()
    return example.source_kind


def _first(messages: list[dict[str, Any]], role: str) -> str:
    for message in messages if role == "user" else reversed(messages):
        if message.get("role") == role and isinstance(message.get("content"), str):
            text = " ".join(message["content"].split())
            return text if len(text) <= 60 else text[:59] + "…"
    return ""


def list_command(
    status: Annotated[StatusChoice | None, typer.Option("--status", help="Only examples with this status.")] = None,
    limit: Annotated[int, typer.Option("--limit", "-n", min=0, max=MAX_STORED_ID, help="At most N examples (0: all).")] = 50,
    offset: Annotated[int, typer.Option("--offset", min=0, max=MAX_STORED_ID, help="Skip the first N.")] = 0,
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON (records included).")] = False,
) -> None:
    """List stored examples, oldest first."""
    wanted = None if status in (None, StatusChoice.all) else status.value
    with database_errors(), open_database() as db:
        examples = list_examples(db, status=wanted, limit=limit or None, offset=offset)
        counts = count_by_status(db)

    if as_json:
        print_json(
            {
                "counts": counts,
                "examples": [
                    {
                        "id": example.id,
                        "status": example.status,
                        "source_kind": example.source_kind,
                        "source": _source(example),
                        "source_permalink": example.source_permalink,
                        "source_file": example.source_file,
                        "source_line": example.source_line,
                        "captured_by": example.captured_by,
                        "approved_by": example.approved_by,
                        "approved_at": example.approved_at.isoformat() if example.approved_at else None,
                        "tags": example.tags,
                        "content_hash": example.content_hash,
                        "created_at": example.created_at.isoformat(),
                        "updated_at": example.updated_at.isoformat(),
                        "record": example_record(example),
                    }
                    for example in examples
                ],
            }
        )
        return

    matching = sum(counts.values()) if wanted is None else counts.get(wanted, 0)
    if not examples:
        console.print(
            "No examples yet: capture replies in Slack or run `ftbot import FILE`."
            if not matching
            else f"No examples at offset {offset} (there are {matching})."
        )
        return
    table = Table(show_lines=False, header_style="bold")
    # Identifying columns never wrap; the message previews take the remaining width.
    for column in ("id", "status", "source"):
        table.add_column(column, no_wrap=True)
    table.add_column("question", ratio=1, overflow="fold")
    table.add_column("answer", ratio=1, overflow="fold")
    table.add_column("approved by", overflow="ellipsis")
    for example in examples:
        table.add_row(
            str(example.id),
            example.status,
            escape(_source(example)),
            escape(_first(example.messages, "user")),
            escape(_first(example.messages, "assistant")),
            escape(example.approved_by or ""),
        )
    console.print(table)
    totals = ", ".join(f"{name} {count}" for name, count in counts.items())
    console.print(f"Showing {len(examples)} of {matching} ({totals}).", highlight=False)


# --- db ----------------------------------------------------------------------------------------


class DatabaseInfo(TypedDict):
    """What ``ftbot db info`` shows (the object ``--json`` prints)."""

    url: str
    revision: str | None
    head: str
    examples: dict[str, int]
    preference_pairs: int


def db_info(as_json: Annotated[bool, typer.Option("--json", help="Print JSON.")] = False) -> None:
    """Show which database ftbot uses, its schema revision and what it holds."""
    from storage.migrate import current_revision, head_revision  # Alembic (about 0.1 s): only for the db commands

    with database_errors(), open_database() as db:
        info: DatabaseInfo = {
            "url": db.url,
            "revision": current_revision(db),
            "head": head_revision(),
            "examples": count_by_status(db),
            "preference_pairs": count_pairs(db),
        }
    if as_json:
        print_json(info)
        return
    console.print(f"database  {escape(info['url'])}", highlight=False)
    console.print(f"schema    revision {info['revision']} (this ftbot: {info['head']})", highlight=False)
    console.print(
        "examples  " + ", ".join(f"{name} {count}" for name, count in info["examples"].items())
        + f"; preference pairs {info['preference_pairs']}",
        highlight=False,
    )


def db_upgrade() -> None:
    """Create or upgrade the database schema (ftbot also does this whenever it opens the database)."""
    from storage.migrate import current_revision  # Alembic (about 0.1 s): only for the db commands

    with database_errors(), open_database() as db:
        console.print(f"{escape(db.url)} is at schema revision {current_revision(db)}.", highlight=False)


def register(app: typer.Typer) -> None:
    app.command("import")(import_command)
    app.command("export")(export_command)

    examples_app = typer.Typer(help="Browse the stored training examples.", no_args_is_help=True)
    examples_app.command("list")(list_command)
    app.add_typer(examples_app, name="examples")

    db_app = typer.Typer(help="The database: where it is, its schema revision.", no_args_is_help=True)
    db_app.command("info")(db_info)
    db_app.command("upgrade")(db_upgrade)
    app.add_typer(db_app, name="db")

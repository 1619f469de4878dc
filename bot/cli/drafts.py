"""CLI commands: ``ftbot drafts list`` and ``ftbot drafts stats`` — the replies the model in use drafted in Slack
(``@ftbot draft``), what agents did with them, and how often each model's drafts were sent as they were.

Drafts are made in Slack only; these commands read them.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Annotated, TypedDict

import typer
from rich.markup import escape

from bot.cli.common import console, database_errors, json_errors, open_database, print_json, print_table
from storage.drafts import list_drafts
from storage.errors import FtbotError
from storage.jobs import active_model
from storage.model_names import display_name
from storage.models import ReplyDraft, stored_id

if TYPE_CHECKING:
    from matplotlib.figure import Figure

# What ``ftbot drafts list`` shows of a draft's text in its table (--json has it all): short enough that "draft: …"
# fits a 60-column terminal, where the table gives way to one line per field.
_SHOWN_CHARACTERS = 48
UNDECIDED = "pending"


class DraftRow(TypedDict):
    """One draft as ``ftbot drafts list --json`` prints it."""

    id: int
    model: str
    outcome: str  # a DraftOutcome value, or "pending" while nobody has decided
    draft: str
    final: str | None  # the text posted in the thread (Send or Edit…), None otherwise
    agent: str  # the agent the draft was made for
    created_at: str


def draft_row(draft: ReplyDraft) -> DraftRow:
    return {"id": stored_id(draft), "model": draft.model, "outcome": draft.outcome or UNDECIDED, "draft": draft.draft,
            "final": draft.final_text, "agent": draft.requested_by, "created_at": draft.created_at.isoformat()}


def list_command(
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON: id, model, outcome, draft, final, agent, created_at.")] = False,
    limit: Annotated[int, typer.Option("--limit", "-n", min=1, help="How many drafts, newest first.")] = 20,
) -> None:
    """Recent drafts, newest first: model, outcome (sent, edited, discarded, expired; pending while undecided), text."""
    with database_errors(), open_database() as db:
        rows = [draft_row(draft) for draft in list_drafts(db, limit=limit)]
    if as_json:
        print_json(rows)
        return
    if not rows:
        console.print("No drafts yet: in Slack, mention @ftbot draft in a customer thread.")
        return
    print_table(["id", "model", "outcome", "agent", "created", "draft"], [
        [str(row["id"]), display_name(row["model"]), row["outcome"], row["agent"],
         row["created_at"][:16].replace("T", " "), _shortened(row["draft"])]
        for row in rows
    ], whole={"model"})


def _shortened(text: str) -> str:
    flat = " ".join(text.split())
    return flat if len(flat) <= _SHOWN_CHARACTERS else flat[:_SHOWN_CHARACTERS - 1] + "…"


def stats_command(
    as_json: Annotated[bool, typer.Option("--json", help="Print the statistics as JSON.")] = False,
    chart: Annotated[Path | None, typer.Option("--chart", help="Also write a PNG of acceptance by week to this file.")] = None,
) -> None:
    """Per model: drafts sent unedited (95% interval), edited, discarded, latency; the model in use vs the one before."""
    # scipy and rapidfuzz (and matplotlib for --chart): imported when the command runs, so `ftbot --help` stays fast.
    from trainers.drafts.stats import draft_stats, draft_stats_figure

    with database_errors(), open_database() as db:
        in_use = active_model(db)
        stats = draft_stats(db, current_model=in_use.name if in_use is not None else None)
    if chart is not None:
        with json_errors(as_json):
            _write_chart(draft_stats_figure(stats), chart)
    if as_json:
        print_json(stats.to_json())
        return
    for line in stats.lines():
        console.print(escape(line), soft_wrap=True, highlight=False)
    if chart is not None:
        console.print(f"Chart written to {escape(str(chart))}", highlight=False)


def _write_chart(figure: Figure, path: Path) -> None:
    from trainers.plots import figure_png  # matplotlib: only when a chart is asked for

    try:
        figure_png(figure, path)
    except OSError as error:
        raise FtbotError(f"cannot write the chart to {path}: {error.strerror or error}") from None


def register(app: typer.Typer) -> None:
    drafts_app = typer.Typer(help="Replies the model in use drafted in Slack (@ftbot draft) and what agents did with them.",
                             no_args_is_help=True)
    drafts_app.command("list")(list_command)
    drafts_app.command("stats")(stats_command)
    app.add_typer(drafts_app, name="drafts")

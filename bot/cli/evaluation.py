"""CLI commands: ``ftbot results`` and ``ftbot eval add|list|close`` — twins of ``/ft results`` and ``/ft eval``.

``ftbot results --json`` prints the latest round's numbers from the candidate's side (wins, losses, ties, win rate
with its 95% Wilson interval, the exact sign-test p-value, …) and every comparison with its Slack ``message_ts``,
the side the candidate was shown on and its votes. Posting comparisons needs Slack: start rounds with ``/ft eval``.
"""

from __future__ import annotations

import getpass
from pathlib import Path
from typing import Annotated, Any, TypedDict

import typer
from rich.markup import escape
from rich.table import Table

from bot.cli.common import cli_settings, console, database_errors, json_errors, open_database, print_json, print_table
from bot.payloads import MAX_STORED_ID
from storage import evals
from storage.errors import DataFileError, FtbotError, ValidationFailed
from storage.eval_prompts import add_eval_prompt, list_eval_prompts, remove_eval_prompt, split_prompt
from storage.evals import (
    EvalRoundNotFound,
    RoundStatus,
    close_round,
    count_votes,
    get_round,
    latest_round,
    pairs_from_round,
    round_comparisons,
)
from storage.model_names import display_name
from storage.models import stored_id
from trainers.data.jsonl import read_jsonl


def results(
    round_id: Annotated[int | None, typer.Argument(min=1, max=MAX_STORED_ID,
                                                 help="The round (default: the latest one with posted comparisons).")] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print the results as JSON.")] = False,
    chart: Annotated[Path | None, typer.Option("--chart", help="Also write the chart PNG to this file.")] = None,
) -> None:
    """Win rate with its 95% interval, sign test, ties, position check and votes per voter of an evaluation round."""
    # The statistics import scipy (about 0.7 s): imported when a command needs them, so `ftbot --help` stays fast.
    from trainers.evaluation.results import round_report

    with database_errors(), open_database() as db:
        with json_errors(as_json):
            report = round_report(db, round_id)
        if chart is not None:
            from trainers.evaluation.charts import report_png  # scipy and matplotlib: only when a chart is asked for

            report_png(report, path=chart)
        if as_json:
            print_json(report.to_json())
            return
        for line in report.lines():
            console.print(escape(line), soft_wrap=True, highlight=False)
        if chart is not None:
            console.print(f"Chart written to {escape(str(chart))}", highlight=False)


def add(
    question: Annotated[str | None, typer.Argument(help="A customer question (one user turn).")] = None,
    file: Annotated[
        Path | None,
        typer.Option("--file", "-f", help="JSONL of conversations ({\"messages\": [...]}) ending with the customer's question, "
                     "or SFT lines (the last assistant turn is dropped)."),
    ] = None,
    system: Annotated[
        str | None, typer.Option("--system", help="System prompt for a question given as text (default: $FTBOT_SYSTEM_PROMPT).")
    ] = None,
) -> None:
    """Add held-out questions to the evaluation set (the twin of ``/ft eval add``)."""
    if (question is None) == (file is None):
        raise ValidationFailed("give a question or --file (one of them)")
    with database_errors(), open_database() as db:
        # (line in the file, the conversation up to the question, the team's reply when the line has one)
        conversations: list[tuple[int | None, list[dict[str, Any]], str | None]] = []
        if question is not None:
            prompt = system or cli_settings().system_prompt
            conversations.append((None, [{"role": "system", "content": prompt}, {"role": "user", "content": question}], None))
        else:
            assert file is not None
            for line, value, issue in read_jsonl(file):
                if issue is not None:
                    raise DataFileError(f"{file}:{line}: {issue.message}")
                if not isinstance(value, dict) or not isinstance(value.get("messages"), list):
                    raise ValidationFailed(f"{file}:{line}: expected an object with a 'messages' list")
                messages, reference = split_prompt(value["messages"])
                conversations.append((line, messages, reference))
        added = known = 0
        for source_line, messages, reference in conversations:
            try:
                result = add_eval_prompt(db, messages, reference=reference, added_by=getpass.getuser())
            except ValidationFailed as error:
                where = f"{file}:{source_line}: " if source_line is not None else ""
                raise ValidationFailed(f"{where}{error} (questions before this line were added)") from None
            added += result.created
            known += not result.created
        console.print(f"Added {added} evaluation question(s); {known} were already in the set.", highlight=False)


def questions(as_json: Annotated[bool, typer.Option("--json", help="Print JSON.")] = False) -> None:
    """The questions added by hand (`/ft eval add`, `ftbot eval add`); rounds also use each model's validation split."""
    with database_errors(), open_database() as db:
        rows = [{"id": p.id, "question": p.messages[-1]["content"], "turns": len(p.messages), "source": p.source_key,
                 "added_by": p.added_by} for p in list_eval_prompts(db)]
        if as_json:
            print_json(rows)
            return
        if not rows:
            console.print("No questions added by hand yet: `ftbot eval add \"…\"` or /ft eval add in Slack.")
            return
        table = Table("id", "question", "turns", "added by")
        for row in rows:
            question = row["question"] if len(row["question"]) <= 80 else row["question"][:79] + "…"
            table.add_row(str(row["id"]), escape(question), str(row["turns"]), escape(row["added_by"] or ""))
        console.print(table)


def remove(question_id: Annotated[int, typer.Argument(min=1, max=MAX_STORED_ID,
                                                      help="The question's id (`ftbot eval questions`).")]) -> None:
    """Remove a question added by hand (rounds already posted keep their copy)."""
    with database_errors(), open_database() as db:
        if not remove_eval_prompt(db, question_id):
            raise FtbotError(f"there is no added question #{question_id}; `ftbot eval questions` lists them.")
        console.print(f"Removed question #{question_id}.", highlight=False)


class RoundRow(TypedDict):
    """One round as ``ftbot eval list`` shows it (and prints with --json); the models stay hidden while it is active."""

    id: int
    status: str
    channel: str | None
    candidate: str | None
    baseline: str | None
    questions: int
    votes: int
    created_at: str | None
    closes_at: str | None


def list_rounds(as_json: Annotated[bool, typer.Option("--json", help="Print JSON.")] = False) -> None:
    """Evaluation rounds: status, models (hidden while voting is open), questions and votes."""
    with database_errors(), open_database() as db:
        rows: list[RoundRow] = []
        for r in evals.list_rounds(db):
            round_id = stored_id(r)
            revealed = r.status in RoundStatus.REVEALED
            rows.append({
                "id": round_id, "status": r.status, "channel": r.channel,
                "candidate": r.candidate_model if revealed else None, "baseline": r.baseline_model if revealed else None,
                "questions": len(round_comparisons(db, round_id)), "votes": count_votes(db, round_id),
                "created_at": r.created_at.isoformat() if r.created_at else None,
                "closes_at": r.closes_at.isoformat() if r.closes_at else None,
            })
        if as_json:
            print_json(rows)
            return
        if not rows:
            console.print("No evaluation rounds yet: start one with /ft eval in Slack.")
            return
        hidden = "(hidden until closed)"
        print_table(["round", "status", "candidate", "baseline", "questions", "votes"], [
            [str(row["id"]), row["status"], display_name(row["candidate"]) if row["candidate"] else hidden,
             display_name(row["baseline"]) if row["baseline"] else hidden, str(row["questions"]), str(row["votes"])]
            for row in rows
        ], whole={"candidate", "baseline"})


def close(
    round_id: Annotated[int | None, typer.Argument(min=1, max=MAX_STORED_ID, help="The round (default: the latest open one).")] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print the results as JSON.")] = False,
) -> None:
    """Close voting on a round and store its decided comparisons as DPO pairs (nothing is posted to Slack)."""
    # scipy (about 0.7 s): imported when the command runs, so `ftbot --help` stays fast.
    from trainers.evaluation.results import round_report

    with database_errors(), open_database() as db:
        round_ = get_round(db, round_id) if round_id is not None else latest_round(db, statuses=RoundStatus.VOTABLE)
        if round_ is None:
            raise EvalRoundNotFound("no evaluation round is open for voting.")
        closing = stored_id(round_)
        if not close_round(db, closing):
            raise FtbotError(f"round #{closing} is {round_.status}, not open for voting.")
        created = sum(result.created for result in pairs_from_round(db, closing))
        report = round_report(db, closing)
        if as_json:
            print_json({**report.to_json(), "pairs_added": created})
            return
        console.print(f"Closed round #{round_.id}; {created} new preference pair(s) (`ftbot export --format dpo`, "
                      "`ftbot train --method dpo`).", highlight=False)
        for line in report.lines():
            console.print(escape(line), soft_wrap=True, highlight=False)


def score(
    model: Annotated[str | None, typer.Argument(help="Model name from `ftbot models` (default: the one in use, else the newest).")] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON.")] = False,
) -> None:
    """Held-out loss of a local model and of its baseline (its base, or its DPO parent) on replies it never trained on."""
    # Scoring loads the model (torch, transformers): imported when this command runs, so `ftbot --help` stays fast.
    from trainers.evaluation.score import model_to_score, score_in_worker, score_model

    settings = cli_settings()
    with database_errors(), open_database() as db:
        with json_errors(as_json):
            chosen = model_to_score(db, model)
            if settings.ray_address:  # the model loads on the cluster's GPUs, not on this machine
                report = score_in_worker(chosen.name, database_url=db.engine.url.render_as_string(hide_password=False),
                                         settings=settings)
            else:
                report = score_model(db, chosen)
    if as_json:
        print_json(report.to_json())
        return
    console.print(escape(report.line()), soft_wrap=True, highlight=False)


def register(app: typer.Typer) -> None:
    app.command("results")(results)
    eval_app = typer.Typer(help="Evaluation rounds and the held-out question set (rounds start in Slack with /ft eval).",
                           no_args_is_help=True)
    eval_app.command("add")(add)
    eval_app.command("questions")(questions)
    eval_app.command("remove")(remove)
    eval_app.command("list")(list_rounds)
    eval_app.command("close")(close)
    eval_app.command("score")(score)
    app.add_typer(eval_app, name="eval")


"""CLI commands for the data checks: ``ftbot validate`` and ``ftbot price``.

Both run ``trainers.data.report.build_report`` over a JSONL file, or, without FILE, over the approved examples
in the database. Exit codes: 0 when the data has no errors, 1 when it has errors or cannot be read
(one line on stderr, or a JSON object with ``ok: false`` under --json), 2 for wrong command-line usage.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer
from rich.console import Console
from rich.markup import escape
from rich.progress import BarColumn, DownloadColumn, Progress, TextColumn, TimeRemainingColumn
from rich.table import Table

from bot.cli.common import cli_settings
from bot.payloads import MAX_EPOCHS
from storage.db import Database
from storage.errors import FtbotError
from storage.examples import approved_records
from trainers.data.issues import Issue
from trainers.data.pricing import inference_cost, load_price_table, on_prem_estimate, roi_estimate

if TYPE_CHECKING:  # the report engine imports numpy (about 0.1 s): the commands import it when they run
    from trainers.data.report import DatasetReport

console = Console(highlight=False)
err_console = Console(stderr=True, highlight=False)

PROGRESS_MIN_BYTES = 8 * 1024 * 1024
ISSUES_SHOWN = 20
DATABASE_LABEL = "approved examples (database)"


def _default_model() -> str:
    return cli_settings().openai_model


def _emit_json(value: object) -> None:
    sys.stdout.write(json.dumps(value, ensure_ascii=False, indent=2) + "\n")


def _fail(message: str, *, code: str, as_json: bool, line: int | None = None) -> None:
    if as_json:
        _emit_json({"ok": False, "error": {"code": code, "line": line, "message": message}})
    else:
        err_console.print(f"[red]error:[/red] {escape(message)}", soft_wrap=True)
    raise typer.Exit(1)


@contextmanager
def _user_errors(as_json: bool) -> Iterator[None]:
    """Named errors (and unreachable databases) become one clear line and exit code 1, never a traceback."""
    try:
        yield
    except FtbotError as error:
        _fail(str(error), code=getattr(error, "code", type(error).__name__), as_json=as_json, line=getattr(error, "line", None))
    except Exception as error:  # database drivers raise their own types; say what failed, in one line
        if type(error).__module__.split(".")[0] not in ("sqlalchemy", "psycopg", "sqlite3"):
            raise
        reason = str(getattr(error, "orig", None) or error).strip().splitlines()[0]
        _fail(
            f"cannot read the database: {reason}. Check FTBOT_DATABASE_URL (or FTBOT_HOME) and that the server is running",
            code="database",
            as_json=as_json,
        )


def _run_report(file: Path | None, *, model: str, epochs: int | None, kind: str, pii: bool, as_json: bool) -> DatasetReport:
    """build_report over FILE (with a progress bar on big files) or over the approved examples."""
    from trainers.data.report import build_report  # numpy: only when a report is built, so `ftbot --help` stays fast

    if file is None:
        return _database_report(model=model, epochs=epochs, kind=kind, pii=pii)
    settings = cli_settings()
    prices = load_price_table(settings.prices_file)
    max_line_bytes = settings.max_line_bytes
    progress_wanted = not as_json and err_console.is_terminal and file.is_file() and file.stat().st_size >= PROGRESS_MIN_BYTES
    if not progress_wanted:
        return build_report(file, model=model, epochs=epochs, kind=kind, pii=pii, prices=prices, max_line_bytes=max_line_bytes)
    columns = (TextColumn("checking"), BarColumn(), DownloadColumn(), TimeRemainingColumn())
    with Progress(*columns, console=err_console, transient=True) as progress:
        task = progress.add_task("check", total=file.stat().st_size)
        update: Callable[[int, int], None] = lambda done, _total: progress.update(task, completed=done)  # noqa: E731
        return build_report(file, model=model, epochs=epochs, kind=kind, pii=pii, progress=update, prices=prices,
                            max_line_bytes=max_line_bytes)


def _database_report(*, model: str, epochs: int | None, kind: str, pii: bool) -> DatasetReport:
    from trainers.data.report import build_report  # numpy: only when a report is built, so `ftbot --help` stays fast

    settings = cli_settings()
    database = Database.open(settings.database_url)
    try:
        return build_report(approved_records(database), model=model, epochs=epochs, kind=kind, pii=pii, unit="example",
                            label=DATABASE_LABEL, prices=load_price_table(settings.prices_file))
    finally:
        database.close()


# --- human output ----------------------------------------------------------------------------------


def _money(value: float | None) -> str:
    if value is None:
        return "n/a"
    return f"${value:,.2f}" if value >= 0.01 or value == 0 else f"${value:,.4f}"


def _print_summary(report: DatasetReport) -> None:
    data = report.to_json()
    tokens = data["tokens"]
    table = Table(title=f"{escape(data['source'])} · {escape(data['model'])} ({data['encoding']})", show_header=False, title_justify="left")
    table.add_column("", style="bold")
    table.add_column("")
    kind = {"sft": "chat (SFT)", "dpo": "preference (DPO)"}.get(data["kind"] or "", "-")
    table.add_row(
        "examples",
        f"{data['examples']:,} read, {data['valid_examples']:,} valid, {data['invalid_examples']:,} with errors · {kind}",
    )
    if data["blank_lines"]:
        table.add_row("blank lines", f"{data['blank_lines']:,} (skipped)")
    table.add_row(
        "tokens / example",
        f"min {tokens['min']:,} · median {tokens['median']:,} · p90 {tokens['p90']:,} · max {tokens['max']:,} "
        f"(limit {data['context_limit']:,})",
    )
    assistant = tokens["assistant"]
    table.add_row("assistant tokens", f"median {assistant['median']:,} · p90 {assistant['p90']:,} · total {assistant['total']:,}")
    table.add_row("tokens (valid)", f"{tokens['total']:,}")
    epochs = "-" if data["epochs"] is None else f"{data['epochs']} ({data['epochs_source']})"
    table.add_row("epochs", epochs)
    table.add_row("billed tokens", f"{data['billed_tokens']:,}")
    price = data["training_price_per_1m_tokens"]
    cost = _money(data["estimated_cost_usd"])
    if price is not None:
        cost += f" at ${price:g} per 1M training tokens (prices as of {data['prices_as_of']})"
    table.add_row("estimated cost", cost)
    console.print(table)
    for note in data["notes"]:
        console.print(f"note: {escape(note)}", soft_wrap=True)


def _print_issues(title: str, issues: list[Issue], counts: dict[str, int], style: str) -> None:
    if not counts:
        return
    total = sum(counts.values())
    summary = ", ".join(f"{code} {count:,}" for code, count in sorted(counts.items(), key=lambda item: -item[1]))
    console.print(f"\n[{style}]{title}: {total:,}[/{style}] ({summary})", soft_wrap=True)
    table = Table(show_lines=False)
    table.add_column("line", justify="right")
    table.add_column("code", style=style)
    table.add_column("what to do", overflow="fold")
    for issue in issues[:ISSUES_SHOWN]:
        message = issue.message
        prefix = f"line {issue.line}: "
        if message.startswith(prefix):
            message = message[len(prefix) :]
        table.add_row("file" if issue.line is None else str(issue.line), issue.code, escape(message))
    console.print(table)
    if total > min(len(issues), ISSUES_SHOWN):
        console.print(f"… {total - min(len(issues), ISSUES_SHOWN):,} more; use --json for the full list (capped at 100 per code)")


def _print_report(report: DatasetReport) -> None:
    _print_summary(report)
    _print_issues("errors", report.errors, report.error_counts, "red")
    _print_issues("warnings", report.warnings, report.warning_counts, "yellow")
    if report.ok:
        console.print(f"\n[green]OK[/green]: {report.valid_examples:,} examples ready to upload.")
    else:
        console.print(f"\n[red]Not ready[/red]: fix the errors above ({sum(report.error_counts.values()):,} in all), then run this again.")


# --- commands --------------------------------------------------------------------------------------

FileArgument = Annotated[
    Path | None,
    typer.Argument(help="OpenAI fine-tuning JSONL (SFT chat or DPO lines). Without it: the approved examples in the database."),
]
ModelOption = Annotated[
    str | None,
    typer.Option("--model", "-m", help="OpenAI base model to count and price for "
                 "(default: $FTBOT_OPENAI_MODEL, else gpt-4o-mini-2024-07-18)."),
]
JsonOption = Annotated[bool, typer.Option("--json", help="Print the report as JSON (same facts).")]
KindOption = Annotated[str, typer.Option("--kind", help="auto, sft or dpo.")]
PiiOption = Annotated[bool, typer.Option("--pii/--no-pii", help="Scan for personal data (emails, phones, cards, IBANs, SSNs).")]


def validate_command(
    file: FileArgument = None,
    model: ModelOption = None,
    kind: KindOption = "auto",
    pii: PiiOption = True,
    as_json: JsonOption = False,
) -> None:
    """Check a fine-tuning dataset: errors that block upload, warnings, token counts and the cost.

    Exit code 0: no errors; 1: errors found or the file cannot be read.
    """
    if kind not in ("auto", "sft", "dpo"):
        raise typer.BadParameter("--kind must be auto, sft or dpo")
    chosen = model or _default_model()
    with _user_errors(as_json):
        report = _run_report(file, model=chosen, epochs=None, kind=kind, pii=pii, as_json=as_json)
    if as_json:
        _emit_json(report.to_json())
    else:
        _print_report(report)
    if not report.ok:
        raise typer.Exit(1)


def price_command(
    file: FileArgument = None,
    model: ModelOption = None,
    all_models: Annotated[bool, typer.Option("--all-models", help="Quote every fine-tunable model in the price table.")] = False,
    epochs: Annotated[int | None, typer.Option("--epochs", min=1, max=MAX_EPOCHS,
                                                              help="Epochs (default: OpenAI's automatic rule).")] = None,
    daily_requests: Annotated[int | None, typer.Option("--daily-requests", min=0, help="Requests per day, for ROI.")] = None,
    prompt_tokens_saved: Annotated[
        int | None,
        typer.Option("--prompt-tokens-saved", min=0,
                     help="Prompt tokens per request the fine-tune makes unnecessary (long system prompt, few-shot)."),
    ] = None,
    prompt_tokens: Annotated[
        int | None,
        typer.Option("--prompt-tokens", min=0, help="Prompt tokens per request today (default: the dataset's mean prompt + saved)."),
    ] = None,
    completion_tokens: Annotated[
        int | None, typer.Option("--completion-tokens", min=0, help="Completion tokens per request (default: the dataset's mean reply).")
    ] = None,
    baseline_model: Annotated[
        str | None, typer.Option("--baseline-model", help="The model the team uses today (default: the fine-tune's base model).")
    ] = None,
    gpu_hour_price: Annotated[float | None, typer.Option("--gpu-hour-price", min=0, help="On-prem: price of one GPU-hour (USD).")] = None,
    tokens_per_second: Annotated[
        float | None, typer.Option("--tokens-per-second", min=0, help="On-prem: training throughput (tokens/s).")
    ] = None,
    as_json: JsonOption = False,
) -> None:
    """Price a fine-tune of the dataset: training cost, fine-tuned inference, ROI and an on-prem estimate.

    Exit code 0: priced; 1: the data has errors (the quote counts only the valid examples) or cannot be read.
    """
    if all_models and model:
        raise typer.BadParameter("use either --model or --all-models")
    if (gpu_hour_price is None) != (tokens_per_second is None):
        raise typer.BadParameter("the on-prem estimate needs both --gpu-hour-price and --tokens-per-second")
    chosen = model or _default_model()
    result: dict[str, Any] = {}
    with _user_errors(as_json):
        table = load_price_table(cli_settings().prices_file)
        table.get(chosen) if not all_models else None  # unknown model: clear error before reading anything
        if all_models:
            from trainers.data.report import quote_models  # numpy: only when a report is built (see _run_report)

            # The chosen model first: its encoding's pass is the report shown above the quotes.
            models = table.models_to_quote(chosen)
            reports, quotes = quote_models(
                lambda: file if file is not None else _approved_items(), models, epochs=epochs, prices=table,
                unit="line" if file is not None else "example", label=None if file is not None else DATABASE_LABEL,
            )
            report = reports[next(iter(reports))]
            result = report.to_json()
            result["quotes"] = [quote.to_json() for quote in quotes]
            quotes_by_model = {quote.model: quote for quote in quotes}
            fine_tuned = table.get(chosen).name
            training_usd = quotes_by_model[fine_tuned].cost_usd if fine_tuned in quotes_by_model else report.estimated_cost_usd
        else:
            report = _run_report(file, model=chosen, epochs=epochs, kind="auto", pii=True, as_json=as_json)
            result = report.to_json()
            fine_tuned = chosen
            training_usd = report.estimated_cost_usd
        entry = table.get(fine_tuned)
        valid = max(report.valid_examples, 1)
        mean_reply = report.assistant_tokens.total / valid
        mean_prompt = max(report.tokens.total - report.assistant_tokens.total, 0) / valid
        saved = prompt_tokens_saved or 0
        per_request_in = prompt_tokens if prompt_tokens is not None else round(mean_prompt) + saved
        per_request_out = completion_tokens if completion_tokens is not None else round(mean_reply)
        per_request = inference_cost(entry, input_tokens=per_request_in - saved, output_tokens=per_request_out)
        result["inference"] = {
            "model": entry.name,
            "prompt_tokens": per_request_in - saved,
            "completion_tokens": per_request_out,
            "cost_per_1k_requests_usd": None if per_request is None else round(per_request * 1000, 4),
        }
        if daily_requests is not None:
            roi = roi_estimate(
                table,
                baseline_model=baseline_model or entry.name,
                fine_tuned_model=entry.name,
                daily_requests=daily_requests,
                prompt_tokens=per_request_in,
                prompt_tokens_saved=saved,
                completion_tokens=per_request_out,
                training_cost_usd=training_usd or 0.0,
            )
            result["roi"] = roi.to_json()
        if gpu_hour_price is not None and tokens_per_second is not None:
            trained = report.tokens.total * (report.epochs or epochs or 0)
            result["on_prem"] = on_prem_estimate(trained, gpu_hour_price=gpu_hour_price, tokens_per_second=tokens_per_second).to_json()
    if as_json:
        _emit_json(result)
    else:
        _print_summary(report)
        _print_issues("errors", report.errors, report.error_counts, "red")
        _print_price_extras(result)
        if not report.ok:
            console.print(f"\n[red]The data has errors[/red]: the quote counts only the {report.valid_examples:,} valid examples.")
    if not report.ok:
        raise typer.Exit(1)


def _approved_items() -> Iterator[tuple[int, dict[str, Any]]]:
    """Approved examples from the database, for a second pass (--all-models with another encoding)."""
    database = Database.open(cli_settings().database_url)

    def items() -> Iterator[tuple[int, dict[str, Any]]]:
        try:
            yield from approved_records(database)
        finally:
            database.close()

    return items()


def _print_price_extras(result: dict[str, Any]) -> None:
    if "quotes" in result:
        table = Table(title="Training cost by model", title_justify="left")
        for column in ("model", "epochs", "billed tokens", "$ / 1M", "cost"):
            table.add_column(column, justify="left" if column == "model" else "right")
        for quote in sorted(result["quotes"], key=lambda quote: quote["cost_usd"] or 0):
            table.add_row(quote["model"], str(quote["epochs"]), f"{quote['billed_tokens']:,}", f"{quote['price_per_1m']:g}",
                          _money(quote["cost_usd"]))
        console.print(table)
    inference = result["inference"]
    console.print(
        f"Fine-tuned {inference['model']}: {_money(inference['cost_per_1k_requests_usd'])} per 1,000 requests "
        f"({inference['prompt_tokens']:,} prompt + {inference['completion_tokens']:,} completion tokens each)"
    )
    roi = result.get("roi")
    if roi:
        table = Table(title="Return on investment", show_header=False, title_justify="left")
        table.add_column("", style="bold")
        table.add_column("")
        table.add_row("today", f"{roi['baseline_model']}: {_money(roi['daily_cost_today_usd'])}/day "
                      f"({roi['prompt_tokens_today']:,.0f} prompt tokens/request)")
        table.add_row("fine-tuned", f"{roi['fine_tuned_model']}: {_money(roi['daily_cost_fine_tuned_usd'])}/day "
                      f"({roi['prompt_tokens_fine_tuned']:,.0f} prompt tokens/request)")
        table.add_row("savings", f"{_money(roi['daily_savings_usd'])}/day, {_money(roi['monthly_savings_usd'])}/month")
        days = roi["break_even_days"]
        if days is None:
            when = "never at these figures (the fine-tuned model costs more per day)"
        elif days < 1:
            when = f"{days * 24:,.1f} hours (training {_money(roi['training_cost_usd'])})"
        else:
            when = f"{days:,.1f} days (training {_money(roi['training_cost_usd'])})"
        table.add_row("break-even", when)
        console.print(table)
    on_prem = result.get("on_prem")
    if on_prem:
        console.print(
            f"On-prem: {on_prem['trained_tokens']:,} trained tokens at {on_prem['tokens_per_second']:,.0f} tokens/s = "
            f"{on_prem['gpu_hours']:,.2f} GPU-hours × ${on_prem['gpu_hour_price']:g} = {_money(on_prem['cost_usd'])}"
        )


def register(app: typer.Typer) -> None:
    app.command("validate")(validate_command)
    app.command("price")(price_command)

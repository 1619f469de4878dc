"""CLI commands: ``ftbot train``, ``ftbot jobs``, ``ftbot models``, ``ftbot use``, ``ftbot cancel``.

The twins of ``/ft train``, ``/ft jobs``, ``/ft models``, ``/ft use`` and ``/ft cancel``, on the same engine
(``trainers.training.jobs``). ``ftbot train`` prints the quote and asks before starting (``--yes`` skips the question);
``--wait`` follows the job to its end; ``--json`` prints the job record on stdout (progress goes to stderr).
"""

from __future__ import annotations

import getpass
import json
from typing import Annotated, Any

import typer
from rich.markup import escape

from bot.cli.common import cli_settings, console, database_errors, err_console, open_database, print_table
from bot.payloads import MAX_EPOCHS, MAX_STORED_ID
from storage.artifacts import is_remote
from storage.errors import OverBudget
from storage.jobs import discard_quote, get_job, job_record, list_jobs, list_models, model_record, use_model
from storage.model_names import display_name, job_model_name
from storage.models import stored_id
from storage.vocabulary import JobStatus, TrainingBackend, TrainingMethod
from trainers.training.jobs import (
    REMOTE_BACKENDS,
    JobUpdate,
    cancel_job,
    progress_line,
    quote_job,
    refresh_job,
    start_job,
    wait_for_job,
)
from trainers.training.quote import quote_lines
from trainers.training.together_backend import together_key_missing


def train(
    backend: Annotated[
        TrainingBackend, typer.Option("--backend", "-b", help="Where to train: on-prem (local), OpenAI, or Together AI "
                                      "(its LoRA adapter is downloaded and runs on-prem).")
    ] = TrainingBackend.LOCAL,
    base_model: Annotated[
        str | None,
        typer.Option("--base-model", help="Local: HF id or directory (default $FTBOT_LOCAL_BASE_MODEL, "
                     "else Qwen/Qwen2.5-0.5B-Instruct; offline: 'ftbot:smollm2' (bundled SmolLM2-135M), 'ftbot:tiny' (test model))."),
    ] = None,
    model: Annotated[str | None, typer.Option("--model", help="OpenAI / Together AI: the base model to fine-tune "
                                              "(default $FTBOT_OPENAI_MODEL / $FTBOT_TOGETHER_MODEL).")] = None,
    method: Annotated[
        TrainingMethod, typer.Option("--method", help="sft on approved examples, dpo on preference pairs.")
    ] = TrainingMethod.SFT,
    from_model: Annotated[
        str | None,
        typer.Option("--from", help="DPO: the registered model to continue (default: the one in use, "
                     "else the newest of this back end); 'base' = the plain base model."),
    ] = None,
    epochs: Annotated[int | None, typer.Option("--epochs", min=1, max=MAX_EPOCHS,
                                                              help="Epochs (OpenAI default: its auto rule; local, Together: 3).")] = None,
    max_steps: Annotated[int | None, typer.Option("--max-steps", min=1, help="Local: stop after this many optimizer steps.")] = None,
    validation_fraction: Annotated[float, typer.Option("--validation-fraction", help="Share of examples held out for validation.")] = 0.1,
    load_in_4bit: Annotated[
        bool | None,
        typer.Option("--load-in-4bit/--no-load-in-4bit", help="Local: 4-bit NF4 base (default: on with CUDA, off on CPU)."),
    ] = None,
    merge: Annotated[bool, typer.Option("--merge", help="Local: also export a merged full model.")] = False,
    num_processes: Annotated[
        int | None, typer.Option("--num-processes", min=1, help="Local: GPUs to train on (runs under `accelerate launch`).")
    ] = None,
    redact_pii: Annotated[
        bool,
        typer.Option("--redact-pii", help="OpenAI / Together AI: upload with personal data redacted ([EMAIL], [PHONE], ...); "
                     "the snapshot stays unchanged."),
    ] = False,
    allow_pii: Annotated[bool, typer.Option("--allow-pii", help="OpenAI / Together AI: upload examples with unredacted "
                                            "personal data anyway.")] = False,
    over_budget: Annotated[bool, typer.Option("--over-budget", help="As an admin: start even above FTBOT_BUDGET_USD.")] = False,
    yes: Annotated[bool, typer.Option("--yes", "-y", help="Start without asking.")] = False,
    wait: Annotated[bool, typer.Option("--wait", help="Follow the job until it finishes.")] = False,
    as_json: Annotated[bool, typer.Option("--json", help="Print the job record as JSON on stdout.")] = False,
) -> None:
    """Quote a training run on the approved examples (or pairs), then start it."""
    out = err_console if as_json else console
    if backend == TrainingBackend.TOGETHER and together_key_missing():
        err_console.print("[red]error:[/red] TOGETHER_API_KEY is not set: export it (TOGETHER_BASE_URL for a proxy) "
                          "or train with --backend local.", soft_wrap=True)
        raise typer.Exit(1)
    with database_errors(), open_database() as db:
        local_options: dict[str, Any] = {}
        if max_steps:
            local_options["max_steps"] = max_steps
        if load_in_4bit is not None:
            local_options["load_in_4bit"] = load_in_4bit
        if merge:
            local_options["merge"] = True
        if num_processes:
            local_options["num_processes"] = num_processes
        chosen = (base_model or model) if backend == TrainingBackend.LOCAL else (model or base_model)
        quoted = quote_job(
            db, backend=backend.value, method=method.value, model=chosen, parent=from_model, epochs=epochs,
            created_by=getpass.getuser(),
            validation_fraction=validation_fraction, local_options=local_options, settings=cli_settings(), check_base=True,
        )
        job, quote = quoted.job, quoted.quote
        job_id = stored_id(job)
        out.print(f"[bold]Training quote · job #{job_id}[/bold]")
        for line in quote_lines(quote):
            out.print(escape(line), soft_wrap=True)
        redact_pii = redact_pii and backend.value in REMOTE_BACKENDS
        blockers = quote.blockers(admin_confirmed=over_budget, allow_pii=allow_pii, redact_pii=redact_pii)
        if blockers:
            discard_quote(db, job_id, reason="blocked: " + "; ".join(blockers))
            for reason in blockers:
                err_console.print(f"[red]blocked:[/red] {escape(reason)}", soft_wrap=True)
            raise typer.Exit(1)
        if not yes and not typer.confirm("Start training?", default=False, err=as_json):
            discard_quote(db, job_id, reason="declined at the CLI prompt")
            out.print(f"Not started; quote #{job_id} discarded.")
            raise typer.Exit(0)
        try:
            started = start_job(db, job_id, admin_confirmed=over_budget, allow_pii=allow_pii, redact_pii=redact_pii,
                                settings=cli_settings()).job
        except OverBudget as error:
            discard_quote(db, job_id, reason="above the budget cap at Start")  # the command line asks again, whole
            raise OverBudget(f"{error} On the command line, as an admin: the same command with --over-budget.") from None
        parent = (started.config or {}).get("parent_model")
        origin = f"continuing {escape(parent)}" if parent else f"base {escape(started.base_model)}"
        out.print(f"Started job #{started.id} ({started.backend}, {started.method}, {origin}).")
        together_price = (started.progress or {}).get("together_estimate_usd")
        if isinstance(together_price, (int, float)):
            out.print(f"Together AI's estimate for this run: ${together_price:,.2f}")
        redacted = (started.config or {}).get("redacted_examples")
        if redacted is not None:
            out.print(f"Personal data redacted before upload in {redacted} example(s); the snapshot itself is unchanged.")
        if not wait:
            out.print("Follow it with `ftbot jobs`.")
            if as_json:
                print(json.dumps(job_record(db, started), indent=2))
            return
        last = [""]

        def show(update: JobUpdate) -> None:
            line = progress_line(db, update.job)
            if line != last[0]:
                out.print(escape(line))
                last[0] = line

        update = wait_for_job(db, job_id, interval=1.0, on_update=show, settings=cli_settings())
        final = get_job(db, job_id)
        if as_json:
            print(json.dumps(job_record(db, final), indent=2))
        if final.status == JobStatus.SUCCEEDED:
            name = update.model.name if update.model else final.result_model or ""
            out.print(f"[green]Succeeded.[/green] Model [bold]{escape(name)}[/bold] registered ({escape(final.result_model or '')}).")
            out.print(f"Use it with `ftbot use {escape(name)}`.")
            return
        err_console.print(f"[red]Job #{final.id} {final.status}.[/red] {escape(final.error or '')}", soft_wrap=True)
        if final.log_tail:
            err_console.print(escape(final.log_tail), soft_wrap=True)
        raise typer.Exit(1)


def jobs(as_json: Annotated[bool, typer.Option("--json", help="Print JSON.")] = False,
         limit: Annotated[int, typer.Option("--limit", min=1, max=MAX_STORED_ID)] = 20) -> None:
    """Recent training jobs with status, step and losses (refreshes running ones first)."""
    with database_errors(), open_database() as db:
        listed = []
        for job in list_jobs(db, limit=limit):
            try:
                job = refresh_job(db, stored_id(job), settings=cli_settings()).job
            except Exception as error:  # noqa: BLE001 - listing must work even when OpenAI is unreachable
                err_console.print(f"[yellow]warning:[/yellow] cannot refresh job #{job.id}: {escape(str(error))}")
            listed.append(job)
        records = [job_record(db, job) for job in listed]
        if as_json:
            print(json.dumps(records, indent=2))
            return
        if not records:
            console.print("No training jobs yet. Start one with `ftbot train`.")
            return
        rows = []
        for job, r in zip(listed, records, strict=True):
            last = r["metrics"][-1] if r["metrics"] else {}
            train_loss = next((m["train_loss"] for m in reversed(r["metrics"]) if m["train_loss"] is not None), None)
            valid_loss = next((m["valid_loss"] for m in reversed(r["metrics"]) if m["valid_loss"] is not None), None)
            # The model by the name `ftbot use` takes and the base by its short name, not their directories.
            rows.append([
                str(r["id"]), r["status"], r["backend"], r["method"], display_name(r["base_model"]), str(last.get("step", "")),
                f"{train_loss:.4f}" if train_loss is not None else "", f"{valid_loss:.4f}" if valid_loss is not None else "",
                job_model_name(db, job) or "",
            ])
        print_table(["id", "status", "backend", "method", "base model", "step", "train loss", "valid loss", "model"], rows,
                    whole={"model"})


def models(as_json: Annotated[bool, typer.Option("--json", help="Print JSON.")] = False) -> None:
    """Registered models; the one marked * is in use."""
    with database_errors(), open_database() as db:
        records = [model_record(m) for m in list_models(db)]
        if as_json:
            print(json.dumps(records, indent=2))
            return
        if not records:
            console.print("No models registered yet: a finished training job registers its model.")
            return
        rows = []
        for r in records:
            metrics = r["metrics"] or {}
            loss = metrics.get("final_valid_loss")
            # Bases by their short name; a model's exact location (a server path) is in --json.
            base = display_name(metrics.get("root_base_model") or r["base_model"])
            origin = f"{base} → {metrics['parent_model']}" if metrics.get("parent_model") else base
            rows.append([
                "*" if r["active"] else "", r["name"], r["backend"], origin, str(r["job_id"] or ""),
                f"{loss:.4f}" if isinstance(loss, (int, float)) else "",
                f"${r['cost_usd']:,.4f}" if r["cost_usd"] is not None else "", stored_where(r["backend"], r["location"]),
            ])
        print_table(["", "name", "backend", "base model", "job", "valid loss", "cost", "stored"], rows, whole={"name"})


def stored_where(backend: str, location: str) -> str:
    """Where a model's files are, for the table: at OpenAI, on this machine (a path), or the shared store's URL."""
    if backend == TrainingBackend.OPENAI:
        return "OpenAI"
    return location if is_remote(location) else "this machine"


def use(name: Annotated[str, typer.Argument(help="Model name (or id) from `ftbot models`.")]) -> None:
    """Mark a registered model as the one evaluations and drafts use."""
    with database_errors(), open_database() as db:
        model = use_model(db, name)
        console.print(f"Now using [bold]{escape(model.name)}[/bold] ({model.backend}, {escape(model.location)}).")


def cancel(job_id: Annotated[int, typer.Argument(min=1, max=MAX_STORED_ID, help="Job id from `ftbot jobs`.")]) -> None:
    """Stop a training job (OpenAI, Together AI or local)."""
    with database_errors(), open_database() as db:
        job = cancel_job(db, job_id, settings=cli_settings())
        console.print(f"Job #{job.id} is {job.status}.")


def register(app: typer.Typer) -> None:
    app.command("train")(train)
    app.command("jobs")(jobs)
    app.command("models")(models)
    app.command("use")(use)
    app.command("cancel")(cancel)

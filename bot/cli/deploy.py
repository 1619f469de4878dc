"""CLI commands: ``ftbot deploy`` and ``ftbot undeploy``, the twins of ``/ft deploy`` and ``/ft undeploy``.

``ftbot deploy NAME`` prints the quote (the hardware, Together's price per minute and per hour, the idle auto-stop)
and asks before creating the endpoint (``--yes`` skips the question); ``--json`` prints the deployment record on
stdout. Same engine as Slack (``trainers.training.together_endpoints``): one quote, one claimed start.
"""

from __future__ import annotations

import getpass
from typing import Annotated

import typer
from rich.markup import escape

from bot.cli.common import cli_settings, console, database_errors, err_console, json_errors, open_database, print_json
from storage.deployments import deployment_record, discard_deployment_quote
from storage.models import stored_id
from trainers.training.together_backend import together_key_missing
from trainers.training.together_endpoints import quote_deployment, start_deployment, stop_deployment


def _require_key() -> None:
    if together_key_missing():
        err_console.print("[red]error:[/red] TOGETHER_API_KEY is not set: export it (TOGETHER_BASE_URL for a proxy).",
                          soft_wrap=True)
        raise typer.Exit(1)


def deploy(
    name: Annotated[str, typer.Argument(help="The registered Together model (`ftbot models`).")],
    hardware: Annotated[str | None, typer.Option("--hardware", help="Instance type, e.g. 1xnvidia-h100-80gb "
                                                 "(default $FTBOT_TOGETHER_HARDWARE, else the cheapest).")] = None,
    yes: Annotated[bool, typer.Option("--yes", "-y", help="Create the endpoint without asking.")] = False,
    as_json: Annotated[bool, typer.Option("--json", help="Print the deployment record as JSON on stdout.")] = False,
) -> None:
    """Quote serving a Together model on a dedicated endpoint (billed per minute, even idle), then create it."""
    out = err_console if as_json else console
    _require_key()
    settings = cli_settings()
    with database_errors(), json_errors(as_json), open_database() as db:
        row, plan = quote_deployment(db, name, hardware=hardware or settings.together_hardware,
                                     idle_minutes=settings.together_idle_minutes, requested_by=getpass.getuser())
        per_hour = row.price_cents_per_hour / 100
        out.print(f"[bold]Together endpoint quote · #{row.id}[/bold]")
        out.print(f"Model: {escape(row.model_name)}", soft_wrap=True)
        out.print(f"Hardware: {escape(row.hardware)} (1 replica)")
        out.print(f"Price: ${per_hour / 60:,.4f} per minute (${per_hour:,.2f} per hour), billed while running, even idle")
        out.print(f"Idle auto-stop: after {row.idle_minutes} minutes without a request")
        others = [o for o in plan.options if o != plan.hardware]
        if others:
            out.print("Other hardware: " + ", ".join(f"{escape(o.hardware)} (${o.usd_per_hour:,.2f}/h)" for o in others))
        if not yes and not typer.confirm("Create the endpoint?", default=False, err=as_json):
            discard_deployment_quote(db, stored_id(row), user=getpass.getuser())
            out.print(f"Not created; quote #{row.id} discarded.")
            raise typer.Exit(0)
        started = start_deployment(db, stored_id(row), user=getpass.getuser()).deployment
        out.print(f"Deployed {escape(started.model_name)}: endpoint {escape(started.endpoint_name or '')} "
                  f"(call it with that name as `model`). Stop it with `ftbot undeploy {escape(started.model_name)}`.",
                  soft_wrap=True)
        if as_json:
            print_json(deployment_record(started))


def undeploy(
    name: Annotated[str, typer.Argument(help="The registered Together model whose endpoint to stop.")],
    as_json: Annotated[bool, typer.Option("--json", help="Print the deployment record as JSON on stdout.")] = False,
) -> None:
    """Stop a model's Together dedicated endpoint (deletes it on Together: it no longer bills)."""
    _require_key()
    with database_errors(), json_errors(as_json), open_database() as db:
        row = stop_deployment(db, name, user=getpass.getuser())
        (err_console if as_json else console).print(
            f"Stopped {escape(row.model_name)}: endpoint {escape(row.endpoint_name or '')} deleted on Together.",
            soft_wrap=True)
        if as_json:
            print_json(deployment_record(row))


def register(app: typer.Typer) -> None:
    app.command("deploy")(deploy)
    app.command("undeploy")(undeploy)

"""``/ft validate``, ``/ft price [model|--all-models]`` and ``/ft export``: the data core's report on the approved examples.

The compact summary is an ephemeral Block Kit message; the full report (JSON) and the export (JSONL) are
sent to the requester's direct message with ``files_upload_v2``. The same engine (``trainers.data.report.build_report``) is
behind ``ftbot validate/price`` and the training quote, so Slack and the CLI never disagree.
"""

from __future__ import annotations

import json
import logging
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

from slack_bolt import App
from slack_sdk.errors import SlackApiError

from bot import blocks as bk
from bot.commands import CommandContext
from storage.errors import FtbotError
from storage.examples import approved_records, count_by_status
from storage.records import canonical_json
from trainers.data.pricing import load_price_table
from trainers.data.report import build_report, quote_models

if TYPE_CHECKING:  # bot.app imports every feature (so this module): a type-only import avoids the cycle
    from bot.app import BotContext

log = logging.getLogger(__name__)

SHOWN_ISSUES = 5
PRICE_USAGE = "/ft price [model|--all-models]"


def _stamp() -> str:
    return datetime.now(UTC).strftime("%Y%m%d-%H%M%S")


def _upload(ctx: CommandContext, *, content: str, filename: str, title: str, comment: str) -> bool:
    """Send a file to the requester's direct message with the bot, never into the shared channel.

    Reports and exports are personal feedback and may hold customer data, so they do not belong in a channel
    (files cannot be ephemeral). Tells the user ephemerally when Slack refuses.
    """
    try:
        dm = ctx.client.conversations_open(users=ctx.user_id)["channel"]["id"]
        bk.upload_file(ctx.client, dm, content=content, filename=filename, title=title, initial_comment=comment)
        return True
    except SlackApiError as exc:
        error = exc.response.get("error")
        log.warning("upload of %s to the DM of %s failed: %s", filename, ctx.user_id, error)
        ctx.respond(f":warning: I could not send you {filename} as a direct message: Slack said `{error}`. "
                    "Check that the app's Messages tab is enabled (App Home) and try again.")
        return False


def _money(value: object) -> str:
    if not isinstance(value, (int, float)):
        return "–"
    return f"${value:,.4f}" if 0 < value < 1 else f"${value:,.2f}"


def _issue_lines(issues: list[dict[str, Any]], label: str) -> str:
    lines = [f"• {bk.escape(bk.truncate(str(i.get('message') or i.get('code')), 280))}" for i in issues[:SHOWN_ISSUES]]
    more = f"\n_…and {len(issues) - SHOWN_ISSUES} more in the attached report._" if len(issues) > SHOWN_ISSUES else ""
    return f"*{label} ({len(issues)}):*\n" + "\n".join(lines) + more


def report_blocks(report: dict[str, Any], *, title: str) -> tuple[str, list[dict[str, Any]]]:
    """Compact Block Kit summary of ``DatasetReport.to_json()``."""
    tokens = report.get("tokens") or {}
    errors = report.get("errors") or []
    warnings = report.get("warnings") or []
    pairs = [
        ("Examples", f"{report.get('valid_examples', 0)} valid of {report.get('examples', 0)}"),
        ("Model", bk.escape(str(report.get("model") or "–"))),
        ("Tokens", f"{tokens.get('total', 0):,}" if isinstance(tokens.get("total"), int) else "–"),
        ("Epochs", str(report.get("epochs") or "–")),
        ("Billed tokens", f"{report['billed_tokens']:,}" if isinstance(report.get("billed_tokens"), int) else "–"),
        ("Estimated cost", _money(report.get("estimated_cost_usd"))),
    ]
    verdict = ":white_check_mark: Ready to train." if not errors else ":x: Fix the errors below before training."
    out = [bk.header(title), bk.section(verdict), bk.fields_section(pairs)]
    if errors:
        out.append(bk.section(_issue_lines(errors, "Errors")))
    if warnings:
        out.append(bk.section(_issue_lines(warnings, "Warnings")))
    out.append(bk.context("Full report sent to you as a direct message (JSON). Numbers are estimates from the dated price table."))
    text = (f"{title}: {report.get('valid_examples', 0)}/{report.get('examples', 0)} valid, {len(errors)} errors, "
            f"{len(warnings)} warnings, estimated cost {_money(report.get('estimated_cost_usd'))}")
    return text, bk.fit_blocks(out)


def quotes_section(quotes: list[dict[str, Any]]) -> dict[str, Any]:
    """``/ft price --all-models``: one line per fine-tunable model, cheapest first (the CLI's table)."""
    lines = [f"• `{bk.escape(quote['model'])}`: {_money(quote['cost_usd'])} ({quote['epochs']} epochs, "
             f"{quote['billed_tokens']:,} billed tokens at ${quote['price_per_1m']:g}/1M)"
             for quote in sorted(quotes, key=lambda quote: quote["cost_usd"] or 0)]
    return bk.section("*Training cost by model*\n" + "\n".join(lines))


def parse_price_args(args: list[str]) -> tuple[str | None, bool]:
    """``[model|--all-models]`` → (model, all models); FtbotError on anything else."""
    all_models = "--all-models" in args
    rest = [arg for arg in args if arg != "--all-models"]
    unknown = [arg for arg in rest if arg.startswith("--")]
    if unknown:
        raise FtbotError(f"unknown option {unknown[0]}. Usage: `{PRICE_USAGE}`")
    if len(rest) > 1:
        raise FtbotError(f"name one model. Usage: `{PRICE_USAGE}`")
    if rest and all_models:
        raise FtbotError(f"name either a model or --all-models, not both. Usage: `{PRICE_USAGE}`")
    return (rest[0] if rest else None), all_models


def run_report(bot: BotContext, model: str | None, *, all_models: bool = False) -> dict[str, Any]:
    """The report on the approved examples; ``all_models``: also quote every fine-tunable model (``quotes``)."""
    if count_by_status(bot.db).get("approved", 0) == 0:
        raise FtbotError("There are no approved examples yet: capture replies (shortcut *Add to ftbot*) and approve them "
                         "with `/ft review` first")
    prices = load_price_table(bot.settings.prices_file)
    chosen = model or bot.settings.openai_model
    if all_models:
        reports, quotes = quote_models(lambda: approved_records(bot.db), prices.models_to_quote(chosen), prices=prices,
                                       kind="sft", unit="example")
        result = reports[next(iter(reports))].to_json()
        result["quotes"] = [quote.to_json() for quote in quotes]
        return result
    # Database items are numbered by example id, not file line: say "example N" in messages.
    return build_report(approved_records(bot.db), model=chosen, kind="sft", unit="example", prices=prices).to_json()


def register(app: App, bot: BotContext) -> None:
    def respond_report(ctx: CommandContext, *, title: str, model: str | None, name: str, all_models: bool = False) -> None:
        if name == "price":  # an unknown model: the CLI's message (the known models), before reading anything
            load_price_table(bot.settings.prices_file).get(model or bot.settings.openai_model)
        ctx.respond(f":hourglass_flowing_sand: Building the {name} report…")
        report = run_report(bot, model, all_models=all_models)
        text, summary = report_blocks(report, title=title)
        if report.get("quotes"):
            summary = bk.fit_blocks([*summary[:-1], quotes_section(report["quotes"]), summary[-1]])
            text += f"; {len(report['quotes'])} models quoted"
        ctx.respond(text, blocks=summary)
        _upload(ctx, content=json.dumps(report, indent=2, ensure_ascii=False), filename=f"ftbot-{name}-{_stamp()}.json",
                title=f"ftbot {name} report", comment=f"Full {name} report requested by <@{ctx.user_id}>")

    def ft_validate(ctx: CommandContext) -> None:
        respond_report(ctx, title="Dataset check", model=None, name="validate")

    def ft_price(ctx: CommandContext) -> None:
        model, all_models = parse_price_args(ctx.args)
        respond_report(ctx, title="Training price estimate", model=model, name="price", all_models=all_models)

    def ft_export(ctx: CommandContext) -> None:
        lines = [canonical_json(record) for _id, record in approved_records(bot.db)]
        if not lines:
            raise FtbotError("There are no approved examples to export yet; approve some with `/ft review`")
        if _upload(ctx, content="\n".join(lines) + "\n", filename=f"ftbot-approved-{_stamp()}.jsonl",
                   title="Approved examples (OpenAI chat JSONL)", comment=f"{len(lines)} approved examples, exported by "
                   f"<@{ctx.user_id}>"):
            ctx.respond(f"Exported {len(lines)} approved examples as JSONL (sent to you as a direct message).")

    bot.router.add("validate", usage="/ft validate", summary="Check the approved examples (errors, warnings, tokens)",
                   handler=ft_validate)
    bot.router.add("price", usage=PRICE_USAGE, summary="Estimate the fine-tuning cost of the approved examples",
                   handler=ft_price)
    bot.router.add("export", usage="/ft export", summary="Upload the approved examples as OpenAI chat JSONL",
                   handler=ft_export)

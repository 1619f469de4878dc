"""Blind side-by-side evaluation in Slack: ``/ft eval``, emoji votes, ``/ft results``, ``/ft judge``.

The flow of a round:

1. ``/ft eval [model] [--n 20]`` picks the candidate (the named model, the one marked with ``/ft use``, else the
   newest registered one) and the baseline (``FTBOT_EVAL_BASELINE``, by default the candidate's base model, or
   for a DPO model the fine-tuned model it continued), and the held-out questions (the candidate's validation
   split plus ``/ft eval add`` questions, never a prompt it trained on). OpenAI generation costs money, so it first shows the estimate with Post / Cancel; local
   generation starts at once in a worker process (the bot never imports torch).
2. Each question is posted as one message: the question, Answer A and Answer B — which model is on which side is
   randomized per comparison, stored, and hidden — and the bot seeds the vote reactions :a: :b: :handshake: :-1:.
   Posting is paced (about one message per second per channel) and retries Slack's 429s.
3. ``reaction_added`` / ``reaction_removed`` on those messages are votes: one per voter per comparison (a new
   reaction moves it; removing the reaction that cast it falls back to another vote reaction the voter still has
   on the message, else withdraws it), skin tones normalised, the bot's own
   reactions ignored, the optional voter allowlist (``FTBOT_VOTERS``) enforced; retried events count once.
4. Voting closes after ``FTBOT_EVAL_HOURS`` (a scheduler job, and lazily on the next event or command) or with
   ``/ft eval close``. Closing reveals the models, posts the results with a chart, and turns every decided
   comparison into a DPO preference pair for ``/ft train --method dpo``.
5. ``/ft judge`` (optional) scores a round with an LLM judge; it calls OpenAI, so like OpenAI generation it first
   shows the cost with Judge / Cancel.
"""

from __future__ import annotations

import json
import logging
import subprocess
import threading
import time
from collections.abc import Callable
from datetime import datetime, timedelta, timezone
from typing import TYPE_CHECKING, Any

from slack_bolt import Ack, App, BoltContext, Respond
from slack_sdk import WebClient
from slack_sdk.errors import SlackApiError

from bot import blocks as bk
from bot.commands import CommandContext
from storage import evals
from storage.evals import RoundStatus
from storage.models import Comparison, EvalRound, utcnow
from storage.errors import FtbotError

if TYPE_CHECKING:
    from bot.app import BotContext

log = logging.getLogger(__name__)

# Reaction name (without colons and skin tone) → vote. Slack names 👎 "-1"; "thumbsdown" is its alias.
VOTE_REACTIONS = {"a": "A", "b": "B", "handshake": "tie", "-1": "bad", "thumbsdown": "bad"}
SEED_REACTIONS = ("a", "b", "handshake", "-1")
POST_ACTION = "ft_eval_post"
CANCEL_ACTION = "ft_eval_cancel"
JUDGE_ACTION = "ft_judge_run"
JUDGE_CANCEL_ACTION = "ft_judge_cancel"
CLOSE_JOB_ID = "eval-close-due"
CLOSE_CHECK_SECONDS = 60.0
DEFAULT_N = 20
MAX_N = 200
# Room for the question and two answers inside one message: 3000 characters per section, and Slack refuses
# messages around 13k characters of blocks. Escaping (&amp;) can lengthen text, hence the margin.
QUESTION_LIMIT = 1200
CONTEXT_LIMIT = 800
ANSWER_LIMIT = 2400
PROGRESS_EVERY_SECONDS = 3.0
_in_flight_lock = threading.Lock()
VOTE_HINT = (
    "React :a: if *A* is better, :b: if *B* is better, :handshake: for a tie, :-1: if both are bad. "
    "One vote per person: your latest reaction counts; removing it counts another vote reaction you still have, "
    "else withdraws your vote. The models are revealed when voting closes."
)


def normalize_reaction(name: str | None) -> str:
    """``+1::skin-tone-2`` → ``+1``: a skin tone does not change the vote."""
    return (name or "").split("::", 1)[0].strip(":")


# --- command parsing --------------------------------------------------------------------------------------------


def _parse_eval_args(args: list[str]) -> tuple[str | None, int]:
    """``[model] [--n 20]`` → (model, n)."""
    model: str | None = None
    n = DEFAULT_N
    i = 0
    while i < len(args):
        arg = args[i]
        if arg in ("--n", "-n") or arg.startswith("--n="):
            raw = arg.split("=", 1)[1] if "=" in arg else (args[i + 1] if i + 1 < len(args) else "")
            i += 1 if "=" in arg else 2
            if not raw.isdigit() or not 1 <= int(raw) <= MAX_N:
                raise FtbotError(f"`--n` takes a number of questions from 1 to {MAX_N}, e.g. `/ft eval --n 20`")
            n = int(raw)
            continue
        if arg.startswith("-"):
            raise FtbotError(f"unknown option `{arg}`. Usage: `/ft eval [model] [--n 20]`")
        if model is not None:
            raise FtbotError("name one model at most. Usage: `/ft eval [model] [--n 20]`")
        model = arg
        i += 1
    return model, n


def _round_arg(args: list[str]) -> int | None:
    for arg in args:
        if arg.lstrip("#").isdigit():
            return int(arg.lstrip("#"))
    return None


# --- starting a round -------------------------------------------------------------------------------------------


def _candidate(bot: "BotContext", name: str | None):
    from storage.jobs import active_model, get_model, list_models

    if name:
        return get_model(bot.db, name)
    model = active_model(bot.db)
    if model is None:
        models = list_models(bot.db)  # newest first
        model = models[0] if models else None
    if model is None:
        raise FtbotError("there is no trained model to evaluate yet: train one with `/ft train`, then run `/ft eval`.")
    return model


def _baseline(bot: "BotContext", candidate) -> str:
    """``FTBOT_EVAL_BASELINE``; by default (``base``) the model the candidate started from: for a DPO model that
    continued a fine-tuned one, that parent — the votes must say whether DPO improved on it — else its base model."""
    from storage.jobs import ModelNotFound, get_model
    from trainers.evaluation.generation import BASE, baseline_name

    configured = bot.settings.eval_baseline
    parent = (candidate.metrics or {}).get("parent_model")
    if parent and (configured or BASE).strip().lower() == BASE:
        try:
            return get_model(bot.db, parent).name
        except ModelNotFound:
            pass  # the parent was removed: its merged weights are the candidate's base model, compared below
    return baseline_name(bot.db, candidate, configured)


_start_lock = threading.Lock()


def _refuse_if_preparing(bot: "BotContext", channel: str) -> None:
    """One round in preparation per channel: say which, and how to finish or drop it."""
    preparing = (RoundStatus.QUOTED, RoundStatus.GENERATING, RoundStatus.POSTING)
    busy = [r for r in evals.list_rounds(bot.db, statuses=preparing) if r.channel == channel]
    if not busy:
        return
    last = busy[-1]
    if last.status != RoundStatus.QUOTED and not _in_flight(bot, last.id):
        raise FtbotError(f"round #{last.id} stopped while {last.status} (was ftbot restarted?): "
                         f"`/ft eval resume {last.id}` finishes it, `/ft eval cancel {last.id}` drops it.")
    raise FtbotError(f"round #{last.id} is still being prepared in this channel ({last.status}); "
                     f"wait for it to be posted, or `/ft eval cancel {last.id}`.")


def _estimate_line(estimate: Any) -> str:
    """One line of a cost quote for a ``trainers.evaluation.inference.CostEstimate``."""
    name = f"`{bk.escape(estimate.model)}`"
    if estimate.expected_usd is None or estimate.max_usd is None:
        return (f"• {name}: {estimate.input_tokens:,} input tokens, up to {estimate.max_output_tokens:,} output tokens "
                "— *no price in the table*")
    if estimate.expected_output_tokens >= estimate.max_output_tokens:  # priced at the full output allowance
        return (f"• {name}: {estimate.input_tokens:,} input + up to {estimate.max_output_tokens:,} output tokens: "
                f"at most *${estimate.max_usd:.4f}*")
    return (f"• {name}: {estimate.input_tokens:,} input + ~{estimate.expected_output_tokens:,} output tokens "
            f"≈ *${estimate.expected_usd:.4f}* (at most ${estimate.max_usd:.4f})")


def _cost_quote(paid: list[Any], items: list[evals.EvalItem]) -> tuple[list[str], str]:
    """(one line per OpenAI model, the total) for generating answers to `items`."""
    from trainers.evaluation.inference import GenerationSettings, estimate_openai_cost, mean_answer_tokens

    settings = GenerationSettings.from_env()
    prompts = [item.prompt for item in items]
    lines = []
    expected_total = maximum_total = 0.0
    unknown = False
    for spec in paid:
        estimate = estimate_openai_cost(
            spec.model, prompts, settings,
            expected_answer_tokens=mean_answer_tokens([i.reference or "" for i in items], spec.model),
        )
        lines.append(_estimate_line(estimate))
        if estimate.expected_usd is None or estimate.max_usd is None:
            unknown = True
            continue
        expected_total += estimate.expected_usd
        maximum_total += estimate.max_usd
    total = f"≈ *${expected_total:.4f}* (at most ${maximum_total:.4f})" + (" plus unpriced models" if unknown else "")
    return lines, total


def _quote_blocks(summary: str, footnote: str, *, confirm: tuple[str, str], cancel_action: str, value: str,
                  block_id: str) -> list[dict[str, Any]]:
    """The ephemeral cost quote: what it costs, where the prices come from, and confirm / Cancel buttons.

    Nothing is spent before the confirm button; its handler claims the quote so a double click runs once."""
    from trainers.data.pricing import load_price_table

    label, action_id = confirm
    return [
        bk.section(f":moneybag: {summary}"),
        bk.context(f"Prices as of {bk.escape(load_price_table().as_of)} (trainers/data/prices.toml); {footnote}"),
        bk.actions(
            bk.button(label, action_id, value, style="primary"),
            bk.button("Cancel", cancel_action, value),
            block_id=block_id,
        ),
    ]


def start_round(bot: "BotContext", ctx: CommandContext, model_name: str | None, n: int) -> EvalRound:
    """Create the round and either ask to confirm the OpenAI cost or start generating."""
    from trainers.evaluation.generation import display_name, model_spec, registered_spec

    if not bot.roles.may_train(ctx.user_id):
        raise FtbotError("only trainers can start an evaluation round (FTBOT_TRAINERS); ask an ftbot admin.")
    close_due_rounds(bot)
    _refuse_if_preparing(bot, ctx.channel_id)
    candidate = _candidate(bot, model_name)
    baseline = _baseline(bot, candidate)
    items = evals.eval_items(bot.db, candidate, limit=n)
    if not items:
        raise FtbotError(
            f"there are no held-out questions for {candidate.name}: its snapshot has no validation questions it did not "
            "train on. Add some with `/ft eval add <message link>` (or `/ft eval add <question>`)."
        )
    specs = [registered_spec(candidate), model_spec(bot.db, baseline)]
    paid = [spec for spec in specs if spec.backend == "openai"]
    # Price the round before creating it: an estimate that fails leaves nothing half-made behind.
    quote_lines, quote_total = _cost_quote(paid, items) if paid else ([], "")
    with _start_lock:  # a double-submitted /ft eval must not create two rounds
        _refuse_if_preparing(bot, ctx.channel_id)
        round_ = evals.create_round(
            bot.db, candidate_model=candidate.name, baseline_model=baseline, prompts=[item.prompt for item in items],
            channel=ctx.channel_id, created_by=ctx.user_id, status=RoundStatus.QUOTED if paid else RoundStatus.GENERATING,
        ).example
    who = f"*{len(items)}* questions, {bk.escape(display_name(candidate.name))} vs {bk.escape(display_name(baseline))}"
    if not paid:
        ctx.respond(f"Round #{round_.id}: {len(items)} questions. Generating answers locally; the blind comparisons "
                    "will be posted in this channel.", blocks=[bk.section(f":hourglass_flowing_sand: Round #{round_.id}: {who}. "
                    "Generating answers locally; the blind comparisons will be posted here.")])
        bot.defer(run_round, bot, round_.id, started_by=ctx.user_id)
        return round_

    text = (f"Round #{round_.id}: generating {len(items)} answers per model with OpenAI costs "
            f"{quote_total.replace('*', '')}. Post or cancel?")
    blocks = _quote_blocks(
        f"Round #{round_.id}: {who}.\nOpenAI generation costs {quote_total}:\n" + "\n".join(quote_lines),
        "output length is estimated from the team's reference replies.",
        confirm=("Post", POST_ACTION), cancel_action=CANCEL_ACTION, value=str(round_.id), block_id=f"eval_quote_{round_.id}",
    )
    ctx.respond(text, blocks=blocks)
    return round_


# --- generating and posting -------------------------------------------------------------------------------------


class _Progress:
    """The one channel message that shows a round's progress (posted once, then updated)."""

    def __init__(self, bot: "BotContext", round_: EvalRound):
        self.bot = bot
        self.round = round_
        self.ts: str | None = None
        self._last = 0.0

    def show(self, line: str, *, force: bool = True) -> None:
        now = time.monotonic()
        if not force and now - self._last < PROGRESS_EVERY_SECONDS:
            return
        self._last = now
        text = f"Blind evaluation round #{self.round.id}: {line}"
        view = [bk.section(f":hourglass_flowing_sand: *Blind evaluation round #{self.round.id}*: {bk.escape(line)}")]
        channel = self.round.channel or ""
        try:
            if self.ts is None:
                posted = _slack(self.bot.client.chat_postMessage, channel=channel, text=bk.fallback(text), blocks=view)
                self.ts = posted["ts"]
            else:
                _slack(self.bot.client.chat_update, channel=channel, ts=self.ts, text=bk.fallback(text), blocks=view)
        except SlackApiError as error:
            log.warning("cannot show progress of round %s: %s", self.round.id, error.response.get("error"))


def _in_flight(bot: "BotContext", round_id: int) -> bool:
    with _in_flight_lock:
        return round_id in bot.rounds_in_flight


def _claim_in_process(bot: "BotContext", round_id: int) -> bool:
    """One thread per round in this process (the database status guards against other processes)."""
    with _in_flight_lock:
        rounds = bot.rounds_in_flight
        if round_id in rounds:
            return False
        rounds.add(round_id)
        return True


def _release_in_process(bot: "BotContext", round_id: int) -> None:
    with _in_flight_lock:
        bot.rounds_in_flight.discard(round_id)


def run_round(bot: "BotContext", round_id: int, *, started_by: str | None = None,
              poll_seconds: float = 1.0) -> None:
    """Generate the round's answers (worker process for local models, this thread for OpenAI), then post them."""
    if not _claim_in_process(bot, round_id):
        return
    try:
        _run_round(bot, round_id, started_by=started_by, poll_seconds=poll_seconds)
    finally:
        _release_in_process(bot, round_id)


def _run_round(bot: "BotContext", round_id: int, *, started_by: str | None, poll_seconds: float) -> None:
    from trainers.evaluation.generation import generate_round, read_log_tail, round_needs_worker, spawn_generation

    round_ = evals.get_round(bot.db, round_id)
    progress = _Progress(bot, round_)
    total = len(evals.round_comparisons(bot.db, round_id))
    progress.show(f"answering {total} questions with both models…")
    try:
        if round_needs_worker(bot.db, round_id):
            url = bot.db.engine.url.render_as_string(hide_password=False)
            process = spawn_generation(round_id, database_url=url)
            code = _wait_for_worker(bot, process, round_id, total, progress, poll_seconds)
            if code != 0:
                evals.move_round(bot.db, round_id, RoundStatus.FAILED, from_status=RoundStatus.GENERATING)
                tail = read_log_tail(round_id)
                last = tail.strip().splitlines()[-1] if tail.strip() else f"exit code {code}"
                progress.show(f"generation failed: {last}. Nothing was posted; fix the cause, then "
                              f"`/ft eval resume {round_id}` (answers already written are kept).")
                return
        else:
            def report(name: str, done: int, of: int) -> None:
                progress.show(f"answering with the models… {done}/{of} for one model", force=False)

            generate_round(bot.db, round_id, openai_client=bot.openai_client, progress=report)
    except FtbotError as error:
        evals.move_round(bot.db, round_id, RoundStatus.FAILED, from_status=RoundStatus.GENERATING)
        progress.show(f"generation failed: {error} Nothing was posted; `/ft eval resume {round_id}` retries.")
        return
    except Exception as error:
        log.exception("generation for round %s failed", round_id)
        evals.move_round(bot.db, round_id, RoundStatus.FAILED, from_status=RoundStatus.GENERATING)
        progress.show(f"generation failed unexpectedly ({type(error).__name__}); see ftbot's log, then "
                      f"`/ft eval resume {round_id}`.")
        return
    try:
        _post_round(bot, round_id, progress=progress, started_by=started_by)
    except SlackApiError as error:
        _posting_stopped(round_id, progress, error)


def _posting_stopped(round_id: int, progress: _Progress, error: SlackApiError) -> None:
    reason = error.response.get("error") or str(error)
    log.warning("posting round %s stopped: %s", round_id, reason)
    hint = " Invite me first (`/invite @ftbot`)." if reason in ("not_in_channel", "channel_not_found") else ""
    progress.show(f"posting stopped: Slack said {reason}.{hint} `/ft eval resume {round_id}` posts the rest.")


def _wait_for_worker(bot: "BotContext", process: subprocess.Popen, round_id: int, total: int, progress: _Progress,
                     poll_seconds: float) -> int:
    while True:
        code = process.poll()
        if code is not None:
            return code
        answered = sum(bool(c.answer_a) + bool(c.answer_b) for c in evals.round_comparisons(bot.db, round_id))
        progress.show(f"answering {total} questions with both models… {answered}/{2 * total} answers", force=False)
        time.sleep(poll_seconds)


def comparison_message(comparison: Comparison, index: int, total: int) -> tuple[str, list[dict[str, Any]], bool]:
    """(fallback text, blocks, whether anything was shortened) for one blind comparison."""
    question, earlier = _question_and_context(comparison.prompt)
    truncated = False

    def cut(text: str, limit: int) -> str:
        nonlocal truncated
        if len(text) > limit:
            truncated = True
        return bk.truncate(text, limit)

    out = [bk.section(f"*Blind comparison {index} of {total}* — which answer is better?")]
    if earlier:
        out.append(bk.context(_quote(cut(earlier, CONTEXT_LIMIT))))
    out.append(bk.section("*Customer:*\n" + _quote(cut(question, QUESTION_LIMIT))))
    out.append(bk.divider())
    out.append(bk.section(":a: *Answer A*\n" + bk.escape(cut(comparison.answer_a, ANSWER_LIMIT))))
    out.append(bk.divider())
    out.append(bk.section(":b: *Answer B*\n" + bk.escape(cut(comparison.answer_b, ANSWER_LIMIT))))
    hint = VOTE_HINT + (" The full texts are in the thread." if truncated else "")
    out.append(bk.context(hint))
    text = f"Blind comparison {index} of {total}: which answer is better? React :a: :b: :handshake: or :-1:. " + bk.truncate(question, 200)
    # 8 blocks at most and bounded text (the limits above): within Slack's limits by construction.
    return bk.fallback(text), out, truncated


def _question_and_context(prompt: list[dict[str, Any]]) -> tuple[str, str]:
    turns = [m for m in prompt if m.get("role") in ("user", "assistant")]
    question = _content(turns[-1]) if turns else ""
    labels = {"user": "Customer", "assistant": "Agent"}
    earlier = "\n".join(f"{labels[m['role']]}: {_content(m)}" for m in turns[-5:-1])
    return question, earlier


def _content(message: dict[str, Any]) -> str:
    content = message.get("content")
    if isinstance(content, list):
        return " ".join(p.get("text", "") for p in content if isinstance(p, dict))
    return str(content or "")


def _quote(text: str) -> str:
    """Escaped text as a Slack block quote (the ``>`` markers themselves must stay unescaped)."""
    return "\n".join("> " + line for line in bk.escape(text).splitlines() or [""])


def _full_text(comparison: Comparison, index: int) -> str:
    question, earlier = _question_and_context(comparison.prompt)
    parts = [f"Blind comparison {index}", ""]
    if earlier:
        parts += ["Earlier in the conversation:", earlier, ""]
    parts += ["Customer:", question, "", "Answer A:", comparison.answer_a, "", "Answer B:", comparison.answer_b, ""]
    return "\n".join(parts)


def _slack(method: Callable[..., Any], /, *, attempts: int = 5, **kwargs: Any) -> Any:
    """Call a Web API method, waiting out 429s (Retry-After) beyond the client's own retries."""
    for attempt in range(attempts):
        try:
            return method(**kwargs)
        except SlackApiError as error:
            response = error.response
            limited = response.status_code == 429 or response.get("error") == "ratelimited"
            if not limited or attempt == attempts - 1:
                raise
            retry_after = float((response.headers or {}).get("Retry-After") or (response.headers or {}).get("retry-after") or 1)
            time.sleep(min(max(retry_after, 0.1), 30.0))
    raise AssertionError("unreachable")


def post_round(bot: "BotContext", round_id: int, *, started_by: str | None = None, resume: bool = False) -> bool:
    """Post every comparison of a generated round not posted yet, then open voting (False: another caller does it)."""
    if not _claim_in_process(bot, round_id):
        return False
    try:
        progress = _Progress(bot, evals.get_round(bot.db, round_id))
        try:
            return _post_round(bot, round_id, progress=progress, started_by=started_by, resume=resume)
        except SlackApiError as error:
            _posting_stopped(round_id, progress, error)
            return False
    finally:
        _release_in_process(bot, round_id)


def _post_round(bot: "BotContext", round_id: int, *, progress: _Progress | None = None,
                started_by: str | None = None, resume: bool = False) -> bool:
    claimed = evals.move_round(bot.db, round_id, RoundStatus.POSTING, from_status=RoundStatus.GENERATING)
    if not claimed and not (resume and evals.get_round(bot.db, round_id).status == RoundStatus.POSTING):
        return False
    round_ = evals.get_round(bot.db, round_id)
    progress = progress or _Progress(bot, round_)
    client = bot.client
    channel = round_.channel or ""
    comparisons = evals.round_comparisons(bot.db, round_id)
    total = len(comparisons)
    progress.show(f"{total} blind comparisons follow. Vote with reactions on each one.")
    interval = bot.settings.eval_post_interval
    for index, comparison in enumerate(comparisons, 1):
        if comparison.message_ts:
            continue  # posted before a restart
        text, view, truncated = comparison_message(comparison, index, total)
        posted = _slack(client.chat_postMessage, channel=channel, text=text, blocks=view, unfurl_links=False,
                        unfurl_media=False)
        evals.set_comparison_message(bot.db, comparison.id, channel=posted["channel"], message_ts=posted["ts"])
        for name in SEED_REACTIONS:
            try:
                _slack(client.reactions_add, channel=posted["channel"], timestamp=posted["ts"], name=name)
            except SlackApiError as error:
                if error.response.get("error") != "already_reacted":
                    log.warning("cannot seed :%s: on comparison %s: %s", name, comparison.id, error.response.get("error"))
        if truncated:
            try:
                bk.upload_file(client, posted["channel"], content=_full_text(comparison, index),
                               filename=f"comparison-{comparison.id}.txt", title=f"Comparison {index}: full text",
                               thread_ts=posted["ts"])
            except SlackApiError as error:
                log.warning("cannot attach the full text of comparison %s: %s", comparison.id, error.response.get("error"))
        if interval and index < total:
            time.sleep(interval)  # Slack allows about one message per second per channel
    closes_at = utcnow() + timedelta(hours=bot.settings.eval_hours)
    evals.move_round(bot.db, round_id, RoundStatus.OPEN, from_status=RoundStatus.POSTING, closes_at=closes_at)
    stamp = int(closes_at.timestamp())
    closes = f"<!date^{stamp}^{{date_short_pretty}} at {{time}}|{closes_at:%Y-%m-%d %H:%M} UTC>"
    line = (f"{total} blind comparisons are posted below. React :a: :b: :handshake: :-1: on each. "
            f"Voting closes {closes:s} or with `/ft eval close`; then `/ft results` reveals the models.")
    if progress.ts:
        text = f"Blind evaluation round #{round_id}: {total} comparisons, voting open."
        view = [bk.section(f"*Blind evaluation round #{round_id}* is open for voting.\n{line}")]
        if started_by:
            view.append(bk.context(f"Started by <@{bk.escape(started_by)}>"))
        try:
            _slack(client.chat_update, channel=channel, ts=progress.ts, text=text, blocks=view)
        except SlackApiError as error:
            log.warning("cannot update round %s's message: %s", round_id, error.response.get("error"))
    _schedule_close_check(bot)
    return True


# --- voting -----------------------------------------------------------------------------------------------------


def _event_time(event: dict[str, Any]) -> datetime:
    try:
        return datetime.fromtimestamp(float(event.get("event_ts") or 0), tz=timezone.utc) if event.get("event_ts") else utcnow()
    except (TypeError, ValueError):
        return utcnow()


def handle_reaction(bot: "BotContext", client: WebClient, event: dict[str, Any], *, added: bool,
                    bot_user_id: str | None) -> str:
    """Count, move or withdraw a vote; returns what happened (for logs and tests)."""
    item = event.get("item") or {}
    if item.get("type") != "message":
        return "ignored: not a message"
    choice = VOTE_REACTIONS.get(normalize_reaction(event.get("reaction")))
    if choice is None:
        return "ignored: not a vote reaction"
    voter = event.get("user") or ""
    if not voter or voter == bot_user_id:
        return "ignored: the bot's own reaction"
    comparison = evals.comparison_for_message(bot.db, item.get("channel") or "", item.get("ts") or "")
    if comparison is None:
        return "ignored: not a comparison message"
    round_ = evals.get_round(bot.db, comparison.round_id)
    reaction = normalize_reaction(event.get("reaction"))
    if evals.is_voting_over(round_):
        if round_.status in RoundStatus.VOTABLE:
            bot.defer(close_and_report, bot, round_.id)  # posts the results: not on the event's listener thread
        if added:
            _tell(client, item.get("channel"), voter, f"Voting on round #{round_.id} has closed; that reaction was not counted.")
        return "ignored: voting closed"
    if not bot.roles.may_vote(voter):
        if added:
            _tell(client, item.get("channel"), voter, "Only the team's voters can vote on blind comparisons (FTBOT_VOTERS); "
                  "your reaction was not counted.")
        return "ignored: not a voter"
    at = _event_time(event)
    if added:
        change = evals.cast_vote(bot.db, comparison.id, voter, choice, reaction=reaction, at=at)
        return f"vote {change.action}"
    vote = evals.get_vote(bot.db, comparison.id, voter)
    if vote is None or vote.reaction != reaction:
        return "no vote to withdraw"  # that reaction no longer casts the vote: nothing to ask Slack
    fallback = _remaining_vote_reaction(client, item.get("channel") or "", item.get("ts") or "", voter, removed=reaction)
    if not evals.retract_vote(bot.db, comparison.id, voter, reaction=reaction, at=at, fallback=fallback):
        return "no vote to withdraw"
    return f"vote moved to {fallback[0]}" if fallback else "vote withdrawn"


def _remaining_vote_reaction(client: WebClient, channel: str, ts: str, voter: str, *, removed: str) -> tuple[str, str] | None:
    """(choice, reaction) of a vote reaction `voter` still has on the message, else None.

    Slack's ``reaction_removed`` says only what was removed, so ask for the message's reactions (``full`` lists
    every user). Slack does not say in which order a person added several, so with more than one left the
    first in the message's order counts (the bot seeded :a: :b: :handshake: :-1: in that order). The removed
    name is skipped in case Slack's answer lags behind the event; if it was added back, that event re-casts it.
    """
    try:
        response = _slack(client.reactions_get, channel=channel, timestamp=ts, full=True)
    except SlackApiError as error:
        log.warning("cannot read the reactions on %s/%s (%s); withdrawing the vote", channel, ts, error.response.get("error"))
        return None
    for entry in (response.get("message") or {}).get("reactions") or []:
        name = normalize_reaction(entry.get("name"))
        choice = VOTE_REACTIONS.get(name)
        if choice is not None and name != removed and voter in (entry.get("users") or []):
            return choice, name
    return None


def _tell(client: WebClient, channel: str | None, user: str, text: str) -> None:
    if not channel:
        return
    try:
        client.chat_postEphemeral(channel=channel, user=user, text=text)
    except SlackApiError as error:
        log.info("cannot tell %s: %s", user, error.response.get("error"))


# --- closing and results ------------------------------------------------------------------------------------------


def close_and_report(bot: "BotContext", round_id: int, *, closed_by: str | None = None) -> bool:
    """Close voting (once), store the preference pairs and post the revealed results with the chart."""
    if not evals.close_round(bot.db, round_id):
        return False
    created = sum(1 for result in evals.pairs_from_round(bot.db, round_id) if result.created)
    round_ = evals.get_round(bot.db, round_id)
    who = f" by <@{bk.escape(closed_by)}>" if closed_by else " (time is up)"
    note = (f"Voting on round #{round_id} closed{who}. {created} new preference pair(s) from decided comparisons: "
            "train on them with `/ft train --method dpo`.")
    if round_.channel:
        post_results(bot, round_id, channel=round_.channel, note=note)
    return True


def results_blocks(report: Any, *, note: str | None = None,
                   name_of: Callable[[str], str] = str) -> tuple[str, list[dict[str, Any]]]:
    from trainers.evaluation.results import format_p

    lines = report.lines(name_of)
    s = report.summary
    if s.win_rate is None:
        headline = f"Round #{report.round.id}: no decisive votes yet"
    else:
        subject = report.candidate if report.revealed else "the candidate"
        headline = (f"Round #{report.round.id}: {subject} wins {s.win_rate:.1%} of decisive votes "
                    f"(95% CI {s.ci.low:.1%}–{s.ci.high:.1%}, {format_p(s.p_value)}) — {s.verdict}")
    out = [bk.header(bk.truncate(headline, bk.MAX_HEADER_TEXT))]
    body, leaderboard = [], []
    in_board = False
    for line in lines:
        if line.startswith("Leaderboard across"):
            in_board = True
        (leaderboard if in_board else body).append(line)
    out.append(bk.section("\n".join(bk.escape(line) for line in body)))
    if leaderboard:
        out.append(bk.section("*" + bk.escape(leaderboard[0]) + "*\n" + "\n".join(bk.escape(l.strip()) for l in leaderboard[1:])))
    if note:
        out.append(bk.context(note))
    return bk.fallback(headline), bk.fit_blocks(out)


def _voter_names(client: WebClient) -> Callable[[str], str]:
    """User ID → display name (users.info, cached per report; the ID itself when Slack cannot say)."""
    from bot.capture import _Names

    return _Names(client)


def post_results(bot: "BotContext", round_id: int, *, channel: str, note: str | None = None) -> dict[str, Any]:
    """Post the results (revealed once closed) and upload the chart PNG to the channel."""
    from trainers.evaluation.charts import results_png
    from trainers.evaluation.results import round_report

    report = round_report(bot.db, round_id)
    text, view = results_blocks(report, note=note, name_of=_voter_names(bot.client))
    posted = _slack(bot.client.chat_postMessage, channel=channel, text=text, blocks=view)
    candidate = report.candidate if report.revealed else "candidate"
    baseline = report.baseline if report.revealed else "baseline"
    try:
        png = results_png(report.summary, candidate=candidate, baseline=baseline, leaderboard=report.leaderboard,
                          title=f"Round #{round_id}: {candidate} vs {baseline}")
        bk.upload_file(bot.client, channel, content=png, filename=f"ftbot-eval-round-{round_id}.png",
                       title=f"Evaluation round #{round_id}", initial_comment=f"Chart for evaluation round #{round_id}")
    except SlackApiError as error:
        log.warning("cannot upload the chart of round %s: %s", round_id, error.response.get("error"))
    return posted


def close_due_rounds(bot: "BotContext") -> int:
    """Close every round whose voting time is over (the scheduler calls this; commands and events too)."""
    closed = 0
    for round_ in evals.due_rounds(bot.db):
        try:
            closed += close_and_report(bot, round_.id)
        except Exception:
            log.exception("closing round %s failed", round_.id)
    return closed


def close_due_rounds_job(key: str) -> None:
    """Scheduled every minute while a round is open; removes itself when none is left."""
    from bot.scheduler import context_for, unschedule

    bot = context_for(key)
    if bot is None:
        return
    close_due_rounds(bot)
    if not evals.list_rounds(bot.db, statuses=RoundStatus.VOTABLE):
        unschedule(bot, CLOSE_JOB_ID)


def _schedule_close_check(bot: "BotContext") -> None:
    try:
        from bot.scheduler import context_key, schedule_every

        schedule_every(bot, CLOSE_JOB_ID, close_due_rounds_job, seconds=CLOSE_CHECK_SECONDS,
                       args=(context_key(bot),), run_now=False)
    except Exception:
        # Without the scheduler rounds still close lazily (next vote, /ft results, /ft eval) or by /ft eval close.
        log.exception("cannot schedule the evaluation close check")


# --- /ft eval add ----------------------------------------------------------------------------------------------------


def question_turns(bot: "BotContext", client: WebClient, channel: str, ts: str, thread_ts: str | None,
                   *, bot_user_id: str | None) -> list[dict[str, str]]:
    """The conversation up to the customer's question the link points at (a link to a team reply: the question before it)."""
    from bot.capture import _is_bot_message, _Names, _ts_key, channel_system_prompt, fetch_thread, slack_to_plain

    thread = fetch_thread(client, channel, thread_ts or ts)
    chosen = next((m for m in thread if m["ts"] == ts), None)
    if chosen is None:
        raise FtbotError("I could not find that message in its thread (deleted?); nothing was added")
    roles = bot.roles
    customer = chosen.get("user")
    stop_before = roles.configured and roles.is_team(customer)
    names = _Names(client)
    turns: list[dict[str, str]] = []
    for message in thread:
        position = _ts_key(message["ts"])
        if position > _ts_key(ts) or (stop_before and position == _ts_key(ts)):
            break
        if _is_bot_message(message, bot_user_id):
            continue
        user = message.get("user")
        team = roles.is_team(user) if roles.configured else user != customer
        text = slack_to_plain(message.get("text") or "", names)
        if not text:
            continue
        role = "assistant" if team else "user"
        if turns and turns[-1]["role"] == role:
            turns[-1]["content"] += "\n\n" + text
        else:
            turns.append({"role": role, "content": text})
    if not turns or turns[-1]["role"] != "user":
        raise FtbotError("that link does not end at a customer question: link the customer's message "
                         "(or a team reply, to use the question above it).")
    return [{"role": "system", "content": channel_system_prompt(bot, channel)}, *turns]


def add_question(bot: "BotContext", ctx: CommandContext) -> None:
    from bot.capture import _PERMALINK, _bot_user_id, channel_system_prompt, parse_permalink

    if not bot.roles.may_capture(ctx.user_id):
        raise FtbotError("only the support team can add evaluation questions (FTBOT_AGENTS/REVIEWERS/TRAINERS).")
    rest = ctx.rest.split(None, 1)[1] if len(ctx.rest.split(None, 1)) > 1 else ""
    if not rest.strip():
        raise FtbotError("usage: `/ft eval add <message link>` (⋮ → Copy link on the customer's question) "
                         "or `/ft eval add <question text>`")
    if _PERMALINK.search(rest.strip().strip("<>").split("|")[0]):
        channel, ts, thread_ts = parse_permalink(rest)
        messages = question_turns(bot, ctx.client, channel, ts, thread_ts, bot_user_id=_bot_user_id(ctx.client, bot))
        source = f"slack:{channel}:{ts}"
    else:
        messages = [{"role": "system", "content": channel_system_prompt(bot, ctx.channel_id)},
                    {"role": "user", "content": rest.strip()}]
        source = None
    result = evals.add_eval_prompt(bot.db, messages, source_key=source, added_by=ctx.user_id)
    count = len(evals.list_eval_prompts(bot.db))
    question = bk.truncate(messages[-1]["content"], 300)
    if not result.created:
        ctx.respond(f"That question is already in the evaluation set (#{result.example.id}).")
        return
    warning = ""
    trained = _trained_by(bot, result.example.content_hash)
    if trained:
        warning = f"\n:warning: {bk.escape(', '.join(trained))} trained on this exact question, so it is skipped when evaluating that model."
    ctx.respond(f"Added evaluation question #{result.example.id} ({count} added by hand so far).",
                blocks=[bk.section(f":white_check_mark: Added evaluation question #{result.example.id}:\n{_quote(question)}"
                                   f"\n{count} question(s) added by hand; each round also uses the model's validation split.{warning}")])


def _trained_by(bot: "BotContext", digest: str) -> list[str]:
    from storage.jobs import list_models

    names = []
    for model in list_models(bot.db)[:10]:
        if digest in evals.model_trained_prompt_hashes(bot.db, model):  # its SFT parent's training counts too
            names.append(model.name)
    return names


# --- the listeners ----------------------------------------------------------------------------------------------


def register(app: App, bot: "BotContext") -> None:
    """``/ft eval``, ``/ft results``, ``/ft judge``, the Post/Cancel and Judge/Cancel buttons and the reaction listeners."""

    def ft_eval(ctx: CommandContext) -> None:
        sub = ctx.args[0].lower() if ctx.args else ""
        if sub == "add":
            add_question(bot, ctx)
        elif sub == "close":
            close_command(bot, ctx)
        elif sub == "resume":
            resume_command(bot, ctx)
        elif sub == "cancel":
            cancel_command(bot, ctx)
        else:
            model, n = _parse_eval_args(ctx.args)
            start_round(bot, ctx, model, n)

    bot.router.add(
        "eval", usage="/ft eval [model] [--n 20] · /ft eval add <link|question> · /ft eval close|resume|cancel [round]",
        summary="Blind side-by-side answers of the candidate and the baseline, voted with reactions", handler=ft_eval,
    )
    bot.router.add("results", usage="/ft results [round]",
                   summary="Win rate with 95% interval, sign test, chart; reveals the models once voting closed",
                   handler=lambda ctx: results_command(bot, ctx))
    bot.router.add("judge", usage="/ft judge [round] [--model gpt-4.1]",
                   summary="Score a round with an LLM judge (both answer orders) and compare with the voters",
                   handler=lambda ctx: judge_command(bot, ctx))

    @app.action(POST_ACTION)
    def on_post(ack: Ack, body: dict[str, Any], action: dict[str, Any], respond: Respond) -> None:
        ack()
        user = (body.get("user") or {}).get("id")
        round_id = int(action.get("value") or 0)
        if not bot.roles.may_train(user):
            respond(text="Only trainers can start an evaluation round (FTBOT_TRAINERS).", response_type="ephemeral",
                    replace_original=False)
            return
        if not evals.move_round(bot.db, round_id, RoundStatus.GENERATING, from_status=RoundStatus.QUOTED):
            status = evals.get_round(bot.db, round_id).status
            respond(text=f"Round #{round_id} is already {status}.", response_type="ephemeral", replace_original=False)
            return
        respond(text=f"Round #{round_id}: generating answers with OpenAI; the comparisons will be posted in the channel.",
                replace_original=True)
        bot.defer(run_round, bot, round_id, started_by=user)

    @app.action(CANCEL_ACTION)
    def on_cancel(ack: Ack, action: dict[str, Any], respond: Respond) -> None:
        ack()
        round_id = int(action.get("value") or 0)
        if evals.move_round(bot.db, round_id, RoundStatus.CANCELLED, from_status=RoundStatus.QUOTED):
            respond(text=f"Round #{round_id} cancelled. Nothing was generated or spent.", replace_original=True)
        else:
            status = evals.get_round(bot.db, round_id).status
            respond(text=f"Round #{round_id} is already {status}.", response_type="ephemeral", replace_original=False)

    @app.action(JUDGE_ACTION)
    def on_judge(ack: Ack, body: dict[str, Any], action: dict[str, Any], respond: Respond) -> None:
        ack()
        user = (body.get("user") or {}).get("id")
        if not bot.roles.may_train(user):
            respond(text="Only trainers can run the LLM judge (FTBOT_TRAINERS).", response_type="ephemeral",
                    replace_original=False)
            return
        round_id, model, quote = _judge_quote(action)
        if not _claim_judge_quote(bot, quote):
            respond(text=f"That quote for judging round #{round_id} was already used or cancelled; `/ft judge` makes a new one.",
                    response_type="ephemeral", replace_original=False)
            return
        respond(text=f"Judging round #{round_id} with {model} (each question twice, answers swapped)…", replace_original=True)

        def say(text: str, blocks: list[dict[str, Any]] | None) -> None:
            respond(text=bk.fallback(text), blocks=blocks, replace_original=True)

        bot.defer(run_judge, bot, round_id, model, say)

    @app.action(JUDGE_CANCEL_ACTION)
    def on_judge_cancel(ack: Ack, action: dict[str, Any], respond: Respond) -> None:
        ack()
        round_id, _, quote = _judge_quote(action)
        if _claim_judge_quote(bot, quote):
            respond(text=f"Judging round #{round_id} cancelled. Nothing was spent.", replace_original=True)
        else:
            respond(text=f"That quote for judging round #{round_id} was already used or cancelled.",
                    response_type="ephemeral", replace_original=False)

    @app.event("reaction_added")
    def on_reaction_added(event: dict[str, Any], client: WebClient, context: BoltContext) -> None:
        outcome = handle_reaction(bot, client, event, added=True, bot_user_id=context.bot_user_id)
        log.debug("reaction_added: %s", outcome)

    @app.event("reaction_removed")
    def on_reaction_removed(event: dict[str, Any], client: WebClient, context: BoltContext) -> None:
        outcome = handle_reaction(bot, client, event, added=False, bot_user_id=context.bot_user_id)
        log.debug("reaction_removed: %s", outcome)


def _votable_round(bot: "BotContext", channel: str, round_id: int | None) -> EvalRound:
    if round_id is not None:
        return evals.get_round(bot.db, round_id)
    round_ = evals.latest_round(bot.db, channel=channel, statuses=RoundStatus.VOTABLE) or evals.latest_round(
        bot.db, statuses=RoundStatus.VOTABLE)
    if round_ is None:
        raise FtbotError("no evaluation round is open for voting; start one with `/ft eval`.")
    return round_


def close_command(bot: "BotContext", ctx: CommandContext) -> None:
    if not bot.roles.may_train(ctx.user_id):
        raise FtbotError("only trainers can close an evaluation round (FTBOT_TRAINERS).")
    round_ = _votable_round(bot, ctx.channel_id, _round_arg(ctx.args[1:]))
    if not close_and_report(bot, round_.id, closed_by=ctx.user_id):
        raise FtbotError(f"round #{round_.id} is {round_.status}, not open for voting; `/ft results {round_.id}` shows it.")
    ctx.respond(f"Closed round #{round_.id}; the results are posted in the channel.")


def resume_command(bot: "BotContext", ctx: CommandContext) -> None:
    """Finish a round a restart interrupted: generation is resumable, posting skips what is already posted."""
    if not bot.roles.may_train(ctx.user_id):
        raise FtbotError("only trainers can resume an evaluation round (FTBOT_TRAINERS).")
    round_id = _round_arg(ctx.args[1:])
    if round_id is None:
        raise FtbotError("usage: `/ft eval resume <round>`")
    round_ = evals.get_round(bot.db, round_id)
    if _in_flight(bot, round_id):
        raise FtbotError(f"round #{round_id} is being prepared right now.")
    if round_.status == RoundStatus.FAILED and any(not c.message_ts for c in evals.round_comparisons(bot.db, round_id)):
        # Generation failed (a model that could not load, OpenAI down): answers already written are kept.
        evals.move_round(bot.db, round_id, RoundStatus.GENERATING, from_status=RoundStatus.FAILED)
        round_ = evals.get_round(bot.db, round_id)
    if round_.status == RoundStatus.GENERATING:
        ctx.respond(f"Resuming round #{round_id}: answering the remaining questions, then posting.")
        run_round(bot, round_id, started_by=ctx.user_id)
    elif round_.status == RoundStatus.POSTING:
        ctx.respond(f"Resuming round #{round_id}: posting the comparisons not posted yet.")
        post_round(bot, round_id, started_by=ctx.user_id, resume=True)
    else:
        raise FtbotError(f"round #{round_id} is {round_.status}: there is nothing to resume.")


def cancel_command(bot: "BotContext", ctx: CommandContext) -> None:
    if not bot.roles.may_train(ctx.user_id):
        raise FtbotError("only trainers can cancel an evaluation round (FTBOT_TRAINERS).")
    round_id = _round_arg(ctx.args[1:])
    if round_id is None:
        raise FtbotError("usage: `/ft eval cancel <round>` (`/ft eval close` ends voting on an open round)")
    if _in_flight(bot, round_id):
        raise FtbotError(f"round #{round_id} is being prepared right now; cancel it once it is posted or failed.")
    preparing = (RoundStatus.QUOTED, RoundStatus.GENERATING, RoundStatus.POSTING, RoundStatus.FAILED)
    if not evals.move_round(bot.db, round_id, RoundStatus.CANCELLED, from_status=preparing):
        status = evals.get_round(bot.db, round_id).status
        raise FtbotError(f"round #{round_id} is {status}; only rounds that are not open for voting yet can be cancelled.")
    ctx.respond(f"Round #{round_id} cancelled.")


def results_command(bot: "BotContext", ctx: CommandContext) -> None:
    from trainers.evaluation.results import resolve_round, round_report

    close_due_rounds(bot)
    round_ = resolve_round(bot.db, _round_arg(ctx.args), channel=ctx.channel_id)
    if round_.status == RoundStatus.CLOSED:
        post_results(bot, round_.id, channel=ctx.channel_id)
        ctx.respond(f"Posted the results of round #{round_.id}.")
        return
    # Still open: interim numbers to the asker only, model names hidden, so the tally does not sway the voters.
    report = round_report(bot.db, round_.id)
    text, view = results_blocks(report, name_of=_voter_names(ctx.client), note="Interim result, only visible to you. `/ft eval close` ends voting, reveals the "
                                             "models and posts the result with its chart.")
    ctx.respond(text, blocks=view)


def judge_command(bot: "BotContext", ctx: CommandContext) -> None:
    """Quote what judging a round costs (OpenAI), with Judge / Cancel; nothing is spent before Judge."""
    import os
    import uuid

    from trainers.evaluation.results import resolve_round
    from trainers.evaluation.judge import DEFAULT_JUDGE_MODEL, JUDGE_MAX_TOKENS, JUDGE_MODEL_ENV, estimate_judge_cost

    if not bot.roles.may_train(ctx.user_id):
        raise FtbotError("only trainers can run the LLM judge (it calls OpenAI); ask an ftbot admin.")
    model = os.environ.get(JUDGE_MODEL_ENV) or DEFAULT_JUDGE_MODEL
    args = list(ctx.args)
    if "--model" in args:
        index = args.index("--model")
        if index + 1 >= len(args):
            raise FtbotError("`--model` needs a model name, e.g. `/ft judge --model gpt-4.1-2025-04-14`")
        model = args[index + 1]
        del args[index : index + 2]
    round_ = resolve_round(bot.db, _round_arg(args), channel=ctx.channel_id)
    if round_.status not in RoundStatus.WITH_RESULTS:
        raise FtbotError(f"round #{round_.id} is {round_.status}: there are no posted answers to judge.")
    estimate = estimate_judge_cost(bot.db, round_.id, model)
    if not estimate.prompts:
        raise FtbotError(f"round #{round_.id} has no question with both answers to judge.")
    questions = estimate.prompts // 2
    priced = estimate.max_usd is not None
    cost = f"at most ${estimate.max_usd:.4f}" if priced else f"an unknown amount (no price for {model} in the table)"
    # The quote's own id: Judge and Cancel both claim it, so only the first click of either does anything.
    value = json.dumps({"round": round_.id, "model": model, "quote": uuid.uuid4().hex}, separators=(",", ":"))
    text = (f"Judging round #{round_.id} with {model}: {questions} questions, each judged twice (answers swapped), "
            f"costs {cost}. Judge or cancel?")
    blocks = _quote_blocks(
        f"Round #{round_.id}: judging *{questions}* questions twice (answers swapped) with `{bk.escape(model)}` "
        f"costs {f'at most *${estimate.max_usd:.4f}*' if priced else '*an unknown amount*'}:\n"
        + _estimate_line(estimate),
        f"input tokens counted on the exact judge prompts, output at its limit of {JUDGE_MAX_TOKENS} tokens per call.",
        confirm=("Judge", JUDGE_ACTION), cancel_action=JUDGE_CANCEL_ACTION, value=value, block_id=f"judge_quote_{round_.id}",
    )
    ctx.respond(text, blocks=blocks)


def _judge_quote(action: dict[str, Any]) -> tuple[int, str, str]:
    """(round id, judge model, quote id) from a Judge / Cancel button."""
    value = json.loads(action.get("value") or "{}")
    return int(value["round"]), str(value["model"]), str(value["quote"])


def _claim_judge_quote(bot: "BotContext", quote: str) -> bool:
    from storage.events import claim_event

    return claim_event(bot.db, f"judge_quote:{quote}")


def run_judge(bot: "BotContext", round_id: int, model: str, say: Callable[[str, list[dict[str, Any]] | None], None]) -> None:
    """Judge the round (the slow part: two OpenAI calls per question) and tell the result through `say`."""
    from trainers.evaluation.results import round_report
    from trainers.evaluation.judge import judge_round

    try:
        run = judge_round(bot.db, round_id, model=model, client=bot.openai_client)
    except FtbotError as error:
        line = f"Judging round #{round_id} with {model} stopped: {error}"
        say(line, [bk.section(":warning: " + bk.escape(line))])
        return
    report = round_report(bot.db, round_id)
    agreement = next((j for j in report.judges if j.judge_model == model), None)
    line = (f"{model} judged {run.judged} questions; {run.consistent} verdicts held in both orders "
            f"(the others count as ties).")
    if agreement is not None:
        rate = "n/a" if agreement.rate is None else f"{agreement.rate:.0%}"
        line += (f" For the candidate: {agreement.judge_wins} wins, {agreement.judge_losses} losses, {agreement.judge_ties} ties."
                 f" Agreement with the voters: {agreement.agreed}/{agreement.compared} decided questions ({rate}).")
    say(line, [bk.section(":scales: " + bk.escape(line))])

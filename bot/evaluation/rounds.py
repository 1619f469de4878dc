"""A round's life after it was started: generating the answers, posting the blind comparisons, closing the vote.

Generation runs in a worker process for local models (the bot never imports torch) and in the calling thread for
OpenAI; one channel message shows the progress. Posting is paced (about one message per second per channel),
waits out Slack's 429s, seeds the vote reactions and can resume after a restart. Closing happens once, when
voting time is over (a scheduler job, and lazily on the next event or command) or on ``/ft eval close``.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from datetime import timedelta
from typing import TYPE_CHECKING, Any

from slack_sdk.errors import SlackApiError
from slack_sdk.web import SlackResponse

from bot import blocks as bk
from bot.evaluation.views import comparison_message, full_comparison_text, results_blocks
from bot.scheduler import context_for, context_key, schedule_every, unschedule
from bot.threads import UserNames
from storage import evals
from storage.errors import FtbotError
from storage.evals import RoundStatus
from storage.models import EvalRound, stored_id, utcnow
from storage.scrub import scrub_credentials
from trainers.cluster import WorkerHandle
from trainers.evaluation.charts import report_png
from trainers.evaluation.generation import generate_round, read_log_tail, round_needs_worker, spawn_generation
from trainers.evaluation.inference import GenerationSettings
from trainers.evaluation.results import round_report

if TYPE_CHECKING:  # bot.app imports every feature (so this module): a type-only import avoids the cycle
    from bot.app import BotContext

log = logging.getLogger(__name__)

# The reactions seeded on every comparison, one per vote choice (storage.votes.VOTE_REACTIONS), in this order.
SEED_REACTIONS = ("a", "b", "handshake", "-1")
CLOSE_JOB_ID = "eval-close-due"
CLOSE_CHECK_SECONDS = 60.0
PROGRESS_EVERY_SECONDS = 3.0
_in_flight_lock = threading.Lock()


def call_slack(method: Callable[..., SlackResponse], /, *, attempts: int = 5, **kwargs: Any) -> SlackResponse:
    """Call a Web API method, waiting out 429s (Retry-After) beyond the client's own retries."""
    for attempt in range(attempts):
        try:
            return method(**kwargs)
        except SlackApiError as error:
            response = error.response
            limited = response.status_code == 429 or response.get("error") == "ratelimited"
            if not limited or attempt == attempts - 1:
                raise
            headers = response.headers or {}
            retry_after = float(headers.get("Retry-After") or headers.get("retry-after") or 1)
            time.sleep(min(max(retry_after, 0.1), 30.0))
    raise AssertionError("unreachable")


class _ProgressMessage:
    """The one channel message that shows a round's progress (posted once, then updated)."""

    def __init__(self, bot: BotContext, round_: EvalRound):
        self.bot = bot
        self.round = round_
        self.ts: str | None = None
        self._last = 0.0

    def show(self, line: str, *, force: bool = True, note: str | None = None) -> None:
        """Show ``line`` (plain text, escaped here) and an optional ``note`` (mrkdwn the caller escaped)."""
        now = time.monotonic()
        if not force and now - self._last < PROGRESS_EVERY_SECONDS:
            return
        self._last = now
        text = f"Blind evaluation round #{self.round.id}: {bk.escape(line)}"
        view = [bk.section(f":hourglass_flowing_sand: *Blind evaluation round #{self.round.id}*: {bk.escape(line)}")]
        if note:
            view.append(bk.context(note))
        channel = self.round.channel or ""
        try:
            if self.ts is None:
                posted = call_slack(self.bot.client.chat_postMessage, channel=channel, text=bk.fallback(text), blocks=view)
                self.ts = posted["ts"]
            else:
                call_slack(self.bot.client.chat_update, channel=channel, ts=self.ts, text=bk.fallback(text), blocks=view)
        except SlackApiError as error:
            log.warning("cannot show progress of round %s: %s", self.round.id, error.response.get("error"))


# --- one thread per round in this process -------------------------------------------------------------------------


def is_in_flight(bot: BotContext, round_id: int) -> bool:
    """Whether a thread of this process is generating or posting the round right now."""
    with _in_flight_lock:
        return round_id in bot.rounds_in_flight


def _claim_in_process(bot: BotContext, round_id: int) -> bool:
    """One thread per round in this process (the database status guards against other processes)."""
    with _in_flight_lock:
        rounds = bot.rounds_in_flight
        if round_id in rounds:
            return False
        rounds.add(round_id)
        return True


def _release_in_process(bot: BotContext, round_id: int) -> None:
    with _in_flight_lock:
        bot.rounds_in_flight.discard(round_id)


# --- generating -----------------------------------------------------------------------------------------------------


def run_round(bot: BotContext, round_id: int, *, started_by: str | None = None,
              poll_seconds: float = 1.0) -> None:
    """Generate the round's answers (worker process for local models, this thread for OpenAI), then post them."""
    if not _claim_in_process(bot, round_id):
        return
    try:
        _run_round(bot, round_id, started_by=started_by, poll_seconds=poll_seconds)
    finally:
        _release_in_process(bot, round_id)


def _run_round(bot: BotContext, round_id: int, *, started_by: str | None, poll_seconds: float) -> None:
    round_ = evals.get_round(bot.db, round_id)
    progress = _ProgressMessage(bot, round_)
    total = len(evals.round_comparisons(bot.db, round_id))
    progress.show(f"answering {total} questions with both models…")
    try:
        if round_needs_worker(bot.db, round_id):
            url = bot.db.engine.url.render_as_string(hide_password=False)
            process = spawn_generation(round_id, database_url=url, settings=bot.settings, created_at=round_.created_at)
            code = _wait_for_worker(bot, process, round_id, total, progress, poll_seconds)
            if code != 0:
                evals.move_round(bot.db, round_id, RoundStatus.FAILED, from_status=RoundStatus.GENERATING)
                # The log (tracebacks, server paths, customer questions) stays out of the channel.
                progress.show(f"generation failed (worker exit code {code}). Nothing was posted; fix the cause, then "
                              f"`/ft eval resume {round_id}` (answers already written are kept).",
                              note=_send_generation_log(bot, round_id, started_by, process))
                return
        else:
            def report(name: str, done: int, of: int) -> None:
                progress.show(f"answering with the models… {done}/{of} for one model", force=False)

            generate_round(bot.db, round_id, settings=GenerationSettings.from_settings(bot.settings),
                           openai_max_retries=bot.settings.openai_max_retries, openai_client=bot.openai_client,
                           progress=report)
    except FtbotError as error:
        evals.move_round(bot.db, round_id, RoundStatus.FAILED, from_status=RoundStatus.GENERATING)
        progress.show(f"generation failed: {scrub_credentials(str(error))} Nothing was posted; "
                      f"`/ft eval resume {round_id}` retries.")
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


def _send_generation_log(bot: BotContext, round_id: int, started_by: str | None, worker: WorkerHandle) -> str:
    """DM the end of the generation worker's log to the trainer who started the round; where it went (mrkdwn)."""
    tail = read_log_tail(round_id, worker=worker)
    if not (started_by and tail.strip() and bot.roles.may_train(started_by)):
        return "The worker log is kept with the round on the ftbot server."
    sent = bk.send_worker_log(bot.client, started_by,
                              text=f"Generation for evaluation round #{round_id} failed. The end of its worker log:",
                              heading=f":x: *Generation for evaluation round #{round_id} failed*", tail=tail)
    if not sent:
        return "The worker log is kept with the round on the ftbot server."
    return f"The worker log was sent to <@{bk.escape(started_by)}>, who started the round."


def _wait_for_worker(bot: BotContext, process: WorkerHandle, round_id: int, total: int,
                     progress: _ProgressMessage, poll_seconds: float) -> int:
    while True:
        code = process.poll()
        if code is not None:
            return code
        answered = sum(bool(c.answer_a) + bool(c.answer_b) for c in evals.round_comparisons(bot.db, round_id))
        progress.show(f"answering {total} questions with both models… {answered}/{2 * total} answers", force=False)
        time.sleep(poll_seconds)


# --- posting --------------------------------------------------------------------------------------------------------


def _posting_stopped(round_id: int, progress: _ProgressMessage, error: SlackApiError) -> None:
    reason = error.response.get("error") or str(error)
    log.warning("posting round %s stopped: %s", round_id, reason)
    hint = " Invite me first (`/invite @ftbot`)." if reason in ("not_in_channel", "channel_not_found") else ""
    progress.show(f"posting stopped: Slack said {reason}.{hint} `/ft eval resume {round_id}` posts the rest.")


def post_round(bot: BotContext, round_id: int, *, started_by: str | None = None, resume: bool = False) -> bool:
    """Post every comparison of a generated round not posted yet, then open voting (False: another caller does it)."""
    if not _claim_in_process(bot, round_id):
        return False
    try:
        progress = _ProgressMessage(bot, evals.get_round(bot.db, round_id))
        try:
            return _post_round(bot, round_id, progress=progress, started_by=started_by, resume=resume)
        except SlackApiError as error:
            _posting_stopped(round_id, progress, error)
            return False
    finally:
        _release_in_process(bot, round_id)


def _post_round(bot: BotContext, round_id: int, *, progress: _ProgressMessage | None = None,
                started_by: str | None = None, resume: bool = False) -> bool:
    claimed = evals.move_round(bot.db, round_id, RoundStatus.POSTING, from_status=RoundStatus.GENERATING)
    if not claimed and not (resume and evals.get_round(bot.db, round_id).status == RoundStatus.POSTING):
        return False
    round_ = evals.get_round(bot.db, round_id)
    progress = progress or _ProgressMessage(bot, round_)
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
        posted = call_slack(client.chat_postMessage, channel=channel, text=text, blocks=view, unfurl_links=False,
                            unfurl_media=False)
        evals.set_comparison_message(bot.db, stored_id(comparison), channel=posted["channel"], message_ts=posted["ts"])
        for name in SEED_REACTIONS:
            try:
                call_slack(client.reactions_add, channel=posted["channel"], timestamp=posted["ts"], name=name)
            except SlackApiError as error:
                if error.response.get("error") != "already_reacted":
                    log.warning("cannot seed :%s: on comparison %s: %s", name, comparison.id, error.response.get("error"))
        if truncated:
            try:
                bk.upload_file(client, posted["channel"], content=full_comparison_text(comparison, index),
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
            call_slack(client.chat_update, channel=channel, ts=progress.ts, text=text, blocks=view)
        except SlackApiError as error:
            log.warning("cannot update round %s's message: %s", round_id, error.response.get("error"))
    _schedule_close_check(bot)
    return True


# --- closing and results --------------------------------------------------------------------------------------------


def close_and_report(bot: BotContext, round_id: int, *, closed_by: str | None = None) -> bool:
    """Close voting (once), store the preference pairs and post the revealed results with the chart."""
    if not evals.close_round(bot.db, round_id):
        return False
    created = sum(1 for result in evals.pairs_from_round(bot.db, round_id) if result.created)
    round_ = evals.get_round(bot.db, round_id)
    who = f" by <@{bk.escape(closed_by)}>" if closed_by else " (time is up)"
    pairs = (f"{created} new preference pair(s) from decided comparisons: train on them with `/ft train --method dpo`."
             if created else "No comparison was decided, so it yields no preference pairs.")
    note = f"Voting on round #{round_id} closed{who}. {pairs}"
    if round_.channel:
        post_results(bot, round_id, channel=round_.channel, note=note)
    return True


def post_results(bot: BotContext, round_id: int, *, channel: str, note: str | None = None) -> SlackResponse:
    """Post the results (revealed once closed) and upload the chart PNG to the channel."""
    report = round_report(bot.db, round_id)
    text, view = results_blocks(report, note=note, name_of=UserNames(bot.client))
    posted = call_slack(bot.client.chat_postMessage, channel=channel, text=text, blocks=view)
    try:
        png = report_png(report)
        bk.upload_file(bot.client, channel, content=png, filename=f"ftbot-eval-round-{round_id}.png",
                       title=f"Evaluation round #{round_id}", initial_comment=f"Chart for evaluation round #{round_id}")
    except SlackApiError as error:
        log.warning("cannot upload the chart of round %s: %s", round_id, error.response.get("error"))
    return posted


def close_due_rounds(bot: BotContext) -> int:
    """Close every round whose voting time is over (the scheduler calls this; commands and events too)."""
    closed = 0
    for round_ in evals.due_rounds(bot.db):
        try:
            closed += close_and_report(bot, stored_id(round_))
        except Exception:
            log.exception("closing round %s failed", round_.id)
    return closed


def close_due_rounds_job(key: str) -> None:
    """Scheduled every minute while a round is open; removes itself when none is left."""
    bot = context_for(key)
    if bot is None:
        return
    close_due_rounds(bot)
    if not evals.list_rounds(bot.db, statuses=RoundStatus.VOTABLE):
        unschedule(bot, CLOSE_JOB_ID)


def _schedule_close_check(bot: BotContext) -> None:
    try:
        schedule_every(bot, CLOSE_JOB_ID, close_due_rounds_job, seconds=CLOSE_CHECK_SECONDS,
                       args=(context_key(bot),), run_now=False)
    except Exception:
        # Without the scheduler rounds still close lazily (next vote, /ft results, /ft eval) or by /ft eval close.
        log.exception("cannot schedule the evaluation close check")

"""The bot's scheduler: APScheduler with its job store in ftbot's own database, so scheduled work survives restarts.

Training uses it to poll OpenAI and relay local workers' progress to Slack every few seconds; other features may
add their own jobs (:func:`schedule_every`). Every started scheduler also keeps the daily housekeeping job that
forgets old Slack event claims (:func:`forget_old_event_claims`), the daily job that discards training quotes nobody
started within ``storage.jobs.QUOTE_MAX_AGE`` (:func:`expire_old_quotes`), the hourly job that expires reply drafts nobody
decided within ``FTBOT_DRAFT_EXPIRE_HOURS`` (:func:`expire_old_drafts`) and the job that processes Slack events a stopped
process left unfinished in the inbox (:func:`redeliver_pending_events`: at once when the scheduler starts, then
every ``REDELIVER_SECONDS``); ``ftbot run`` starts the scheduler at once.
Stored jobs keep only a textual function reference and plain arguments; the function finds the live ``BotContext``
with :func:`context_for` using the database URL as the key, so a new bot process on the same database picks up
every stored job where the old one stopped.

Two bot processes on one database (a rolling deploy) both run a scheduler on the one job table, which APScheduler 3
does not coordinate: both find a job due. :class:`OncePerRunExecutor` runs a due job only under its run lock and
only after claiming its run time (``storage.scheduled_runs``), so each scheduled run happens once across processes;
:class:`SharedJobStore` lets a process update a job another process just removed without its scheduler thread dying.
"""

from __future__ import annotations

import atexit
import logging
import threading
from collections.abc import Callable
from concurrent.futures import Future
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Any

from apscheduler.events import JobExecutionEvent
from apscheduler.executors.base import run_job
from apscheduler.executors.pool import ThreadPoolExecutor
from apscheduler.job import Job as ScheduledJob
from apscheduler.jobstores.base import JobLookupError
from apscheduler.jobstores.sqlalchemy import SQLAlchemyJobStore
from apscheduler.schedulers.background import BackgroundScheduler

from storage.db import Database
from storage.deployments import list_deployments
from storage.drafts import expire_drafts, store_missing_training_data
from storage.events import forget_events_before
from storage.jobs import QUOTE_MAX_AGE, expire_quotes, has_scheduled_jobs
from storage.models import utcnow
from storage.scheduled_runs import claim_run, forget_run, forget_runs_except, hold_run, is_scheduled

if TYPE_CHECKING:  # bot.app imports every feature (so this module): a type-only import avoids the cycle
    from bot.app import BotContext

log = logging.getLogger(__name__)

JOBS_TABLE = "apscheduler_jobs"
# Housekeeping that every bot process keeps scheduled. Stable ids: a restart replaces the stored job, never adds one.
FORGET_EVENTS_JOB = "forget-old-event-claims"
REDELIVER_EVENTS_JOB = "redeliver-pending-events"
EXPIRE_QUOTES_JOB = "expire-abandoned-quotes"
EXPIRE_DRAFTS_JOB = "expire-undecided-drafts"
REFRESH_ENDPOINTS_JOB = "refresh-together-endpoints"
# How often the Together endpoints ftbot started are checked for having stopped by themselves (the idle auto-stop).
ENDPOINT_CHECK_SECONDS = 300
# How often stored events nobody is working on (their process died) are looked for, besides at start-up.
REDELIVER_SECONDS = 30
# Slack retries an event within about 5 minutes; a week of claims is far more than retries can need.
EVENT_CLAIM_DAYS = 7

_contexts: dict[str, BotContext] = {}
_lock = threading.Lock()


def context_key(bot: BotContext) -> str:
    """The key stored with scheduled jobs: the database URL (password hidden), stable across restarts."""
    return bot.db.url


def context_for(key: str) -> BotContext | None:
    return _contexts.get(key)


class SharedJobStore(SQLAlchemyJobStore):
    """APScheduler's SQLAlchemy job store, for a table other processes write too."""

    def update_job(self, job: ScheduledJob) -> None:
        # After running a due job the scheduler stores its next run time. When another process removed the job
        # meanwhile (a relay that finished unschedules itself), the store raises JobLookupError, which nothing in
        # APScheduler catches: the scheduler thread would die and this process would never run a job again.
        try:
            super().update_job(job)
        except JobLookupError:
            log.debug("scheduled job %s was removed by another process", job.id)


class OncePerRunExecutor(ThreadPoolExecutor):
    """A thread pool that runs each due job once across the processes on one database (see the module docstring)."""

    def __init__(self, db: Database, max_workers: int = 2):
        super().__init__(max_workers)
        self.db = db

    def _do_submit_job(self, job: ScheduledJob, run_times: list[datetime]) -> None:
        # As BasePoolExecutor does, with the run wrapped in the run lock and the claim.
        def done(future: Future[list[JobExecutionEvent]]) -> None:
            error = future.exception()
            if error is not None:
                self._run_job_error(job.id, error, error.__traceback__)
            else:
                self._run_job_success(job.id, future.result())

        self._pool.submit(self.run_once, job, run_times).add_done_callback(done)

    def run_once(self, job: ScheduledJob, run_times: list[datetime]) -> list[JobExecutionEvent]:
        """Run ``job`` for ``run_times`` (their last, coalesced) unless another process runs or ran it; its events."""
        with hold_run(self.db, job.id) as held:
            if not held:
                log.debug("scheduled job %s is running in another process: skipped", job.id)
                return []
            if not is_scheduled(self.db, JOBS_TABLE, job.id) or not claim_run(self.db, job.id, run_times[-1]):
                log.debug("scheduled job %s at %s ran in another process (or was removed): skipped", job.id, run_times[-1])
                return []
            return list(run_job(job, job._jobstore_alias, run_times, self._logger.name))


def build_scheduler(bot: BotContext, *, max_workers: int = 2) -> BackgroundScheduler:
    """A scheduler whose jobs live in the bot's database (same engine, so SQLite's settings apply)."""
    # "skipped: maximum number of running instances reached" is expected when a poll outlasts its interval.
    logging.getLogger("apscheduler.scheduler").setLevel(logging.ERROR)
    return BackgroundScheduler(
        jobstores={"default": SharedJobStore(engine=bot.db.engine, tablename=JOBS_TABLE)},
        executors={"default": OncePerRunExecutor(bot.db, max_workers)},
        # A poll missed while the bot was down runs once when it is back, not once per missed interval.
        job_defaults={"coalesce": True, "max_instances": 1, "misfire_grace_time": 300},
        timezone="UTC",
    )


def has_stored_jobs(bot: BotContext) -> bool:
    """Whether a previous process left scheduled jobs in this database (then the bot starts its scheduler)."""
    try:
        return has_scheduled_jobs(bot.db, JOBS_TABLE)
    except Exception:  # never block the bot's start on this check
        log.debug("cannot read the scheduler's job table", exc_info=True)
        return False


def start_scheduler(bot: BotContext) -> BackgroundScheduler:
    """Register ``bot`` for scheduled jobs and start its scheduler (once); stored jobs resume now."""
    with _lock:
        _contexts[context_key(bot)] = bot
        scheduler = bot.scheduler
        if scheduler is None:
            scheduler = build_scheduler(bot)
            scheduler.start()
            bot.scheduler = scheduler
            atexit.register(_shutdown_quietly, scheduler)
            _schedule_housekeeping(bot, scheduler)
            # Claims of jobs removed since (a relay that ended while another process had just claimed it).
            forget_runs_except(bot.db, {job.id for job in scheduler.get_jobs()})
        return scheduler


def _schedule_housekeeping(bot: BotContext, scheduler: BackgroundScheduler) -> None:
    # A fixed time of day (not "every 24 h from now") so frequent restarts cannot keep postponing it.
    scheduler.add_job(
        f"{__name__}:forget_old_event_claims", "cron", hour=3, minute=17, id=FORGET_EVENTS_JOB,
        args=[context_key(bot)], replace_existing=True,
    )
    scheduler.add_job(
        f"{__name__}:expire_old_quotes", "cron", hour=3, minute=27, id=EXPIRE_QUOTES_JOB,
        args=[context_key(bot)], replace_existing=True,
    )
    # Hourly: a draft expires within the hour after FTBOT_DRAFT_EXPIRE_HOURS, however short that is set.
    scheduler.add_job(
        f"{__name__}:expire_old_drafts", "cron", minute=37, id=EXPIRE_DRAFTS_JOB,
        args=[context_key(bot)], replace_existing=True,
    )
    scheduler.add_job(
        f"{__name__}:refresh_together_endpoints", "interval", seconds=ENDPOINT_CHECK_SECONDS, id=REFRESH_ENDPOINTS_JOB,
        args=[context_key(bot)], replace_existing=True,
    )
    # First run now: the events a killed process acknowledged but never processed are handled at start-up.
    scheduler.add_job(
        f"{__name__}:redeliver_pending_events", "interval", seconds=REDELIVER_SECONDS, id=REDELIVER_EVENTS_JOB,
        args=[context_key(bot)], replace_existing=True, next_run_time=datetime.now(UTC),
    )


def forget_old_event_claims(key: str, *, days: int = EVENT_CLAIM_DAYS) -> int:
    """Scheduled daily: delete Slack event claims older than ``days`` (the retry window is minutes); returns how many."""
    bot = context_for(key)
    if bot is None:
        return 0
    cutoff = utcnow() - timedelta(days=days)
    deleted = forget_events_before(bot.db, cutoff)
    if bot.inbox.db is not bot.db:  # the inbox's own SQLite file (storage.events.inbox_database)
        deleted += forget_events_before(bot.inbox.db, cutoff)
    log.info("forgot %d Slack event claim(s) older than %d days", deleted, days)
    return deleted


def expire_old_quotes(key: str) -> int:
    """Scheduled daily: discard training quotes never started within ``QUOTE_MAX_AGE``; returns how many."""
    bot = context_for(key)
    if bot is None:
        return 0
    expired = expire_quotes(bot.db)
    if expired:
        log.info("discarded %d training quote(s) older than %s: %s", len(expired), QUOTE_MAX_AGE, expired)
    return len(expired)


def expire_old_drafts(key: str) -> int:
    """Scheduled hourly: mark reply drafts nobody decided within ``FTBOT_DRAFT_EXPIRE_HOURS`` expired (returns how many),
    and store the training data a stopped process left undone for decided drafts."""
    bot = context_for(key)
    if bot is None:
        return 0
    expired = expire_drafts(bot.db, timedelta(hours=bot.settings.draft_expire_hours))
    if expired:
        log.info("expired %d reply draft(s) nobody decided within %g hours", expired, bot.settings.draft_expire_hours)
    completed = store_missing_training_data(bot.db, sent_as_example=bot.settings.drafts_sent_as_examples)
    if completed:
        log.info("stored the training data of %d decided draft(s) a stopped process left without it", completed)
    return expired


def refresh_together_endpoints(key: str) -> int:
    """Scheduled: record the Together endpoints that stopped by themselves (idle auto-stop) or failed, so listings
    never show a model as served (and billing) when it is not; returns how many."""
    bot = context_for(key)
    if bot is None or not list_deployments(bot.db, active_only=True):
        return 0
    # Local: the Together client loads only when an endpoint runs.
    from trainers.training.together_endpoints import refresh_deployments

    ended = refresh_deployments(bot.db)
    for row in ended:
        log.info("the Together endpoint of %s ended by itself (%s): %s", row.model_name, row.status, row.error or "")
    return len(ended)


def redeliver_pending_events(key: str) -> int:
    """Scheduled: process the Slack events left pending in the inbox by a process that stopped; returns how many."""
    bot = context_for(key)
    if bot is None:
        return 0
    return bot.inbox.redeliver_pending()


def stop_scheduler(bot: BotContext, *, wait: bool = True) -> None:
    """Stop this bot's scheduler; its stored jobs stay in the database for the next process."""
    with _lock:
        scheduler, bot.scheduler = bot.scheduler, None
        if _contexts.get(context_key(bot)) is bot:
            del _contexts[context_key(bot)]
    if scheduler is not None:
        _shutdown_quietly(scheduler, wait=wait)


def _shutdown_quietly(scheduler: BackgroundScheduler, wait: bool = False) -> None:
    try:
        if scheduler.running:
            scheduler.shutdown(wait=wait)
    except Exception:  # at exit the database may already be gone
        log.debug("scheduler shutdown failed", exc_info=True)


def schedule_every(
    bot: BotContext,
    job_id: str,
    func: str | Callable[..., Any],
    *,
    seconds: float,
    args: tuple[Any, ...] = (),
    run_now: bool = True,
) -> None:
    """Run ``func(*args)`` every ``seconds`` until it is removed; the same ``job_id`` replaces, never duplicates.

    ``func`` should be a module-level function (stored as ``"module:function"``) with picklable ``args``.
    """
    scheduler = start_scheduler(bot)
    kwargs: dict[str, Any] = {}
    if run_now:
        kwargs["next_run_time"] = datetime.now(UTC)
    scheduler.add_job(func, "interval", seconds=seconds, id=job_id, args=list(args), replace_existing=True, **kwargs)


def unschedule(bot: BotContext, job_id: str) -> None:
    scheduler = bot.scheduler
    if scheduler is None:
        return
    try:
        scheduler.remove_job(job_id)
    except JobLookupError:
        pass
    forget_run(bot.db, job_id)

"""The bot's scheduler keeps one daily job that forgets old Slack event claims, across restarts (SQLite and PostgreSQL)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from sqlalchemy import select, update

from bot.scheduler import FORGET_EVENTS_JOB, JOBS_TABLE, context_key, forget_old_event_claims, start_scheduler, stop_scheduler
from storage.events import claim_event
from storage.jobs import has_scheduled_jobs
from storage.models import ProcessedEvent, utcnow
from tests.fixtures.slack_api import SlackHarness


def _housekeeping_jobs(scheduler) -> list:
    return [job for job in scheduler.get_jobs() if job.id == FORGET_EVENTS_JOB]


def test_the_daily_claim_cleanup_is_scheduled_once_across_restarts(db, fake_slack):
    assert not has_scheduled_jobs(db, JOBS_TABLE)  # no scheduler ever ran on this database: no table yet
    for _process in range(2):  # two bot processes, one after the other, on the same database
        harness = SlackHarness.create(db, fake_slack)
        try:
            scheduler = start_scheduler(harness.bot)
            assert start_scheduler(harness.bot) is scheduler  # a second start in one process is the same scheduler
            [job] = _housekeeping_jobs(scheduler)
            assert job.func_ref == "bot.scheduler:forget_old_event_claims" and job.args == (context_key(harness.bot),)
            # A fixed time of day: restarting the bot does not push the next run further away.
            assert (job.next_run_time.hour, job.next_run_time.minute) == (3, 17)
            assert job.next_run_time - datetime.now(UTC) <= timedelta(days=1)
        finally:
            stop_scheduler(harness.bot)
            harness.close()
    # What the database keeps for the next process: still one job, and a new bot starts its scheduler for it.
    assert has_scheduled_jobs(db, JOBS_TABLE)
    harness = SlackHarness.create(db, fake_slack)
    try:
        assert harness.bot.scheduler is not None  # build_app started it because of the stored job
        assert len(_housekeeping_jobs(start_scheduler(harness.bot))) == 1
    finally:
        stop_scheduler(harness.bot)
        harness.close()


def test_the_cleanup_forgets_only_claims_older_than_a_week(db, fake_slack):
    for event_id in ("Ev_old", "Ev_older", "Ev_six_days", "Ev_now"):
        assert claim_event(db, event_id)
    ages = {"Ev_old": timedelta(days=7, minutes=1), "Ev_older": timedelta(days=30), "Ev_six_days": timedelta(days=6)}
    with db.session() as session:
        for event_id, age in ages.items():
            session.execute(update(ProcessedEvent).where(ProcessedEvent.event_id == event_id).values(created_at=utcnow() - age))
    harness = SlackHarness.create(db, fake_slack)
    try:
        start_scheduler(harness.bot)  # registers the bot under its key, as in a running process
        assert forget_old_event_claims(context_key(harness.bot)) == 2
        assert forget_old_event_claims(context_key(harness.bot)) == 0
    finally:
        stop_scheduler(harness.bot)
        harness.close()
    with db.session() as session:
        assert sorted(session.scalars(select(ProcessedEvent.event_id))) == ["Ev_now", "Ev_six_days"]
    # Retries of the kept events are still recognised; a forgotten one could be claimed again.
    assert not claim_event(db, "Ev_six_days") and claim_event(db, "Ev_old")

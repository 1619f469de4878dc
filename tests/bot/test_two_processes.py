"""Two bot processes on one database (a rolling deploy) stay correct: each scheduled run happens once, a job removed
by one process never stops the other's scheduler, and one training job gets one progress message, one loss curve
and edits that never go back to an older state.

Each "process" is a scheduler (or a whole bot) on an engine of its own: nothing in memory is shared between the two
schedulers, so what coordinates them is the database, as between two hosts. (In one Python process both bots
register under one ``context_for`` key, so the second bot's context serves the scheduled jobs of both schedulers.)
"""

from __future__ import annotations

import re
import threading
import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from types import SimpleNamespace
from typing import Any

import pytest
from apscheduler.events import EVENT_JOB_EXECUTED, JobExecutionEvent
from apscheduler.schedulers.background import BackgroundScheduler
from sqlalchemy import inspect, text

from bot.scheduler import JOBS_TABLE, build_scheduler, start_scheduler, stop_scheduler
from bot.training import START_ACTION
from storage.db import Database
from storage.examples import import_records
from storage.jobs import get_job, list_models
from storage.scheduled_runs import claim_run, claimed_runs
from storage.vocabulary import JobStatus
from tests.bot.training_helpers import buttons, click, quote
from tests.fixtures.concurrency import at_once, wait_until
from tests.fixtures.db import database_url
from tests.fixtures.slack_api import SlackHarness
from trainers.tiny_model import sample_conversations

MODEL = "gpt-4o-mini-2024-07-18"
TICK_SECONDS = 0.3


def tick() -> None:
    """The scheduled job of these tests (stored as ``tests.bot.test_two_processes:tick``): its runs are counted by
    the schedulers' JOB_EXECUTED events."""
    time.sleep(0.05)  # long enough for both processes to be inside one run at once, were nothing to stop them


class Processes:
    """Two schedulers, each on its own engine to one database, recording which scheduled runs each executed."""

    def __init__(self, first: Database, second: Database):
        self.dbs = (first, second)
        self.schedulers: list[BackgroundScheduler] = []
        self.executed: list[tuple[int, str, datetime]] = []  # (process, job id, scheduled run time)
        self._lock = threading.Lock()
        for index, db in enumerate(self.dbs):
            scheduler = build_scheduler(SimpleNamespace(db=db))  # type: ignore[arg-type]  # only .db is read
            scheduler.add_listener(self._recorder(index), EVENT_JOB_EXECUTED)
            scheduler.start(paused=True)
            self.schedulers.append(scheduler)

    def _recorder(self, index: int) -> Any:
        def record(event: JobExecutionEvent) -> None:
            with self._lock:
                self.executed.append((index, event.job_id, event.scheduled_run_time))
        return record

    def runs(self, job_id: str) -> list[datetime]:
        with self._lock:
            return [when for _index, job, when in self.executed if job == job_id]

    def resume(self) -> None:
        for scheduler in self.schedulers:
            scheduler.resume()

    def stop(self) -> None:
        for scheduler in self.schedulers:
            if scheduler.running:
                scheduler.shutdown(wait=True)


def _forget_scheduled_jobs(db: Database) -> None:
    """The job store is APScheduler's table, which the database fixture does not empty between tests."""
    if inspect(db.engine).has_table(JOBS_TABLE):
        with db.engine.begin() as connection:
            connection.execute(text(f"DELETE FROM {JOBS_TABLE}"))


@pytest.fixture
def processes(db: Database) -> Iterator[Processes]:
    _forget_scheduled_jobs(db)
    second = Database.open(database_url(db), migrate=False)
    made = Processes(db, second)
    try:
        yield made
    finally:
        made.stop()
        second.close()
        _forget_scheduled_jobs(db)  # the next test on this PostgreSQL database expects an empty job store


def test_each_scheduled_run_happens_once_across_two_processes(processes: Processes) -> None:
    first, _second = processes.schedulers
    # One stored job both processes read: the relay of a training job, or the daily housekeeping, look the same.
    first.add_job(f"{__name__}:tick", "interval", seconds=TICK_SECONDS, id="tick",
                  next_run_time=datetime.now(UTC) + timedelta(seconds=0.5), replace_existing=True)
    processes.resume()
    wait_until(lambda: len(set(processes.runs("tick"))) >= 8, 20, "eight scheduled runs")
    processes.stop()
    runs = processes.runs("tick")
    duplicated = sorted({when for when in runs if runs.count(when) > 1})
    assert not duplicated, f"{len(duplicated)} scheduled run time(s) ran in both processes, e.g. {duplicated[:3]}"
    # The claim table remembers the latest run, so a process that read the job late cannot run an older time.
    assert claimed_runs(processes.dbs[0])["tick"] == max(runs)


def test_a_job_removed_by_the_other_process_does_not_stop_this_ones_scheduler(processes: Processes) -> None:
    first_db, _second_db = processes.dbs
    _first, second = processes.schedulers
    store = second._lookup_jobstore("default")
    read_due_jobs = store.get_due_jobs

    def read_then_removed_elsewhere(now: datetime) -> list:
        due = read_due_jobs(now)
        if any(job.id == "finishing" for job in due):
            # Between reading the job as due and storing its next run time, the other process removes it: what a
            # training relay does when its job ends.
            with first_db.engine.begin() as connection:
                connection.execute(text(f"DELETE FROM {JOBS_TABLE} WHERE id = 'finishing'"))
        return due

    store.get_due_jobs = read_then_removed_elsewhere
    second.add_job(f"{__name__}:tick", "interval", seconds=60, id="finishing", next_run_time=datetime.now(UTC))
    second.resume()
    time.sleep(0.5)
    second.add_job(f"{__name__}:tick", "interval", seconds=60, id="later", next_run_time=datetime.now(UTC))
    wait_until(lambda: processes.runs("later"), 5, "the scheduler to run a job added after the other process removed one")
    assert not processes.runs("finishing"), "a job the other process had removed still ran"


def test_a_later_run_time_wins_the_claim_and_an_older_one_never_runs_after_it(db: Database) -> None:
    due = datetime(2026, 12, 1, 3, 17, tzinfo=UTC)
    assert at_once(lambda _i: claim_run(db, "daily", due, owner=f"process-{_i}"), 4).count(True) == 1
    assert not claim_run(db, "daily", due - timedelta(days=1))  # read before the other process ran `due`
    assert claim_run(db, "daily", due + timedelta(days=1))
    assert claimed_runs(db) == {"daily": due + timedelta(days=1)}


# --- two whole bots relaying one training job (PostgreSQL: the deployment that runs two bots) -----------------------

STEP = re.compile(r"step (\d+)")


@pytest.fixture
def two_bots(postgres_server, fake_slack, monkeypatch, tmp_path) -> Iterator[tuple[SlackHarness, SlackHarness]]:
    monkeypatch.setenv("FTBOT_HOME", str(tmp_path / "home"))
    monkeypatch.setenv("FTBOT_TRAINING_POLL_SECONDS", "0.2")
    url = postgres_server.create_database("_two_bots")
    dbs = [Database.open(url), Database.open(url, migrate=False)]
    bots = [SlackHarness.create(db, fake_slack) for db in dbs]
    try:
        yield bots[0], bots[1]
    finally:
        for bot in bots:
            stop_scheduler(bot.bot)
            bot.close()
        for db in dbs:
            db.close()


def _job_messages(harness: SlackHarness, job_id: int, method: str) -> list[str]:
    return [c.args.get("text", "") for c in harness.fake.calls_to(method) if f"Training job #{job_id}" in c.args.get("text", "")]


@pytest.mark.postgres
def test_two_bots_relay_one_training_job_once(two_bots: tuple[SlackHarness, SlackHarness], openai_api) -> None:
    first, second = two_bots
    import_records(first.db, enumerate(sample_conversations(20, seed=5, max_turns=1), 1), source_file="t.jsonl",
                   approved_by="U_LEAD")
    for bot in (first, second):  # both processes run their schedulers (as `ftbot run` does) and relay the job
        start_scheduler(bot.bot)
    job_id = int(buttons(quote(first, f"train openai {MODEL}"))[START_ACTION])
    click(first, START_ACTION, str(job_id))
    wait_until(lambda: get_job(first.db, job_id).status == JobStatus.SUCCEEDED, 60, "the job to succeed")
    wait_until(lambda: get_job(first.db, job_id).announced_at, 20, "the final state to be announced")
    time.sleep(1.0)  # both schedulers keep polling a while: anything posted twice would show now

    assert len(_job_messages(first, job_id, "chat.postMessage")) == 1, "two progress messages for one job"
    uploads = first.fake.calls_to("files.completeUploadExternal")
    assert len(uploads) == 1, f"the loss curve was uploaded {len(uploads)} times"
    assert [m.job_id for m in list_models(first.db)] == [job_id]
    # Every edit shows the state the database had under the job's lock: steps never go back, nor does "succeeded".
    texts = _job_messages(first, job_id, "chat.postMessage") + _job_messages(first, job_id, "chat.update")
    steps = [int(match.group(1)) for t in texts if (match := STEP.search(t))]
    assert steps == sorted(steps), f"an older step was shown after a newer one: {steps}"
    finished = [i for i, t in enumerate(texts) if "succeeded" in t]
    assert finished and all("succeeded" in t for t in texts[finished[0]:]), "a running state was shown after the end"

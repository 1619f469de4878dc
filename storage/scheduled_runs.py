"""Scheduled runs that happen once across bot processes on one database (data access for ``bot.scheduler``).

APScheduler 3 keeps its jobs in ftbot's database but does not coordinate several schedulers on that table: two bots
on one PostgreSQL database (a rolling deploy) both find a job due and both run it. The bot's executor therefore

1. holds the job's run lock for the run (:func:`hold_run`: a PostgreSQL advisory lock, tried, never waited for), so a
   job never runs in two processes at once, even when one run outlasts its interval;
2. runs it only when :func:`claim_run` moved the job's claimed run time forward: of two processes that read the
   same due time, one claims it and the other skips it, and a process that read the job late cannot run an older
   time after a newer one ran.

SQLite needs only the claim: ftbot's processes on one SQLite file are the bot and its workers on one host, one bot.
"""

from __future__ import annotations

import hashlib
import os
import socket
from collections.abc import Collection, Iterator
from contextlib import contextmanager
from datetime import datetime

from sqlalchemy import column, delete, select, table, text, update
from sqlalchemy.exc import IntegrityError
from sqlmodel import col

from storage.db import Database
from storage.models import ScheduledRun, utcnow

# Who claimed a run (kept with the claim, for whoever reads the table while two bots run).
OWNER = f"{socket.gethostname()}:{os.getpid()}"


def run_lock_key(job_id: str) -> int:
    """A stable signed 64-bit key for a job id: the one-key form of PostgreSQL's advisory locks (the two-key form,
    ``Database.lock``, is a separate key space, so these never collide with job or migration locks)."""
    return int.from_bytes(hashlib.blake2b(job_id.encode(), digest_size=8).digest(), "big", signed=True)


@contextmanager
def hold_run(db: Database, job_id: str) -> Iterator[bool]:
    """Yield whether this process holds ``job_id``'s run lock for the block (another process running it: False).

    PostgreSQL: a transaction-level advisory lock on a connection of its own, released when the block ends or when a
    killed process's connection closes. Other databases: always True (one bot process per SQLite file).
    """
    if db.engine.dialect.name != "postgresql":
        yield True
        return
    with db.engine.begin() as connection:
        held = connection.execute(text("SELECT pg_try_advisory_xact_lock(:key)"), {"key": run_lock_key(job_id)}).scalar()
        yield bool(held)


def claim_run(db: Database, job_id: str, run_time: datetime, *, owner: str = OWNER) -> bool:
    """Claim the run of ``job_id`` due at ``run_time``; True only for the one caller whose claim moved the job's
    claimed run time forward (the first claim of a job inserts its row)."""
    now = utcnow()
    insert = db.upsert_insert()
    if insert is not None:
        statement = insert(ScheduledRun).values(job_id=job_id, run_time=run_time, owner=owner, claimed_at=now)
        claim = statement.on_conflict_do_update(
            index_elements=[col(ScheduledRun.job_id)],
            set_={"run_time": run_time, "owner": owner, "claimed_at": now},
            where=col(ScheduledRun.run_time) < run_time,
        ).returning(col(ScheduledRun.job_id))  # a row back: inserted or moved (psycopg's rowcount is -1 here)
        with db.session() as session:
            return session.exec(claim).first() is not None
    # A dialect without ON CONFLICT: a conditional update, else the first insert (the key refuses a second one).
    with db.session() as session:
        moved = session.exec(update(ScheduledRun)
                             .where(col(ScheduledRun.job_id) == job_id, col(ScheduledRun.run_time) < run_time)
                             .values(run_time=run_time, owner=owner, claimed_at=now))
        if moved.rowcount == 1:
            return True
    try:
        with db.session() as session:
            if session.get(ScheduledRun, job_id) is not None:
                return False
            session.add(ScheduledRun(job_id=job_id, run_time=run_time, owner=owner, claimed_at=now))
        return True
    except IntegrityError:
        return False


def is_scheduled(db: Database, jobs_table: str, job_id: str) -> bool:
    """Whether the scheduler's job table still holds ``job_id`` (another process may have removed it since this one
    read it as due: a relay that finished its job unschedules itself)."""
    jobs = table(jobs_table, column("id"))
    with db.engine.connect() as connection:
        return connection.execute(select(jobs.c.id).where(jobs.c.id == job_id)).first() is not None


def forget_run(db: Database, job_id: str) -> None:
    """Drop the claim row of a job that is no longer scheduled."""
    with db.session() as session:
        session.exec(delete(ScheduledRun).where(col(ScheduledRun.job_id) == job_id))


def forget_runs_except(db: Database, job_ids: Collection[str]) -> int:
    """Drop the claim rows of jobs not in ``job_ids`` (those still scheduled); returns how many."""
    with db.session() as session:
        stale = [job_id for job_id in session.scalars(select(col(ScheduledRun.job_id))) if job_id not in job_ids]
        if stale:
            session.exec(delete(ScheduledRun).where(col(ScheduledRun.job_id).in_(stale)))
    return len(stale)


def claimed_runs(db: Database) -> dict[str, datetime]:
    """Each job's latest claimed run time (for tests and for whoever inspects a deployment)."""
    with db.session() as session:
        return {run.job_id: run.run_time for run in session.scalars(select(ScheduledRun))}

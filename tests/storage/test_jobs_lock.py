"""A job's lock excludes across processes on one PostgreSQL database (two engines stand for two bot processes)."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator

import pytest

from storage.db import Database
from storage.jobs import lock_job

pytestmark = pytest.mark.postgres


@pytest.fixture
def two_processes(postgres_server) -> Iterator[tuple[Database, Database]]:
    url = postgres_server.create_database("_lock")
    first, second = Database.open(url), Database.open(url, migrate=False)
    yield first, second
    first.close()
    second.close()


def test_a_job_lock_held_by_one_engine_blocks_another_until_released(two_processes) -> None:
    first, second = two_processes
    held, release = threading.Event(), threading.Event()

    def hold() -> None:
        with lock_job(first, 7):
            held.set()
            release.wait(10)

    holder = threading.Thread(target=hold)
    holder.start()
    assert held.wait(10)
    acquired = threading.Event()

    def take() -> None:
        with lock_job(second, 7):
            acquired.set()

    taker = threading.Thread(target=take)
    taker.start()
    assert not acquired.wait(0.5), "the other engine took a lock the first one holds"
    with lock_job(second, 8):  # another job's lock is free meanwhile
        pass
    release.set()
    assert acquired.wait(10), "the lock was not handed over when the first engine released it"
    holder.join(10)
    taker.join(10)


def test_a_failing_block_releases_the_lock(two_processes) -> None:
    first, second = two_processes
    with pytest.raises(RuntimeError), lock_job(first, 9):
        raise RuntimeError("the Slack edit failed")
    started = time.monotonic()
    with lock_job(second, 9):
        assert time.monotonic() - started < 2


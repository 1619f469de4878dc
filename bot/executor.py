"""A listener thread pool that can say when all submitted work is done.

Bolt runs the work after ``ack()`` on its listener executor, and ``BotContext.defer`` runs slow work on
another. A caller that drives the bot synchronously (an interactive session, a test) hands Bolt this one
so it can wait for the bot to finish answering before its next step.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from typing import ParamSpec, TypeVar

P = ParamSpec("P")
T = TypeVar("T")


class TrackingExecutor(ThreadPoolExecutor):
    def __init__(self, max_workers: int | None = None, thread_name_prefix: str = "ftbot-listener"):
        super().__init__(max_workers=max_workers, thread_name_prefix=thread_name_prefix)
        self._pending = 0
        self._cond = threading.Condition()

    def submit(self, fn: Callable[P, T], /, *args: P.args, **kwargs: P.kwargs) -> Future[T]:
        with self._cond:
            self._pending += 1
        try:
            future = super().submit(fn, *args, **kwargs)
        except BaseException:
            self._done(None)
            raise
        future.add_done_callback(self._done)
        return future

    def _done(self, _future: object) -> None:
        with self._cond:
            self._pending -= 1
            self._cond.notify_all()

    @property
    def pending(self) -> int:
        return self._pending

    def wait_idle(self, timeout: float = 10.0) -> bool:
        """Block until no submitted work is running or queued; False on timeout."""
        deadline = time.monotonic() + timeout
        with self._cond:
            while self._pending:
                left = deadline - time.monotonic()
                if left <= 0:
                    return False
                self._cond.wait(left)
        return True


def wait_all_idle(*executors: TrackingExecutor, timeout: float = 30.0) -> bool:
    """Wait until all ``executors`` are idle at the same moment (work on one may submit work to another)."""
    deadline = time.monotonic() + timeout
    while True:
        for executor in executors:
            if not executor.wait_idle(max(0.0, deadline - time.monotonic())):
                return False
        if not any(executor.pending for executor in executors):
            return True

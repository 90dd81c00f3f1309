"""`Broadcast`: a condition variable built only from C-level locks.

`threading.Condition` runs Python code in `__enter__`, `__exit__`, `wait` and `notify`, and
CPython raises a pending KeyboardInterrupt (Ctrl-C, or a worker's cancel/timeout interrupt) at
the entry of any Python function: one landing there can leave the condition's lock held or
its waiter list half-changed, wedging every thread that shares it. Here the shared lock is a
plain `threading.Lock`, whose `with` block always releases it, and each waiter blocks on a
lock of its own that only a notifier releases. An interrupt can end a wait early; it cannot
leave anything held.
"""

from __future__ import annotations

import _thread
import threading
import time
from typing import Callable

POLL_S = 1.0   # a waiter re-checks its predicate at least this often (a backstop)


class Broadcast:
    def __init__(self) -> None:
        self.lock = threading.Lock()   # guards the owner's state as well as the waiters
        self._waiters: list[_thread.LockType] = []

    def notify_all(self) -> None:
        """Wake every waiter to re-check its predicate. Call with `lock` held. Interrupted
        halfway, the waiters not yet woken stay registered for the next call."""
        for waiter in self._waiters:
            if waiter.locked():   # only notifiers release, under `lock`: no double release
                waiter.release()
        self._waiters.clear()

    def wait_for(self, predicate: Callable[[], bool], deadline: float | None) -> bool:
        """Block until `predicate()` (evaluated with `lock` held) is true, or until
        `deadline` (time.monotonic()); say which. Call without `lock` held."""
        while True:
            waiter = _thread.allocate_lock()
            waiter.acquire()
            with self.lock:
                if predicate():
                    return True
                self._waiters.append(waiter)
            left = POLL_S if deadline is None else min(POLL_S, deadline - time.monotonic())
            if left <= 0 or not waiter.acquire(True, left):
                with self.lock:
                    if waiter in self._waiters:
                        self._waiters.remove(waiter)
                if deadline is not None and time.monotonic() >= deadline:
                    with self.lock:
                        return predicate()

"""Redis calls made for a caller who has a deadline (`get(timeout=)`, `wait(timeout=)`).

A call to a frozen Redis blocks until the connection's 10 s socket timeout, so a caller with
a deadline never makes one in its own thread: the call runs on a helper thread and the caller
stops waiting for it at the deadline (the helper finishes or times out on its own, and its
answer is dropped). The helpers are daemon threads, not a ThreadPoolExecutor, whose threads
are joined at interpreter exit and would hold exit up behind a frozen Redis; the answer comes
back through a C-level lock, not a Future, whose Python-level Condition an interrupt in the
caller could leave held. Without a deadline the call runs in the caller's thread.

Errors leave here as ftqueue errors: transient ones (see store.errors) are retried with
backoff until the deadline, or raised as FtqueueConnectionError with `retry=False`; any other
Redis error becomes an FtqueueError naming it.
"""

from __future__ import annotations

import _thread
import logging
import queue
import threading
import time
from typing import Callable, Generic, TypeVar

from ..exceptions import FtqueueConnectionError, FtqueueError
from ..store import backoff, describe, is_full, is_transient

log = logging.getLogger(__name__)

T = TypeVar("T")

CALL_GRACE_S = 0.1   # a call made at its deadline (wait(timeout=0)) may still ask Redis once
HELPER_IDLE_EXIT_S = 30.0


class DeadlinePassed(Exception):
    """The caller's deadline passed before Redis answered (internal: get turns it into
    GetTimeoutError, wait into a shorter ready list)."""


def grace(deadline: float | None) -> float | None:
    """The deadline, but at least CALL_GRACE_S from now."""
    return None if deadline is None else max(deadline, time.monotonic() + CALL_GRACE_S)


def as_ftqueue_error(e: Exception, doing: str) -> Exception:
    """An ftqueue error for what a Redis call raised (others, i.e. bugs, are left alone)."""
    if isinstance(e, FtqueueError):
        return e
    if is_full(e):
        return FtqueueError(f"{doing} failed: Redis refused the write, it is full "
                            f"(maxmemory) [{describe(e)}]")
    if type(e).__module__.startswith("redis"):
        return FtqueueError(f"{doing} failed: Redis answered with an error [{describe(e)}]")
    return e


class BoundedCalls:
    """Runs idempotent Redis steps for callers with deadlines (see the module docstring)."""

    def __init__(self, give_up: Callable[[], bool] = lambda: False) -> None:
        self._give_up = give_up
        self._helpers = _Helpers()

    def run(self, step: Callable[[], T], deadline: float | None, *, retry: bool = True,
            doing: str = "a Redis call") -> T:
        failures = 0
        while True:
            try:
                return self._once(step, deadline)
            except DeadlinePassed:
                raise
            except Exception as e:  # noqa: BLE001 - classified just below
                if not is_transient(e):
                    raise as_ftqueue_error(e, doing) from None
                if not retry or self._give_up():
                    raise FtqueueConnectionError(f"{doing} failed: {describe(e)}") from None
                pause = backoff(failures)
                failures += 1
                if deadline is not None:
                    left = deadline - time.monotonic()
                    if left <= 0:
                        raise DeadlinePassed(describe(e)) from None
                    pause = min(pause, left)
                log.debug("%s: Redis unavailable (%s); retrying in %.2f s", doing, describe(e),
                          pause)
                time.sleep(pause)

    def _once(self, step: Callable[[], T], deadline: float | None) -> T:
        if deadline is None:
            return step()
        left = deadline - time.monotonic()
        if left <= 0:
            raise DeadlinePassed("no time left")
        call = _Call(step)
        self._helpers.submit(call)
        if not call.done.acquire(True, left):
            raise DeadlinePassed("Redis did not answer in time")
        if call.error is not None:
            raise call.error
        return call.value  # type: ignore[return-value]


class _Call(Generic[T]):
    """One step, and its answer once `done` is released (by the helper that ran it)."""

    def __init__(self, step: Callable[[], T]) -> None:
        self.step = step
        self.done = _thread.allocate_lock()
        self.done.acquire()
        self.value: T | None = None
        self.error: BaseException | None = None

    def run(self) -> None:
        try:
            self.value = self.step()
        except BaseException as e:  # noqa: BLE001 - handed to the caller
            self.error = e
        self.done.release()


class _Helpers:
    """Daemon threads that run calls; one is started whenever none is idle, and an idle one
    exits after HELPER_IDLE_EXIT_S."""

    def __init__(self) -> None:
        self._jobs: queue.SimpleQueue[_Call[object]] = queue.SimpleQueue()
        self._lock = threading.Lock()
        self._idle = 0   # helpers free to take a job that nobody has claimed yet

    def submit(self, call: _Call[T]) -> None:
        with self._lock:
            spawn = self._idle == 0
            if not spawn:
                self._idle -= 1   # claimed: an idle helper will take this job
        self._jobs.put(call)  # type: ignore[arg-type]
        if spawn:
            threading.Thread(target=self._serve, name="ftqueue-redis-call", daemon=True).start()

    def _serve(self) -> None:
        while True:
            try:
                call = self._jobs.get(timeout=HELPER_IDLE_EXIT_S)
            except queue.Empty:
                with self._lock:
                    if self._idle > 0:   # nobody claimed this helper's slot: leave
                        self._idle -= 1
                        return
                continue                 # claimed just now: its job is on the way
            call.run()
            with self._lock:
                self._idle += 1

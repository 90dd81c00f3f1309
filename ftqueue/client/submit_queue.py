"""The submit queue: new tasks in order, sent to Redis by one background thread.

`.remote()` appends to the buffer and, when it is alone (nothing queued or in flight and no
other call within BURST_GAP_S), waits until the sender has sent it, so a lone call is in
Redis when it returns; a burst accumulates while a batch is in flight and costs a few round
trips. While Redis is unreachable, submissions wait here: a lone `.remote()` returns after
the first failed attempt, or after LONE_WAIT_S if Redis is frozen (its task stays queued).

Only the sender thread talks to Redis and only it changes what is in flight. A caller's
thread (the one a Ctrl-C or a worker's cancel/timeout interrupt lands in) just appends and
waits, on a `Broadcast` (wakeup.py) rather than a threading.Condition, so an interrupt cannot
leave a half-sent batch, a flag or a lock behind: a task that was queued is sent, whether or
not the interrupted `.remote()` returned its ref.

The sender also stores each function before the first task that runs it, checks Redis's
data generation (epoch) after an outage or when asked, and when Redis lost its data sends
what the client hands back (its unfinished tasks and their lineage) before anything else.
"""

from __future__ import annotations

import itertools
import logging
import threading
import time
from collections import OrderedDict, deque
from collections.abc import Sequence
from typing import TYPE_CHECKING, Protocol

from ..exceptions import FtqueueError
from ..store import ReplicaWaitTimeout, Store, backoff, describe, is_transient
from .calls import as_ftqueue_error
from .records import Submission
from .wakeup import Broadcast

if TYPE_CHECKING:
    from .lineage import LineageCache

log = logging.getLogger(__name__)

SUBMIT_BATCH_MAX = 500
BURST_GAP_S = 0.002     # a .remote() this soon after the previous one is part of a burst
LONE_WAIT_S = 2.0       # a lone .remote() waits at most this long for its send
ERRORS_KEPT = 100_000


class SubmitEvents(Protocol):
    """What the queue tells its owner."""

    def sent(self, batch: Sequence[Submission]) -> None: ...

    def refused(self, batch: Sequence[Submission], error: FtqueueError) -> None: ...

    def redis_lost_data(self) -> list[Submission]:
        """Redis shows a new epoch: what to give it again, dependencies first."""
        ...


class SubmitQueue:
    def __init__(self, store: Store, lineage: LineageCache, events: SubmitEvents,
                 epoch: str) -> None:
        self.store = store
        self._lineage = lineage
        self._events = events
        self._epoch = epoch
        self._bc = Broadcast()
        self._buffer: deque[tuple[int, Submission]] = deque()   # (seq, submission)
        self._seq = 0               # last seq handed out
        self._sent_seq = 0          # seq of the last submission taken off the buffer
        self._resubmits: list[Submission] = []
        self._resubmits_queued = 0
        self._resubmits_done = 0
        self._failures = 0          # transient failures so far (ends a lone caller's wait)
        self._sending = False       # the sender thread has work in hand (only it sets this)
        self._recheck = False       # check Redis's epoch before the next send
        self._stopping = False
        self._last_submit = 0.0
        self._errors: OrderedDict[str, FtqueueError] = OrderedDict()
        self._stored: set[str] = set()   # functions stored in this epoch (sender thread only)
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, name="ftqueue-submitter", daemon=True)
        self._thread.start()

    # -- caller side -----------------------------------------------------------------------

    def submit(self, sub: Submission) -> None:
        now = time.monotonic()
        with self._bc.lock:
            # Notify first: it takes effect when the lock is released, and an interrupt
            # between the two lines leaves a wake-up with nothing to do, never the reverse.
            self._bc.notify_all()
            alone = (now - self._last_submit > BURST_GAP_S and not self._buffer
                     and not self._sending)
            self._seq += 1
            seq, failures = self._seq, self._failures
            self._buffer.append((seq, sub))
            self._last_submit = now
        if alone:
            self._wait_sent(seq, failures)

    def _wait_sent(self, seq: int, failures: int) -> None:
        self._bc.wait_for(lambda: (self._sent_seq >= seq or self._failures != failures
                                   or self._stopping or not self._alive()),
                          time.monotonic() + LONE_WAIT_S)

    def resubmit(self, subs: Sequence[Submission]) -> None:
        """Give Redis these again (idempotent per task id), before any new submission, and
        after checking its epoch: tasks it forgot suggest it lost its data (functions too)."""
        if subs:
            with self._bc.lock:
                self._bc.notify_all()
                self._resubmits.extend(subs)
                self._resubmits_queued += len(subs)
                self._recheck = True

    def flush(self, deadline: float | None) -> bool:
        """Wait until everything queued so far was sent (or refused); False if the
        deadline (time.monotonic()) came first or the queue is closed."""
        with self._bc.lock:
            target = self._buffer[-1][0] if self._buffer else self._sent_seq
            resubmits = self._resubmits_queued

        def done() -> bool:
            return self._sent_seq >= target and self._resubmits_done >= resubmits

        self._bc.wait_for(lambda: done() or self._stopping or not self._alive(), deadline)
        with self._bc.lock:
            return done()

    def has_unsent(self) -> bool:
        with self._bc.lock:
            return bool(self._buffer) or self._resubmits_done < self._resubmits_queued

    def error(self, task_id: str) -> FtqueueError | None:
        """Why this task's submission was refused, if it was."""
        with self._bc.lock:
            return self._errors.get(task_id)

    def request_epoch_check(self) -> None:
        with self._bc.lock:
            self._recheck = True
            self._bc.notify_all()

    def close(self, stall_s: float) -> None:
        """Send what is queued while that makes progress, giving up after stall_s without
        any; then stop the sender thread."""
        while True:
            before = self._progress()
            if self.flush(time.monotonic() + stall_s) or self._progress() == before:
                break
        with self._bc.lock:
            unsent = len(self._buffer)
            self._stopping = True
            self._bc.notify_all()
        if unsent:
            log.warning("ftqueue: %d submission(s) not sent: Redis did not take them within "
                        "%g s", unsent, stall_s)
        if self._thread is not None and self._thread is not threading.current_thread():
            self._thread.join(timeout=0.2)   # longer only if stuck on Redis: it is a daemon

    def _progress(self) -> tuple[int, int]:
        with self._bc.lock:
            return self._sent_seq, self._resubmits_done

    def _alive(self) -> bool:
        return self._thread is not None and self._thread.is_alive()

    # -- sender side -----------------------------------------------------------------------

    def _run(self) -> None:
        failures = 0
        while True:
            self._bc.wait_for(lambda: self._stopping or bool(self._buffer or self._resubmits
                                                              or self._recheck), None)
            if self._stopping:
                return
            try:
                ok = self.step()
            except Exception:
                log.exception("ftqueue: the submit queue's step failed; retrying")
                ok = False
            failures = 0 if ok else failures + 1
            if not ok:
                self._bc.wait_for(lambda: self._stopping,
                                  time.monotonic() + backoff(failures - 1))

    def step(self) -> bool:
        """Send what is due: the epoch check, resubmissions, then the oldest batch. False
        after a transient failure (what failed stays queued, to be tried again)."""
        with self._bc.lock:
            recheck, self._recheck = self._recheck, False
            resubmits, self._resubmits = self._resubmits, []
            batch = [sub for _, sub in itertools.islice(self._buffer, SUBMIT_BATCH_MAX)]
            self._sending = True
        ok = resubmits_ok = batch_ok = False
        try:
            extra = self._check_epoch() if recheck else []
            if extra:
                with self._bc.lock:
                    self._resubmits_queued += len(extra)
                resubmits = extra + resubmits
            if extra is not None:
                resubmits_ok = self._deliver(resubmits)
                batch_ok = resubmits_ok and self._deliver(batch)
            ok = batch_ok
        finally:
            with self._bc.lock:
                if resubmits_ok:
                    self._resubmits_done += len(resubmits)
                else:
                    self._resubmits[:0] = resubmits
                if batch_ok:
                    for _ in batch:
                        self._sent_seq = self._buffer.popleft()[0]
                if not ok:
                    self._failures += 1
                    self._recheck = True    # Redis may have restarted empty meanwhile
                self._sending = False
                self._bc.notify_all()
        return ok

    def _check_epoch(self) -> list[Submission] | None:
        """What Redis must be given again first ([] if it kept its data); None if Redis
        did not answer."""
        try:
            epoch = self.store.ensure_epoch()
        except Exception as e:  # noqa: BLE001 - classified just below
            if is_transient(e):
                return None
            log.warning("ftqueue: cannot read Redis's epoch: %s", describe(e))
            return []
        if epoch == self._epoch:
            return []
        self._epoch = epoch
        self._stored.clear()
        return self._events.redis_lost_data()

    def _deliver(self, batch: list[Submission]) -> bool:
        """Send one batch; False when Redis is unavailable (nothing is lost: try again)."""
        if not batch:
            return True
        try:
            self._store_functions(batch)
            self.store.submit([sub.as_store_task() for sub in batch])
        except Exception as e:  # noqa: BLE001 - classified just below
            if isinstance(e, ReplicaWaitTimeout):
                # Not acknowledged, so not held either: the submitter decides (resubmitting
                # is safe only as a new task, and this one may run all the same).
                self._refuse(batch, FtqueueError(
                    f"submitting {len(batch)} task(s) was not acknowledged: {e}. The task(s) "
                    "may exist in Redis and run all the same"))
                return True
            if is_transient(e):
                log.debug("ftqueue: Redis unavailable, %d submission(s) wait: %s", len(batch),
                          describe(e))
                return False
            self._refuse(batch, as_ftqueue_error(e, f"submitting {len(batch)} task(s)"))
            return True
        self._events.sent(batch)
        return True

    def _store_functions(self, batch: list[Submission]) -> None:
        for digest in dict.fromkeys(sub.function for sub in batch if sub.function):
            if digest in self._stored:
                continue
            blob = self._lineage.function(digest)
            if blob is not None:
                self.store.store_function(digest, blob)
            self._stored.add(digest)

    def _refuse(self, batch: list[Submission], error: Exception) -> None:
        if not isinstance(error, FtqueueError):
            error = FtqueueError(f"submitting failed: {type(error).__name__}: {error}")
        log.warning("ftqueue: %d submission(s) refused: %s", len(batch), error)
        with self._bc.lock:
            for sub in batch:
                self._errors[sub.task_id] = error
            while len(self._errors) > ERRORS_KEPT:
                self._errors.popitem(last=False)
        self._events.refused(batch, error)

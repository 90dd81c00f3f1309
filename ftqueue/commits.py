"""A worker's outcomes on their way to Redis.

The rule (DESIGN invariant 8): what a task produced is in Redis before the worker starts
another task body, so no later death of this process can hand a finished task back as
"not started". Outcomes that ran no body (cancelled before start, an argument that failed)
ride along with the next commit, which also marks the next task RUNNING; so a batch never
waits for more than the few ms of that bookkeeping.

An outcome Redis cannot take now is held, not dropped: through an outage, a `BUSY` or
`LOADING` server, or a full one (`OOM` at maxmemory with noeviction), the batch is retried
with backoff — the worker's supervisor keeps its lease renewed meanwhile — and the condition
is logged when it starts and when it clears. Commits are fenced, so a batch sent twice
(a reply lost in an outage) is harmless.
"""

from __future__ import annotations

import logging
import time
from typing import Callable, Sequence

from .logs import LogOnce
from .spec import Outcome
from .store import Store, backoff, describe, is_full, is_transient

log = logging.getLogger("ftqueue.worker")

UNKNOWN_ERROR_GIVE_UP_S = 60.0   # an error that is neither transient nor "full": a bug


class CommitBatcher:
    def __init__(self, store: Store, worker_id: str,
                 on_settled: Callable[[Sequence[str]], None], *,
                 on_stalled: Callable[[], None] = lambda: None,
                 sleep: Callable[[float], None] = time.sleep,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.store = store
        self.worker_id = worker_id
        self.on_settled = on_settled
        self.on_stalled = on_stalled     # the first retry of a batch: Redis is not taking it
        self.pending: list[Outcome] = []
        # After a flush that named the next task: does this worker still hold it?
        self.next_held = True
        self._sleep = sleep
        self._clock = clock
        self._once = LogOnce(log)

    def add(self, outcome: Outcome) -> None:
        self.pending.append(outcome)

    def flush(self, next_task_id: str = "", next_fence: str = "") -> list[str]:
        """Commit every held outcome (marking `next_task_id` RUNNING with them, if this
        worker still holds it under `next_fence`); returns the per-outcome answers
        ('finished', 'failed', 'retried', 'fenced', 'corrupt')."""
        self.next_held = True
        if not self.pending and not next_task_id:
            return []
        # With nothing to commit, the call still starts the next task: marks it RUNNING and
        # reserves its resources (or says the worker no longer holds it).
        batch = list(self.pending)
        answers = self._commit(batch, next_task_id, next_fence)
        if next_task_id and (not batch or answers != ["lost"] * len(batch)):
            self.next_held = self.store.next_task_held
        del self.pending[:len(batch)]
        if batch:
            self.on_settled([o.task_id for o in batch])
        return answers

    def _commit(self, batch: list[Outcome], next_task_id: str, next_fence: str) -> list[str]:
        failures = 0
        first_unknown: float | None = None
        while True:
            try:
                answers = self.store.commit(batch, next_task_id=next_task_id,
                                            worker_id=self.worker_id, next_fence=next_fence)
                self._once.clear("full", "Redis accepts writes again: held outcomes committed")
                self._once.clear("down", "Redis is reachable again: held outcomes committed")
                return answers
            except Exception as e:  # noqa: BLE001 - classified below; nothing is dropped
                if is_full(e):
                    self._once.start("full", f"Redis refuses writes ({describe(e)}): holding "
                                     f"{len(batch)} finished outcome(s) and retrying")
                elif is_transient(e):
                    self._once.start("down", f"Redis not serving ({describe(e)}): holding "
                                     f"{len(batch)} finished outcome(s) and retrying")
                else:
                    now = self._clock()
                    first_unknown = now if first_unknown is None else first_unknown
                    if now - first_unknown > UNKNOWN_ERROR_GIVE_UP_S:
                        log.error("could not commit the outcomes of %s: %s; giving up (their "
                                  "leases will expire and the tasks be retried)",
                                  ", ".join(o.task_id for o in batch), describe(e))
                        return ["lost"] * len(batch)
                    self._once.start("unknown", f"committing failed ({describe(e)}); retrying",
                                     logging.ERROR)
                if failures == 0:
                    self.on_stalled()
                self._sleep(backoff(failures))
                failures += 1

"""Results: final task records turned into values, and lost results rebuilt from lineage
(in Redis by re-running the task, or by giving a Redis that lost its data the specs this
process holds, dependencies first)."""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Any

from .. import payload
from ..exceptions import (
    ObjectLostError,
    ObjectReconstructionFailedError,
)
from ..spec import TERMINAL_STATES
from ..store import Store
from .calls import BoundedCalls, DeadlinePassed, grace
from .completions import CompletionRouter
from .lineage import LineageCache
from .submit_queue import SubmitQueue

log = logging.getLogger(__name__)


class Results:
    def __init__(self, store: Store, calls: BoundedCalls, queue: SubmitQueue,
                 router: CompletionRouter, lineage: LineageCache) -> None:
        self.store = store
        self.calls = calls
        self.queue = queue
        self.router = router
        self.lineage = lineage
        self.redis_reset = False      # this Redis lost its data while we were connected

    def resubmit(self, task_ids: Sequence[str]) -> set[str]:
        """Those of task_ids whose spec we hold, given to Redis again with what they depend
        on (dependencies first); we will be notified when they end."""
        held = [i for i in task_ids if i in self.lineage]
        if held:
            self.queue.resubmit(self.lineage.closure(held))
            self.router.expect(held)
        return set(held)

    def fetch(self, ids: Sequence[str], deadline: float | None) -> list[Any] | None:
        """The values (raising the first error), or None when a lost result is being
        rebuilt: wait again then."""
        todo = [i for i in dict.fromkeys(ids) if self.queue.error(i) is None]
        found: dict[str, tuple[dict[str, str], bytes | None]] = {
            i: ({"state": "FINISHED"}, blob) for i, blob in self.router.inline(todo).items()}
        missing = [i for i in todo if i not in found]
        if missing:
            found.update(zip(missing, self.calls.run(
                lambda: self.store.outcomes(missing), deadline, doing="reading results")))
        self.router.forget(todo)
        values, again = [], False
        for object_id in ids:
            error = self.queue.error(object_id)
            if error is not None:
                raise error
            record, blob = found[object_id]
            if self._needs_another_wait(object_id, record, blob, deadline):
                again = True
                continue
            ok, value = payload.outcome_to_result(object_id, record, blob)
            if not ok:
                raise self._explain(object_id, record, value, deadline)
            values.append(value)
        return None if again else values

    def _needs_another_wait(self, object_id: str, record: dict[str, str], blob: bytes | None,
                            deadline: float | None) -> bool:
        if record and record["state"] not in TERMINAL_STATES:
            return True      # another getter started rebuilding it: wait again
        if not record and blob is None and self.resubmit([object_id]):
            return True      # Redis lost it, we hold its lineage: it runs again
        if blob is None and record.get("state") == "FINISHED":
            self.rebuild(object_id, deadline)
            return True
        return False

    def _explain(self, object_id: str, record: dict[str, str], error: Exception,
                 deadline: float | None) -> Exception:
        if payload.is_unverifiable(error):
            try:
                self.calls.run(lambda: self.store.incr_stat("payload_rejected"),
                               grace(deadline), retry=False)
            except Exception as e:  # noqa: BLE001 - a counter is not worth more
                log.debug("ftqueue: could not count a rejected payload: %s", e)
        if not record and self.redis_reset and isinstance(error, ObjectLostError):
            return ObjectLostError(f"Object {object_id} is lost: Redis lost its data "
                                   "(restarted without persistence, or failed over)")
        return error

    def lost(self, ids: Sequence[str], deadline: float | None) -> list[str]:
        """Those of ids whose task FINISHED but whose result is gone."""
        if not ids:
            return []
        pairs = self.calls.run(lambda: self.store.outcomes(list(ids)), grace(deadline),
                               doing="reading results")
        return [i for i, (record, blob) in zip(ids, pairs)
                if blob is None and record.get("state") == "FINISHED"]

    def rebuild(self, object_id: str, deadline: float | None) -> None:
        """Its task FINISHED but the result is gone (expired, evicted, deleted): re-run it,
        first giving Redis the lineage we hold if it lost some."""
        def reconstruct() -> str:
            return self.calls.run(lambda: self.store.reconstruct(object_id), deadline,
                                  doing="rebuilding a lost result")

        status = reconstruct()
        if status == "no_lineage":
            lineage = [s for s in self.lineage.closure([object_id]) if s.task_id != object_id]
            if lineage:
                self.queue.resubmit(lineage)
                if not self.queue.flush(deadline):
                    raise DeadlinePassed("resubmitting lineage")
                status = reconstruct()
        if status == "exhausted":
            reason = "MAX_ATTEMPTS_EXCEEDED: the task's retries are spent"
        elif status == "no_lineage":
            why = ("Redis lost its data (restarted empty or failed over)" if self.redis_reset
                   else "expired after FTQUEUE_LINEAGE_TTL_S, or Redis lost its data")
            reason = ("LINEAGE_EVICTED: the arguments of its task, or the record of a task it "
                      f"depends on, are gone from Redis ({why}) and this process holds no "
                      "copy that could replace them")
        else:
            return
        raise ObjectReconstructionFailedError(
            f"Failed to retrieve object {object_id}: its result was lost and could not be "
            f"rebuilt [{reason}]")

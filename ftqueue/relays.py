"""What the supervisor relays to the tasks its workers run: cancel requests (an interrupt, or
a kill when forced) and timeouts (an interrupt, then a kill after the grace)."""

from __future__ import annotations

import socket
import time
from typing import Iterable

from . import payload
from .policy import KillReason
from .protocol import Cancel, Timeout
from .spec import Outcome
from .store.store import CancelRequest
from .workerpool import WorkerHandle


class Relays:
    def __init__(self, keep_cancels_s: float, timeout_grace_s: float) -> None:
        self.keep_cancels_s = keep_cancels_s
        self.timeout_grace_s = timeout_grace_s
        # A cancel can reach the node before the worker's claim lines reach us: kept until
        # some worker says it holds the task (or for a lease timeout).
        self.pending: dict[str, tuple[CancelRequest, float]] = {}

    def add_cancels(self, requests: Iterable[CancelRequest]) -> None:
        """Cancels relayed to the node, or found by its heartbeat in the records of the tasks
        it runs (a relayed request can be lost with a reply): each request is delivered once
        (its number), whichever way brings it first."""
        keep_until = time.monotonic() + self.keep_cancels_s
        for request in requests:
            self.pending[request.task_id] = (request, keep_until)

    def deliver_cancels(self, handles: Iterable[WorkerHandle]) -> None:
        handles = list(handles)
        now = time.monotonic()
        for task_id, (request, keep_until) in list(self.pending.items()):
            if relay_cancel(handles, request) or now > keep_until:
                del self.pending[task_id]

    def enforce_timeouts(self, handles: Iterable[WorkerHandle], now: float) -> None:
        for handle in list(handles):
            if (not handle.running or handle.timeout_s is None
                    or handle.kill_reason is not KillReason.NONE):
                continue
            if not handle.interrupted_at and now - handle.task_started > handle.timeout_s:
                handle.interrupted_at = now
                handle.tell(Timeout(handle.running))
            elif handle.interrupted_at and now - handle.interrupted_at > self.timeout_grace_s:
                handle.kill_attempt(handle.running, KillReason.TIMEOUT,
                                    f"task {handle.running} ignored its timeout")

    def timeout_outcome(self, handle: WorkerHandle) -> Outcome:
        """The outcome of a task whose worker was killed for ignoring its timeout."""
        cause = TimeoutError(f"the task ran longer than its timeout_s={handle.timeout_s} and "
                             f"did not stop within {self.timeout_grace_s} s; "
                             "its worker was killed")
        blob = payload.pack_error(handle.func_name or handle.in_flight, cause,
                                  f"TimeoutError: {cause}\n", handle.pid,
                                  socket.gethostname(), handle.in_flight, kind="TaskTimeoutError")
        return Outcome(handle.in_flight, handle.fence, "err", blob, handle.retry_timeout,
                       f"TaskTimeoutError: {cause}")


def relay_cancel(handles: list[WorkerHandle], request: CancelRequest) -> bool:
    """Interrupt (or kill, when forced) the worker running the task, once per request; tell
    the one that holds it unstarted to drop it. False: no worker has said it holds it."""
    task_id = request.task_id
    handle = next((h for h in handles if h.running == task_id), None)
    if handle is None:  # prefetched, not started: the worker drops it
        handle = next((h for h in handles if task_id in h.held), None)
        if handle is None:
            return False
        handle.tell(Cancel(task_id))
        return True
    if request.forced:
        if not handle.kill_attempt(task_id, KillReason.CANCEL,
                                   f"task {task_id} was cancelled with force=True") \
                and task_id in handle.held:
            handle.tell(Cancel(task_id))
    elif not request.number or request.number > handle.cancels_told:
        handle.tell(Cancel(task_id))
        handle.cancels_told = max(handle.cancels_told, request.number)
    return True

"""The client: a connected process (driver or worker) composed of the submit queue, the
completion router, the lineage cache and the results reader; `get`, `wait`, `put` and
`cancel` live here.

Every blocking call takes a deadline that holds while Redis is down or frozen: a getter's
Redis calls go through BoundedCalls (a helper thread, waited on until the deadline; see
calls.py). The sender and listener threads make their own calls and are never waited on
past a deadline; shutdown abandons them (they are daemons) after a few seconds.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Sequence
from concurrent.futures import Future
from typing import Any, Callable

from .. import dead_letter, payload, schedules
from ..exceptions import (
    FtqueueConnectionError,
    FtqueueError,
    GetTimeoutError,
)
from ..keys import DEFAULT_SHAPE
from ..output import DriverEcho
from ..settings import Settings
from ..spec import ObjectRef, ResolvedOptions, is_task_id, item_id, new_id, new_put_id
from ..state import StateReader
from ..store import Store, connect, describe
from ..store.store import PartitionsMismatch
from .calls import BoundedCalls, DeadlinePassed, as_ftqueue_error, grace
from .completions import SAFETY_POLL_S, CompletionRouter
from .futures import FutureResolver
from .lineage import LineageCache
from .records import Origin, Submission, build_submission
from .results import Results
from .submit_queue import SubmitQueue

log = logging.getLogger(__name__)

SWEEP_INTERVAL_S = 2.0
UNSERVED_CHECK_S = 5.0   # a driver waiting this long looks for queues nobody serves
INFEASIBLE_CHECK_S = 1.0  # how often a waiting driver looks for tasks no node can fit
CLOSE_STALL_S = 3.0     # shutdown gives up sending after this long without progress
JOIN_S = 0.5


class Client:
    def __init__(self, address: str, namespace: str = "ftq", *, job_id: str | None = None,
                 log_to_driver: bool = False, store: Store | None = None) -> None:
        self.address = address
        self.namespace = namespace
        self.store = store or Store(connect(address), namespace)
        self.keys = self.store.keys
        self.client_id = new_id()[:16]
        self.notify_key = self.keys.done(self.client_id)
        try:
            self.job_id = job_id or self.store.next_job_id()
            epoch = self.store.ensure_epoch()
        except PartitionsMismatch:
            raise
        except Exception as e:  # noqa: BLE001 - whatever Redis said, one clear error
            raise FtqueueConnectionError(f"cannot start a session on Redis: {describe(e)}") \
                from None
        env = Settings.from_env()
        self.origin = Origin(self.job_id, self.notify_key, env.result_ttl_s, env.lineage_ttl_s,
                             self.store.partition_count)
        self.lease_timeout_ms = int(env.lease_timeout_s * 1000)
        self.on_block: Callable[[bool], None] | None = None
        self._closing = False
        self._last_sweep = self._last_epoch_check = 0.0
        self._last_queue_check = time.monotonic()
        self._warned_queues: set[str] = set()
        self._shapes_sent: dict[tuple[str, str], set[str]] = {}
        self._warned_functions: set[str] = set()
        self._last_fit_check = 0.0
        self.calls = BoundedCalls(give_up=lambda: self._closing)
        self.lineage = LineageCache(env.driver_lineage_bytes)
        self.queue = SubmitQueue(self.store, self.lineage, self, epoch)
        self.router = CompletionRouter(self.store, self.notify_key,
                                       on_reconnect=self.queue.request_epoch_check,
                                       on_tick=self._tick)
        self.results = Results(self.store, self.calls, self.queue, self.router, self.lineage)
        self.futures = FutureResolver(self)
        try:
            self._echo = DriverEcho(self.store, self.job_id) if log_to_driver else None
        except Exception as e:  # noqa: BLE001 - whatever Redis said, one clear error
            raise FtqueueConnectionError(f"cannot subscribe to task output: {describe(e)}") \
                from None
        self.queue.start()
        self.router.start()

    @property
    def redis_reset(self) -> bool:
        """Redis lost its data while we were connected."""
        return self.results.redis_reset

    # -- submitting ------------------------------------------------------------------------

    def export_function(self, blob: bytes, digest: str) -> str:
        """Keep a pickled function; the submit queue stores it before its first task."""
        self.lineage.add_function(digest, blob)
        return digest

    def submit(self, fn_ref: str, func_name: str, options: ResolvedOptions,
               args: Sequence[Any], kwargs: dict[str, Any]) -> ObjectRef:
        function = fn_ref if self.lineage.has_function(fn_ref) else None
        sub = build_submission(fn_ref, func_name, options, args, kwargs, self.origin, function)
        if options.shape != DEFAULT_SHAPE:
            self._shapes_sent.setdefault((options.queue, options.shape), set()).add(func_name)
        self.queue.submit(sub)
        return ObjectRef(sub.task_id)

    def has_unflushed(self) -> bool:
        return self.queue.has_unsent()

    def flush(self, deadline: float | None = None) -> bool:
        """Wait until every submission so far reached Redis (or was refused)."""
        return self.queue.flush(deadline)

    # Told by the submit queue (on its thread).

    def sent(self, batch: Sequence[Submission]) -> None:
        self.lineage.add(batch)
        self.router.expect(sub.task_id for sub in batch)

    def refused(self, batch: Sequence[Submission], error: FtqueueError) -> None:
        self.router.deliver((sub.task_id, None) for sub in batch)   # final: wake getters

    def redis_lost_data(self) -> list[Submission]:
        self.results.redis_reset = True
        again = self.lineage.closure(self.router.unfinished())
        log.warning("ftqueue: Redis lost its data (restarted empty or failed over); "
                    "submitting again the %d task(s) this process waits for, with their "
                    "lineage", len(again))
        return again

    # -- waiting ---------------------------------------------------------------------------

    def get(self, refs: Any, timeout: float | None = None) -> Any:
        single = isinstance(refs, ObjectRef)
        ids = [r._id for r in ([refs] if single else _as_ref_list(refs, "get"))]
        deadline = None if timeout is None else time.monotonic() + max(0.0, timeout)
        message = f"Get timed out: some object(s) not ready after {timeout} s."
        if not self.queue.flush(grace(deadline)):
            if deadline is None:
                raise FtqueueError("this client is closed: its submissions were not sent")
            raise GetTimeoutError(message + " (submissions are still waiting for Redis)")
        try:
            while True:
                ready = self._await(ids, len(set(ids)), deadline)
                if len(ready) < len(set(ids)):
                    raise GetTimeoutError(message)
                values = self.results.fetch(ids, deadline)
                if values is not None:
                    return values[0] if single else values
        except DeadlinePassed:
            raise GetTimeoutError(message) from None

    def wait(self, refs: Any, num_returns: int = 1, timeout: float | None = None,
             fetch_local: bool = True) -> tuple[list[ObjectRef], list[ObjectRef]]:
        ref_list = _as_ref_list(refs, "wait")
        if len(set(ref_list)) != len(ref_list):
            raise ValueError("Wait requires a list of unique object refs.")
        if timeout is not None and timeout < 0:
            raise ValueError(f"The 'timeout' argument must be nonnegative. Received {timeout}")
        if not ref_list:
            return [], []
        if num_returns <= 0 or num_returns > len(ref_list):
            raise ValueError("Invalid number of objects to return "
                             f"{num_returns}; it must be between 1 and {len(ref_list)}.")
        deadline = None if timeout is None else time.monotonic() + max(0.0, timeout)
        self.queue.flush(grace(deadline))
        while True:
            ready = self._await([r._id for r in ref_list], num_returns, deadline)
            try:
                stored = [i for i in ready if not self.router.inline([i])]
                lost = self.results.lost(stored, deadline)
                for object_id in lost:
                    self.results.rebuild(object_id, deadline)
            except DeadlinePassed:
                break
            if not lost:
                break
        done = [r for r in ref_list if r._id in ready][:num_returns]
        taken = set(done)
        return done, [r for r in ref_list if r not in taken]

    def _await(self, ids: Sequence[str], num_ready: int, deadline: float | None) -> set[str]:
        """Those of ids that are final once num_ready are (or at the deadline). A refused
        submission counts as final."""
        refused = {i for i in ids if self.queue.error(i) is not None}
        rest = [i for i in ids if i not in refused]
        ready = self.router.wait(rest, num_ready - len(refused), deadline,
                                 lambda todo: self.check(todo, deadline), self.on_block)
        return ready | refused

    def future(self, ref: ObjectRef) -> Future[Any]:
        return self.futures.future(ref._id)

    def next_value(self, task_id: str, index: int, timeout: float | None) -> ObjectRef | None:
        """For a generator task's consumer: the ref of its index-th value once it is stored;
        the task's own ref if it failed first; None if it ended with fewer values."""
        item = item_id(task_id, index)
        deadline = None if timeout is None else time.monotonic() + max(0.0, timeout)
        message = f"the generator's value {index} was not ready after {timeout} s"
        if not self.queue.flush(grace(deadline)) and deadline is not None:
            raise GetTimeoutError(message)
        if not self._await([item], 1, deadline):
            raise GetTimeoutError(message)
        if self.router.told(item):
            return ObjectRef(item)
        try:
            record, blob = self.calls.run(lambda: self.store.outcomes([item]), deadline,
                                          doing="reading a generator")[0]
            if record.get("state") == "FINISHED" and blob is not None:
                return ObjectRef(item)
            if record.get("state") != "FINISHED":
                return ObjectRef(task_id)     # failed (or unknown): its get says why
            values = self.results.fetch([task_id], deadline)
        except DeadlinePassed:
            raise GetTimeoutError(message) from None
        count = values[0] if values else 0
        # A value stored once but lost since (expired, evicted) is rebuilt by its get.
        return ObjectRef(item) if isinstance(count, int) and index < count else None

    def check(self, ids: list[str], deadline: float | None) -> set[str]:
        """Ask Redis which ids are final, registering as a waiter on the others. A task of
        ours that Redis no longer knows (it lost recent writes) is submitted again."""
        try:
            statuses = self.calls.run(lambda: self.store.watch(self.notify_key, ids),
                                      grace(deadline), retry=False, doing="checking tasks")
        except (DeadlinePassed, FtqueueConnectionError) as e:
            log.debug("ftqueue: could not check %d task(s): %s", len(ids), e)
            return set()
        again = self.results.resubmit([i for i, s in zip(ids, statuses) if s == "missing"])
        return {i for i, s in zip(ids, statuses) if s != "pending" and i not in again}

    def _tick(self) -> None:
        """While someone waits (on the listener thread): notice a Redis that lost its data,
        and reap expired leases so work is never stuck for want of a live node."""
        now = time.monotonic()
        if now - self._last_epoch_check >= SAFETY_POLL_S:
            self._last_epoch_check = now
            self.queue.request_epoch_check()
        if now - self._last_sweep >= SWEEP_INTERVAL_S:
            self._last_sweep = now
            try:
                self.store.sweep(self.lease_timeout_ms, index_ttl_ms=self.origin.lineage_ttl_s
                                 * 1000)
            except Exception as e:  # noqa: BLE001 - best effort; nodes sweep too
                log.debug("ftqueue: sweep from the driver failed: %s", describe(e))
        if now - self._last_queue_check >= UNSERVED_CHECK_S:
            self._last_queue_check = now
            self._warn_of_unserved_queues()
        if self._shapes_sent and now - self._last_fit_check >= INFEASIBLE_CHECK_S:
            self._last_fit_check = now
            self._warn_of_infeasible()

    def _warn_of_infeasible(self) -> None:
        """Once per function: its tasks need more than any live node has (as Ray warns)."""
        try:
            demands = StateReader(self.store).infeasible()
        except Exception as e:  # noqa: BLE001 - a hint, not worth more
            log.debug("ftqueue: checking for infeasible tasks failed: %s", describe(e))
            return
        for demand in demands:
            for func in sorted(self._shapes_sent.get((demand["queue"], demand["shape"]), ())):
                if func not in self._warned_functions:
                    self._warned_functions.add(func)
                    lacks = ", ".join(f"{k}={v}" for k, v in demand["missing"].items())
                    log.warning("ftqueue: tasks of %s need %s, which no live node serving queue "
                                "%r has (missing %s); they wait until a node that fits joins",
                                func, demand["shape"], demand["queue"], lacks)

    def _warn_of_unserved_queues(self) -> None:
        """Once per queue: work waits in a queue that no live node serves."""
        try:
            unserved = StateReader(self.store).unserved_queues()
        except Exception as e:  # noqa: BLE001 - a hint, not worth more
            log.debug("ftqueue: checking for unserved queues failed: %s", describe(e))
            return
        for queue in unserved:
            if queue not in self._warned_queues:
                self._warned_queues.add(queue)
                log.warning("ftqueue: tasks wait in queue %r, which no live node serves (start "
                            "one with `ftqueue worker --queues %s`)", queue, queue)

    # -- the rest --------------------------------------------------------------------------

    def cancel(self, ref: ObjectRef, force: bool = False, recursive: bool = True) -> None:
        if not isinstance(ref, ObjectRef):
            raise TypeError(f"cancel() expects an ObjectRef, got {type(ref).__name__}")
        self.queue.flush(None)
        self.calls.run(lambda: self.store.cancel(ref._id, force, recursive), None,
                       doing="cancelling a task")

    def requeue(self, ref: ObjectRef | str) -> None:
        task_id = ref._id if isinstance(ref, ObjectRef) else ref
        if not is_task_id(task_id):
            raise ValueError(f"requeue() expects an ObjectRef or a task id, got {ref!r}")
        self.queue.flush(None)
        answer = self.calls.run(lambda: dead_letter.requeue(self.store, [task_id])[task_id],
                                None, doing="requeueing a task")
        if answer != dead_letter.REQUEUED:
            raise ValueError(dead_letter.refusal(task_id, answer))
        self.router.forget([task_id])

    def purge(self, queue: str) -> int:
        if not isinstance(queue, str) or not queue:
            raise ValueError(f"purge() expects a queue name, got {queue!r}")
        self.queue.flush(None)
        return int(self.calls.run(lambda: dead_letter.purge(self.store, queue), None,
                                  doing="purging a queue"))

    def schedule(self, name: str, fn: Any, args: Sequence[Any], kwargs: dict[str, Any],
                 cron: str | None, every_s: float | None, queue: str | None,
                 catchup: str) -> dict[str, Any]:
        return self.calls.run(lambda: schedules.create(
            self.store, self.origin, name, fn, args, kwargs, cron, every_s, queue, catchup),
            None, doing="storing a schedule")

    def unschedule(self, name: str) -> bool:
        return bool(self.calls.run(lambda: schedules.remove(self.store, name), None,
                                   doing="removing a schedule"))

    def list_schedules(self) -> list[dict[str, Any]]:
        return list(self.calls.run(lambda: schedules.list_schedules(self.store), None,
                                   doing="listing schedules"))

    def put(self, value: Any) -> ObjectRef:
        if isinstance(value, ObjectRef):
            raise TypeError("Calling 'put' on an ObjectRef is not allowed.")
        object_id = new_put_id()
        blob = payload.pack_value(value, object_id)
        self.calls.run(lambda: self.store.put(object_id, blob, self.origin.result_ttl_s), None,
                       doing="storing a value")
        return ObjectRef(object_id)

    def close(self) -> None:
        """Send what is queued (giving up after CLOSE_STALL_S without progress), stop the
        threads; never blocks much longer than that, whatever Redis does."""
        echo = None   # the output echo stops meanwhile (its own join can take seconds)
        if self._echo is not None:
            echo = threading.Thread(target=self._echo.close, name="ftqueue-echo-close",
                                    daemon=True)
            echo.start()
        try:
            self.queue.close(CLOSE_STALL_S)
        finally:
            self._closing = True
            self.futures.stop()
            self.router.stop(JOIN_S)
            if echo is not None:
                echo.join(JOIN_S)
            try:
                self.store.redis.close()
            except Exception as e:  # noqa: BLE001 - closing must not raise
                log.debug("ftqueue: closing the Redis connection: %s", as_ftqueue_error(e, ""))


def _as_ref_list(refs: Any, what: str) -> list[ObjectRef]:
    if not isinstance(refs, (list, tuple)):
        raise TypeError(f"'{what}' expects an ObjectRef or a list of ObjectRefs, got "
                        f"{type(refs).__name__}")
    for r in refs:
        if not isinstance(r, ObjectRef):
            raise TypeError(f"'{what}' expects ObjectRefs, got {type(r).__name__}")
    return list(refs)

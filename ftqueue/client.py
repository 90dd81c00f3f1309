"""A connected process (driver or worker): submits, waits and fetches through the store.

A lone `.remote()` is sent before it returns. A burst goes through a small buffer that a
background thread flushes: while one batch is in flight the next accumulates, so a burst
costs a few round trips. `get`, `wait`, `ObjectRef.hex()` and shutdown flush first.
Completions arrive as task ids pushed on this process's notification list, which a listener
thread pops in batches; a slow safety poll re-checks state (and runs the reaper) in case a
notification was lost.
"""

from __future__ import annotations

import threading
import time
from collections import OrderedDict
from typing import Any, Callable, Sequence

from . import payload
from .context import current_task
from .exceptions import (
    FtqueueError,
    GetTimeoutError,
    ObjectLostError,
    ObjectReconstructionFailedError,
    PayloadVerificationError,
)
from .output import DriverEcho
from .settings import (
    DEFAULT_DRIVER_LINEAGE_BYTES,
    env_int,
    lease_timeout_from_env,
    retention_from_env,
)
from .spec import TERMINAL_STATES, ObjectRef, ResolvedOptions, new_id, new_put_id
from .store import Store, backoff, connect, is_connection_error, retry_across_outage

SUBMIT_BATCH_MAX = 500
BURST_GAP_S = 0.002      # a .remote() this soon after the previous one is part of a burst
SAFETY_POLL_S = 1.0
DONE_MEMORY = 100_000
DONE_MEMORY_BYTES = 64 * 1024 * 1024


class Client:
    def __init__(self, address: str, namespace: str = "ftq", *, job_id: str | None = None,
                 log_to_driver: bool = False) -> None:
        self.address = address
        self.namespace = namespace
        self.store = Store(connect(address), namespace)
        self.keys = self.store.keys
        self.client_id = new_id()[:16]
        self.notify_key = self.keys.done(self.client_id)
        self.job_id = job_id or self.store.next_job_id()
        self.epoch = self.store.ensure_epoch()
        self.redis_reset = False      # this Redis lost its data while we were connected
        self.result_ttl_s, self.lineage_ttl_s = retention_from_env()
        self.lease_timeout_ms = int(lease_timeout_from_env() * 1000)
        self.on_block: Callable[[bool], None] | None = None
        self._cond = threading.Condition()
        self._buffer: list[tuple[str, str, bytes, list[str], dict[str, str]]] = []
        self._queued_seq = 0
        self._flushed_seq = 0
        self._submit_errors: dict[str, BaseException] = {}
        # Finished ids we were told of, with the result when it came inline.
        self._done: OrderedDict[str, bytes | None] = OrderedDict()
        self._done_bytes = 0
        self._waiting: list[tuple[set[str], set[str]]] = []
        self._mine: OrderedDict[str, None] = OrderedDict()   # submitted here: we are notified
        # The specs of what we submitted (newest, up to a byte budget): a Redis that lost
        # data is given these tasks again, and re-running them rebuilds lost results.
        self._specs: OrderedDict[str, Any] = OrderedDict()
        self._spec_bytes = 0
        self._spec_budget = env_int("FTQUEUE_DRIVER_LINEAGE_BYTES", DEFAULT_DRIVER_LINEAGE_BYTES)
        self._functions: dict[str, bytes] = {}
        self._last_epoch_check = 0.0
        self._flushing = False
        self._last_submit = 0.0
        self._closing = False
        self._last_sweep = 0.0
        self._flusher = threading.Thread(target=self._flush_loop, name="ftqueue-flusher", daemon=True)
        self._flusher.start()
        self._listener = threading.Thread(target=self._listen_loop, name="ftqueue-listener",
                                          daemon=True)
        self._listener.start()
        self._echo = DriverEcho(self.store, self.job_id) if log_to_driver else None

    # -- submitting ---------------------------------------------------------------------------

    def export_function(self, blob: bytes, digest: str) -> str:
        self.store.store_function(digest, blob)
        self._functions[digest] = blob
        return digest

    def submit(self, fn_ref: str, func_name: str, options: ResolvedOptions,
               args: Sequence[Any], kwargs: dict[str, Any]) -> ObjectRef:
        task_id = new_id()
        func_name = "".join(c if c.isprintable() and not c.isspace() else "_" for c in func_name)
        blob, deps = payload.pack_args(args, kwargs, options.retry_exceptions, func_name, task_id)
        task = current_task()
        fields = {
            "name": options.name or func_name, "func": func_name, "fn": fn_ref,
            "job_id": task.job_id if task else self.job_id,
            "parent_task_id": task.task_id if task else "",
            "max_retries": str(options.max_retries), "notify": self.notify_key,
            "result_ttl_s": str(self.result_ttl_s), "lineage_ttl_s": str(self.lineage_ttl_s),
        }
        if options.max_calls:
            fields["max_calls"] = str(options.max_calls)
        if options.timeout_s:
            fields["timeout_s"] = repr(float(options.timeout_s))
            # Decided here, where the allowlist's classes live, so a supervisor that has to
            # kill a task past its timeout knows whether that may be retried.
            if retries_timeout(options.retry_exceptions):
                fields["retry_timeout"] = "1"
        now = time.monotonic()
        with self._cond:
            self._buffer.append((task_id, options.queue, blob, deps, fields))
            self._queued_seq += 1
            # An isolated submission (a web request, a child process about to exit) is in
            # Redis when .remote() returns; a burst is batched by the flusher thread.
            alone = (now - self._last_submit > BURST_GAP_S and not self._flushing
                     and not self._buffer[:-1])   # nothing older waits (e.g. Redis away)
            self._last_submit = now
            batch = self._take_batch() if alone else None
            if batch is None:
                self._cond.notify_all()
        if batch is not None:
            self._send(batch)   # if Redis is unreachable, the flusher thread retries it
        return ObjectRef(task_id)

    def has_unflushed(self) -> bool:
        return self._flushed_seq < self._queued_seq

    def flush(self) -> None:
        """Return once every submission made so far has reached Redis (or failed); sends
        the pending batch from this thread when no other send is in flight."""
        failures = 0
        while True:
            with self._cond:
                target = self._queued_seq
                if self._flushed_seq >= target:
                    return
                batch = self._take_batch()
                if batch is None:
                    self._cond.wait(0.05)
                    continue
            if not self._send(batch):
                time.sleep(backoff(failures))
                failures += 1

    def _take_batch(self) -> list[Any] | None:
        if self._flushing or not self._buffer:
            return None
        self._flushing = True
        return self._buffer[:SUBMIT_BATCH_MAX]

    def _send(self, batch: list[Any]) -> bool:
        """Submit one batch; False when Redis was unreachable (the batch stays queued)."""
        try:
            self.store.submit(batch)
        except Exception as e:  # noqa: BLE001 - anything else fails these submissions
            if is_connection_error(e) and not self._closing:
                with self._cond:
                    self._flushing = False
                    self._cond.notify_all()
                return False
            with self._cond:
                for task in batch:
                    self._submit_errors[task[0]] = FtqueueError(
                        f"submitting task {task[0]} failed: {type(e).__name__}: {e}")
        with self._cond:
            del self._buffer[:len(batch)]
            self._flushed_seq += len(batch)
            for task in batch:
                self._mine[task[0]] = None
                self._specs[task[0]] = task
                self._spec_bytes += len(task[2])
            while self._spec_bytes > self._spec_budget and self._specs:
                self._spec_bytes -= len(self._specs.popitem(last=False)[1][2])
            while len(self._mine) > DONE_MEMORY:
                self._mine.popitem(last=False)
            self._flushing = False
            self._cond.notify_all()
        return True

    def _flush_loop(self) -> None:
        failures = 0
        while True:
            with self._cond:
                batch = self._take_batch()
                while batch is None:
                    if self._closing and not self._buffer:
                        return
                    self._cond.wait()
                    batch = self._take_batch()
            if self._send(batch):
                failures = 0
            else:
                time.sleep(backoff(failures))
                failures += 1

    # -- completions --------------------------------------------------------------------------

    def _listen_loop(self) -> None:
        failures = 0
        while not self._closing:
            try:
                ids = self.store.pop_notifications(self.notify_key, timeout_s=1.0)
                failures = 0
            except Exception:  # noqa: BLE001 - keep listening across Redis outages
                if self._closing:
                    return
                time.sleep(backoff(failures))
                failures += 1
                continue
            if ids:
                with self._cond:
                    for task_id, blob in ids:
                        self._done[task_id] = blob
                        self._done_bytes += len(blob) if blob else 0
                        for pending, ready in self._waiting:   # each getter's ids
                            if task_id in pending:
                                pending.discard(task_id)
                                ready.add(task_id)
                    while len(self._done) > DONE_MEMORY or self._done_bytes > DONE_MEMORY_BYTES:
                        # Forgotten here, such a task is found final by a check instead.
                        task_id, blob = self._done.popitem(last=False)
                        self._done_bytes -= len(blob) if blob else 0
                        self._mine.pop(task_id, None)
                    self._cond.notify_all()

    def _await(self, ids: Sequence[str], num_ready: int, deadline: float | None) -> set[str]:
        """Block until at least num_ready of ids are final; return those that are."""
        unique = set(ids)
        with self._cond:
            ready = {i for i in unique if i in self._submit_errors or i in self._done}
            # Our own submissions notify us; only others' need a check (and registration).
            known = ready | {i for i in unique if i in self._mine}
        if len(ready) < num_ready and len(known) < len(unique):
            ready |= self._check(ids, known)
        # Registered with the listener, which moves arriving ids from `pending` into `ready`
        # (under the lock): a wake-up costs what arrived, not a scan of every id waited for.
        with self._cond:
            ready |= {i for i in unique if i in self._done}
            pending = unique - ready
            waiting = (pending, ready)
            self._waiting.append(waiting)
        blocked = False
        try:
            while len(ready) < num_ready:
                remaining = None if deadline is None else deadline - time.monotonic()
                if remaining is not None and remaining <= 0:
                    break
                if not blocked and self.on_block is not None:
                    self.on_block(True)
                    blocked = True
                wait_s = SAFETY_POLL_S if remaining is None else min(remaining, SAFETY_POLL_S)
                with self._cond:
                    if self._cond.wait_for(lambda: len(ready) >= num_ready, wait_s):
                        break
                with self._cond:
                    done_ids = set(ready)
                found = self._check(ids, done_ids)
                with self._cond:
                    pending -= found
                    ready |= found
                self._maybe_sweep()
                self._check_epoch()
        finally:
            with self._cond:
                self._waiting.remove(waiting)
            if blocked and self.on_block is not None:
                self.on_block(False)
        return set(ready)

    def _check(self, ids: Sequence[str], ready: set[str]) -> set[str]:
        """Ask Redis which ids are final, registering as a waiter on the others. A task of
        ours that Redis no longer knows (it lost recent writes) is submitted again."""
        todo = [i for i in dict.fromkeys(ids) if i not in ready]
        try:
            statuses = self.store.watch(self.notify_key, todo)
            with self._cond:
                again = [self._specs[i] for i, s in zip(todo, statuses)
                         if s == "missing" and i in self._specs]
            if again:
                self.store.submit(again)
                self.store.watch(self.notify_key, [spec[0] for spec in again])
        except Exception as e:  # noqa: BLE001
            if is_connection_error(e):
                return set()
            raise
        resubmitted = {spec[0] for spec in again}
        return {i for i, s in zip(todo, statuses) if s != "pending" and i not in resubmitted}

    def _check_epoch(self) -> None:
        """Notice a Redis that lost its data; hand it our unfinished tasks again. (Finished
        ones whose results were lost are submitted again only when asked for: `_check`.)"""
        now = time.monotonic()
        if now - self._last_epoch_check < SAFETY_POLL_S:
            return
        self._last_epoch_check = now
        try:
            epoch = self.store.ensure_epoch()
            if epoch == self.epoch:
                return
            self.epoch, self.redis_reset = epoch, True
            for digest, blob in self._functions.items():
                self.store.store_function(digest, blob)
            with self._cond:
                specs = [self._specs[i] for i in self._mine
                         if i not in self._done and i in self._specs]
            for i in range(0, len(specs), SUBMIT_BATCH_MAX):
                self.store.submit(specs[i:i + SUBMIT_BATCH_MAX])
        except Exception as e:  # noqa: BLE001
            if not is_connection_error(e):
                raise

    def _maybe_sweep(self) -> None:
        """A driver blocked in get also reaps expired leases, so work is never stuck for
        want of a live node."""
        now = time.monotonic()
        if now - self._last_sweep < 2.0:
            return
        self._last_sweep = now
        try:
            self.store.sweep(self.lease_timeout_ms, index_ttl_ms=self.lineage_ttl_s * 1000)
        except Exception:  # noqa: BLE001 - best effort; nodes sweep too
            pass

    def get(self, refs: Any, timeout: float | None = None) -> Any:
        single = isinstance(refs, ObjectRef)
        ref_list = [refs] if single else _as_ref_list(refs, "get")
        self.flush()
        ids = [r._id for r in ref_list]
        deadline = None if timeout is None else time.monotonic() + max(0.0, timeout)
        while True:
            ready = self._await(ids, len(set(ids)), deadline)
            if len(ready) < len(set(ids)):
                raise GetTimeoutError(f"Get timed out: some object(s) not ready after {timeout} s.")
            values = self._fetch(ids)
            if values is not None:
                return values[0] if single else values

    def _fetch(self, ids: Sequence[str]) -> list[Any] | None:
        """The values (raising the first error), or None when a lost result is being
        rebuilt: wait again then."""
        unique = list(dict.fromkeys(i for i in ids if i not in self._submit_errors))
        found: dict[str, tuple[dict[str, str], bytes | None]] = {}
        with self._cond:
            for object_id in unique:
                blob = self._done.get(object_id)
                if blob is not None:
                    found[object_id] = ({"state": "FINISHED"}, blob)
        missing = [i for i in unique if i not in found]
        if missing:
            found.update(zip(missing, self._redis_retry(lambda: self.store.outcomes(missing))))
        with self._cond:
            for object_id in unique:
                blob = self._done.pop(object_id, None)
                self._done_bytes -= len(blob) if blob else 0
        rebuilding = False
        values = []
        for object_id in ids:
            if object_id in self._submit_errors:
                raise self._submit_errors[object_id]
            record, blob = found[object_id]
            if record and record["state"] not in TERMINAL_STATES:
                rebuilding = True    # another getter started rebuilding it: wait again
                continue
            if blob is None and record.get("state") == "FINISHED":
                self._rebuild(object_id)
                rebuilding = True
                continue
            ok, value = payload.outcome_to_result(object_id, record, blob)
            if not ok and isinstance(value, PayloadVerificationError):
                self.store.incr_stat("payload_rejected")
            if not ok:
                if not record and self.redis_reset:
                    raise ObjectLostError(f"Object {object_id} is lost: Redis lost its data "
                                          "(restarted without persistence, or failed over)")
                raise value
            values.append(value)
        if rebuilding:
            return None
        with self._cond:
            for object_id in unique:
                self._mine.pop(object_id, None)
        return values

    def _rebuild(self, object_id: str) -> None:
        """Its task FINISHED but the result is gone (expired, evicted, deleted): re-run it."""
        status = self._redis_retry(lambda: self.store.reconstruct(object_id))
        if status in ("exhausted", "no_lineage"):
            reason = {"exhausted": "MAX_ATTEMPTS_EXCEEDED: the task's retries are spent",
                      "no_lineage": "LINEAGE_EVICTED: its task record or arguments expired"}
            raise ObjectReconstructionFailedError(
                f"Failed to retrieve object {object_id}: its result was lost and could not be "
                f"rebuilt [{reason[status]}]")

    def _redis_retry(self, step: Callable[[], Any]) -> Any:
        """An idempotent read, retried across a Redis outage (with backoff)."""
        return retry_across_outage(step, give_up=lambda: self._closing)

    def wait(self, refs: Any, num_returns: int = 1, timeout: float | None = None,
             fetch_local: bool = True) -> tuple[list[ObjectRef], list[ObjectRef]]:
        ref_list = _as_ref_list(refs, "wait")
        if len(set(ref_list)) != len(ref_list):
            raise ValueError("Wait requires a list of unique object refs.")
        if num_returns <= 0 or num_returns > len(ref_list):
            raise ValueError("Invalid number of objects to return "
                             f"{num_returns}; it must be between 1 and {len(ref_list)}.")
        self.flush()
        deadline = None if timeout is None else time.monotonic() + max(0.0, timeout)
        while True:
            ready = self._await([r._id for r in ref_list], num_returns, deadline)
            lost = self._lost([i for i in ready if self._done.get(i) is None])
            for object_id in lost:
                self._rebuild(object_id)
            if not lost:
                break
        done = [r for r in ref_list if r._id in ready][:num_returns]
        taken = set(done)
        return done, [r for r in ref_list if r not in taken]

    def cancel(self, ref: ObjectRef, force: bool = False, recursive: bool = True) -> None:
        if not isinstance(ref, ObjectRef):
            raise TypeError(f"cancel() expects an ObjectRef, got {type(ref).__name__}")
        self.flush()
        self.store.cancel(ref._id, force, recursive)

    def _lost(self, ids: Sequence[str]) -> list[str]:
        """Those of ids whose task FINISHED but whose result is gone."""
        pairs = self._redis_retry(lambda: self.store.outcomes(list(ids))) if ids else []
        return [i for i, (record, blob) in zip(ids, pairs)
                if blob is None and record.get("state") == "FINISHED"]

    def put(self, value: Any) -> ObjectRef:
        if isinstance(value, ObjectRef):
            raise TypeError("Calling 'put' on an ObjectRef is not allowed.")
        object_id = new_put_id()
        self.store.put(object_id, payload.pack_value(value, object_id), self.result_ttl_s)
        return ObjectRef(object_id)

    def close(self) -> None:
        try:
            self.flush()
        except Exception:  # noqa: BLE001 - closing must not raise
            pass
        with self._cond:
            self._closing = True
            self._cond.notify_all()
        self._flusher.join(timeout=2)
        self._listener.join(timeout=2)
        if self._echo is not None:
            self._echo.close()
        try:
            self.store.redis.close()
        except Exception:  # noqa: BLE001
            pass


def retries_timeout(retry_exceptions: bool | tuple[type, ...]) -> bool:
    from .exceptions import TaskTimeoutError

    if isinstance(retry_exceptions, bool):
        return retry_exceptions
    return any(issubclass(TaskTimeoutError, c) for c in retry_exceptions)


def _as_ref_list(refs: Any, what: str) -> list[ObjectRef]:
    if not isinstance(refs, (list, tuple)):
        raise TypeError(f"'{what}' expects an ObjectRef or a list of ObjectRefs, got "
                        f"{type(refs).__name__}")
    for r in refs:
        if not isinstance(r, ObjectRef):
            raise TypeError(f"'{what}' expects ObjectRefs, got {type(r).__name__}")
    return list(refs)


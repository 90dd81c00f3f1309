"""A worker process: a thin loop around `step()` that claims, runs and commits tasks.

It is always the child of a node supervisor and tells it, through a pipe, which task it is
running ("S <id>"), when it is idle again ("E"), and when a task blocks in get ("B"/"U"),
so the supervisor can fail exactly the right attempt if this process dies, and lend the
slot of a blocked worker.
"""

from __future__ import annotations

import importlib
import os
import signal
import socket
import sys
import threading
import time
from collections import deque
from typing import Any, Callable

from . import payload
from .context import TaskContext, set_current_task
from .exceptions import (
    FtqueueError,
    PayloadVerificationError,
    TaskCancelledError,
)
from .output import OutputCapture
from .remote_function import IMPORT_PREFIX, RemoteFunction
from .settings import NodeSettings, retention_from_env
from .spec import ArgRef
from .store import Claimed, Store, is_connection_error, retry_across_outage

EXIT_RECYCLE = 75          # exited on purpose (max_calls): restart, charge nothing
COMMIT_BATCH_S = 0.002     # hold commits this long at most while prefetched tasks remain
COMMIT_BATCH_MAX = 64
BELL_WAIT_S = 1.0


def host_ip() -> str:
    try:
        return socket.gethostbyname(socket.gethostname())
    except OSError:
        return "127.0.0.1"


class FunctionCache:
    """Functions by digest (pickled once by the driver) or by import path."""

    def __init__(self, store: Store) -> None:
        self.store = store
        self._cache: dict[str, Callable[..., Any]] = {}

    def get(self, fn_ref: str) -> Callable[..., Any]:
        fn = self._cache.get(fn_ref)
        if fn is None:
            fn = self._load(fn_ref)
            self._cache[fn_ref] = fn
        return fn

    def _load(self, fn_ref: str) -> Callable[..., Any]:
        if fn_ref.startswith(IMPORT_PREFIX):
            path = fn_ref[len(IMPORT_PREFIX):]
            module_name, _, attr = path.partition(":")
            try:
                obj: Any = importlib.import_module(module_name)
                for part in attr.split("."):
                    obj = getattr(obj, part)
            except Exception as e:
                raise ImportError(f"could not import {path!r} on the worker: "
                                  f"{type(e).__name__}: {e}") from e
        else:
            blob = self.store.load_function(fn_ref)
            if blob is None:
                raise FtqueueError(f"function {fn_ref} is not stored in Redis")
            obj = payload.unpack_function(blob, fn_ref)
        if isinstance(obj, RemoteFunction):
            obj = obj._function if obj._function is not None else self.get(obj._fn_ref(None))
        if not callable(obj):
            raise TypeError(f"{fn_ref} is not callable")
        return obj


class TaskInterrupt(BaseException):
    """Raised inside a task that ran past its timeout_s (a BaseException, so a task's
    `except Exception:` does not swallow it)."""


def should_retry(exc: BaseException, retry_exceptions: bool | tuple[type, ...]) -> bool:
    if isinstance(retry_exceptions, bool):
        return retry_exceptions
    return isinstance(exc, tuple(retry_exceptions))


class Worker:
    def __init__(self, settings: NodeSettings, node_id: str, worker_id: str,
                 control: Any, store: Store, inbox_fd: int | None = None) -> None:
        self.settings = settings
        self.node_id = node_id
        self.worker_id = worker_id
        self.control = control
        self.store = store
        self.functions = FunctionCache(store)
        self.local: deque[Claimed] = deque()
        self.pending: list[tuple[str, str, str, bytes, bool, str]] = []
        self.pending_since = 0.0
        self.calls: dict[str, int] = {}
        self.claimed_at = 0.0
        self.inbox_fd = inbox_fd
        self.inbox = b""
        self.current = ""
        self.interruptible = False
        self.cancelled: set[str] = set()
        self.output: OutputCapture | None = None
        self.result_ttl_s = retention_from_env()[0]
        self.stopping = False
        self.pid = os.getpid()
        self.ip = host_ip()
        self.lease_timeout_ms = int(settings.lease_timeout_s * 1000)

    def tell(self, message: str) -> None:
        try:
            self.control.write(message.encode() + b"\n")
            self.control.flush()
        except (OSError, ValueError):
            os._exit(1)  # the supervisor is gone: so must we be

    # -- the loop -----------------------------------------------------------------------------

    def run(self) -> int:
        while True:
            code = self.step()
            if code is not None:
                return code

    def step(self) -> int | None:
        """Run one task (claiming first if none is at hand); an exit code ends the loop."""
        if not self.local:
            self.flush()
            if self.stopping:
                return 0
            claimed = self._claim()
            if not claimed:
                self._wait_for_work()
                return None
            self.local.extend(claimed)
            self.claimed_at = time.monotonic()
            self.tell("H " + " ".join(t.task_id for t in claimed))
        elif time.monotonic() - self.claimed_at > self.settings.lease_timeout_s:
            # We were frozen or starved past our lease: the reaper has most likely handed
            # these prefetched tasks to others. Give back whatever is still ours.
            self.flush()
            self._retry_redis(lambda: self.store.worker_lost(
                self.node_id, self.worker_id, "", "WORKER_DIED", "prefetch outlived its lease",
                charge=False))
            self.tell("D " + " ".join(t.task_id for t in self.local))
            self.local.clear()
            return None
        task = self.local.popleft()
        if task.task_id in self.cancelled:
            self.cancelled.discard(task.task_id)
            outcome: tuple[str, str, str, bytes, bool, str] = (
                task.task_id, task.fence, "cancelled", b"", False, "cancelled before it started")
        else:
            outcome = self.execute(task)
        if not self.pending:
            self.pending_since = time.monotonic()
        self.pending.append(outcome)
        if (not self.local or len(self.pending) >= COMMIT_BATCH_MAX
                or time.monotonic() - self.pending_since >= COMMIT_BATCH_S):
            self.flush()
        if task.max_calls and self.calls.get(task.fn, 0) >= task.max_calls:
            return self.leave(EXIT_RECYCLE)
        if self.stopping:
            return self.leave(0)
        if self.over_memory():
            return self.leave(EXIT_RECYCLE)
        return None

    def over_memory(self) -> bool:
        limit = self.settings.max_memory_per_worker_bytes
        if not limit:
            return False
        try:
            with open("/proc/self/statm") as f:
                rss = int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
        except (OSError, ValueError):
            import psutil

            rss = psutil.Process().memory_info().rss
        return rss > limit

    def on_inbox(self, signum: int, frame: Any) -> None:
        """SIGUSR1 from the supervisor: read its requests; interrupt the current task if one
        names it (and only while that task's own code runs)."""
        try:
            while True:
                data = os.read(self.inbox_fd, 65536) if self.inbox_fd is not None else b""
                if not data:
                    break
                self.inbox += data
        except BlockingIOError:
            pass
        *lines, self.inbox = self.inbox.split(b"\n")
        interrupt: BaseException | None = None
        for line in lines:
            kind, _, task_id = line.decode().partition(" ")
            if kind == "C":
                self.cancelled.add(task_id)
            if task_id == self.current and self.interruptible:
                interrupt = KeyboardInterrupt() if kind == "C" else TaskInterrupt()
        if interrupt is not None:
            self.interruptible = False
            raise interrupt

    def leave(self, code: int) -> int:
        """Commit what is done and hand prefetched tasks back before exiting on purpose."""
        self.flush()
        if self.local:
            self._retry_redis(lambda: self.store.worker_lost(
                self.node_id, self.worker_id, "", "WORKER_DIED",
                "worker exited on purpose before starting it", charge=False))
            self.tell("D " + " ".join(t.task_id for t in self.local))
            self.local.clear()
        return code

    def _claim(self) -> list[Claimed]:
        try:
            return self.store.claim(self.node_id, self.worker_id, self.settings.queues,
                                    self.settings.prefetch, 8, self.lease_timeout_ms)
        except Exception as e:
            if not is_connection_error(e):
                raise
            # The claim may have run with its reply lost: hand back anything it took.
            self._retry_redis(lambda: self.store.worker_lost(
                self.node_id, self.worker_id, "", "WORKER_DIED", "claim reply lost",
                charge=False))
            return []

    def _wait_for_work(self) -> None:
        try:
            self.store.wait_for_bell(self.settings.queues, BELL_WAIT_S)
        except Exception as e:
            if not is_connection_error(e):
                raise
            time.sleep(0.5)

    def flush(self) -> None:
        """Send the held commits; the next prefetched task is marked RUNNING with them. (A
        task started while commits are held, i.e. within COMMIT_BATCH_S of the last send,
        is marked by the supervisor's next renewal instead.)"""
        if not self.pending:
            return
        batch, self.pending = self.pending, []
        next_id = self.local[0].task_id if self.local else ""
        # Commits are fenced, so sending one again after a lost reply is harmless.
        self._retry_redis(lambda: self.store.commit(batch, next_task_id=next_id))
        self.tell("D " + " ".join(outcome[0] for outcome in batch))

    def _retry_redis(self, step: Callable[[], Any]) -> Any:
        return retry_across_outage(step)

    # -- one task -----------------------------------------------------------------------------

    def execute(self, task: Claimed) -> tuple[str, str, str, bytes, bool, str]:
        self.current = task.task_id
        timeout = repr(task.timeout_s) if task.timeout_s else "-"
        self.tell(f"S {task.task_id} {task.fence} {timeout} {int(task.retry_timeout)} "
                  f"{task.func_name}")
        set_current_task(TaskContext(task.task_id, task.attempt, task.job_id, self.node_id,
                                     self.worker_id, task.func_name))
        if self.output is not None:
            self.output.start(task.task_id, task.attempt, task.job_id, task.func_name,
                              self.result_ttl_s)
        try:
            return self._execute(task)
        finally:
            if self.output is not None:
                try:
                    self.output.finish()
                except Exception:  # noqa: BLE001 - losing output must not lose the result
                    pass
            self.current = ""
            set_current_task(None)
            self.tell("E")

    def _execute(self, task: Claimed) -> tuple[str, str, str, bytes, bool, str]:
        head = (task.task_id, task.fence)
        try:
            fn = self.functions.get(task.fn)
            args, kwargs, retry_exceptions = payload.unpack_args(task.args_blob, task.task_id)
        except Exception as e:  # noqa: BLE001 - cannot load: fails, never retried
            if isinstance(e, PayloadVerificationError):
                self._count("payload_rejected")
            return head + ("err", self._error(task, e, f"{type(e).__name__}: {e}\n"), False,
                           payload.error_summary(e))
        dep_error = self._resolve(args, kwargs)
        if dep_error is not None:
            blob = payload.dependency_error(task.func_name, dep_error, self.pid, self.ip,
                                            task.task_id)
            return head + ("err", blob, False, "input argument failed: "
                           + payload.error_summary(dep_error))
        self.calls[task.fn] = self.calls.get(task.fn, 0) + 1
        try:
            if task.task_id in self.cancelled:
                raise KeyboardInterrupt
            self.interruptible = True
            try:
                value = fn(*args, **kwargs)
            finally:
                self.interruptible = False
        except SystemExit as e:
            # As in Ray, sys.exit() in a task ends the worker: a worker death, retried.
            self.flush()
            code = e.code if isinstance(e.code, int) else 1
            os._exit(code if code != EXIT_RECYCLE else 1)
        except TaskInterrupt as e:
            cause = TimeoutError(f"the task ran longer than its timeout_s={task.timeout_s}")
            blob = payload.pack_error(task.func_name, cause, payload.format_traceback(e, 1),
                                      self.pid, self.ip, task.task_id, kind="TaskTimeoutError")
            return head + ("err", blob, task.retry_timeout, f"TaskTimeoutError: {cause}")
        except KeyboardInterrupt as e:
            self.cancelled.discard(task.task_id)
            blob = payload.pack_error(task.func_name, TaskCancelledError(task.task_id),
                                      payload.format_traceback(e, 1), self.pid, self.ip,
                                      task.task_id)
            return head + ("cancelled", blob, False, "KeyboardInterrupt: task interrupted")
        except BaseException as e:  # noqa: BLE001 - every task error is the caller's to see
            return head + ("err", self._error(task, e, payload.format_traceback(e, 1)),
                           should_retry(e, retry_exceptions), payload.error_summary(e))
        try:
            return head + ("ok", payload.pack_value(value, task.task_id), False, "")
        except FtqueueError as e:   # unpicklable or oversized: deterministic, not retried
            return head + ("err", self._error(task, e, f"{type(e).__name__}: {e}\n"), False,
                           payload.error_summary(e))

    def _error(self, task: Claimed, exc: BaseException, traceback_text: str) -> bytes:
        return payload.pack_error(task.func_name, exc, traceback_text, self.pid, self.ip,
                                  task.task_id)

    def _count(self, stat: str) -> None:
        try:
            self.store.incr_stat(stat)
        except Exception:  # noqa: BLE001 - a counter is not worth failing a task for
            pass

    def _resolve(self, args: list[Any], kwargs: dict[str, Any]) -> BaseException | None:
        """Replace top-level ArgRefs by their values; return the first failed one's error."""
        slots = [(args, i) for i, a in enumerate(args) if isinstance(a, ArgRef)]
        slots += [(kwargs, k) for k, v in kwargs.items() if isinstance(v, ArgRef)]
        if not slots:
            return None
        ids = list(dict.fromkeys(c[k].object_id for c, k in slots))
        results = {}
        for object_id, (record, blob) in zip(ids, self.store.outcomes(ids)):
            if blob is None and record.get("state") == "FINISHED":
                results[object_id] = self._rebuilt(object_id)
            else:
                results[object_id] = payload.outcome_to_result(object_id, record, blob)
        for container, key in slots:
            ok, value = results[container[key].object_id]
            if not ok:
                return value
            container[key] = value
        return None


    @staticmethod
    def _rebuilt(object_id: str) -> tuple[bool, Any]:
        """An argument whose result was lost: rebuild it (the slot is lent while we wait)."""
        from .api import get
        from .spec import ObjectRef

        try:
            return True, get(ObjectRef(object_id))
        except Exception as e:  # noqa: BLE001 - the dependent fails with this as its cause
            return False, e


def _watch_parent(parent_pid: int) -> None:
    while True:
        if os.getppid() != parent_pid:
            os._exit(1)
        time.sleep(0.5)


def main(argv: list[str] | None = None) -> int:
    """Entry point of a worker process (started by the supervisor, never by hand)."""
    import argparse
    import json

    from .api import _attach_worker_client
    from .embedded import set_parent_death_signal
    from .store import connect

    parser = argparse.ArgumentParser(prog="ftqueue-worker-process")
    parser.add_argument("--settings", required=True)
    parser.add_argument("--node-id", required=True)
    parser.add_argument("--worker-id", required=True)
    parser.add_argument("--control-fd", type=int, required=True)
    parser.add_argument("--parent-pid", type=int, required=True)
    parser.add_argument("--inbox-fd", type=int, default=None)
    ns = parser.parse_args(argv)

    set_parent_death_signal(signal.SIGKILL)
    if os.getppid() != ns.parent_pid:
        return 1
    threading.Thread(target=_watch_parent, args=(ns.parent_pid,), daemon=True).start()
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C is for the supervisor

    raw = json.loads(ns.settings)
    raw["queues"] = tuple(raw["queues"])
    settings = NodeSettings(**raw)
    control = os.fdopen(ns.control_fd, "wb", buffering=0)
    store = Store(connect(settings.address), settings.namespace)
    if ns.inbox_fd is not None:
        os.set_blocking(ns.inbox_fd, False)
    worker = Worker(settings, ns.node_id, ns.worker_id, control, store, ns.inbox_fd)
    signal.signal(signal.SIGUSR1, worker.on_inbox)
    worker.output = OutputCapture(store, copy=settings.copy_task_output)

    def on_term(signum: int, frame: Any) -> None:
        worker.stopping = True

    signal.signal(signal.SIGTERM, on_term)
    _attach_worker_client(settings.address, settings.namespace,
                          lambda blocked: worker.tell("B" if blocked else "U"))
    sys.stdout.flush()
    return worker.run()


if __name__ == "__main__":
    sys.exit(main())

"""One task attempt inside a worker process: verify, load, resolve arguments, call, and turn
whatever happened into an `Outcome`. Interrupts (cancel, timeout) land only while the
task's own code runs."""

from __future__ import annotations

import logging
import os
import signal
import socket
import threading
from typing import Any, Callable

from . import payload, protocol
from .context import TaskContext, set_current_task
from .exceptions import FtqueueError, PayloadVerificationError, TaskCancelledError
from .functions import FunctionCache
from .output import OutputCapture
from .policy import exception_is_retryable
from .spec import ArgRef, Outcome
from .store import Claimed, Store, describe, retry_across_outage

log = logging.getLogger("ftqueue.worker")
# A task's traceback starts at its own code: skip ftqueue's frames (_execute, then _call).
USER_FRAMES_SKIP = 2


def host_ip() -> str:
    try:
        return socket.gethostbyname(socket.gethostname())
    except OSError:
        return "127.0.0.1"


# The signals the worker lives by (SIGUSR1: a request from its supervisor; SIGTERM: stop
# after this task): a task may block or replace them, but not for the tasks after it.
WORKER_SIGNALS = (signal.SIGUSR1, signal.SIGTERM, signal.SIGINT)


class _WorkerSignals:
    """The worker's signal handlers and mask, put back after each task."""

    def __init__(self) -> None:
        self.main = threading.current_thread() is threading.main_thread()
        self.handlers = [signal.getsignal(s) for s in WORKER_SIGNALS] if self.main else []
        self.mask = signal.pthread_sigmask(signal.SIG_BLOCK, [])

    def restore(self) -> None:
        if self.main:
            for signum, handler in zip(WORKER_SIGNALS, self.handlers):
                if handler is not None and signal.getsignal(signum) is not handler:
                    signal.signal(signum, handler)
        signal.pthread_sigmask(signal.SIG_SETMASK, self.mask)


class TaskInterrupt(BaseException):
    """Raised inside a task that ran past its timeout_s (a BaseException, so a task's
    `except Exception:` does not swallow it)."""


class TaskRunner:
    def __init__(self, store: Store, node_id: str, worker_id: str,
                 tell: Callable[[protocol.WorkerMessage], None], result_ttl_s: int,
                 rebuild: Callable[[str], Any] | None = None,
                 import_allow: tuple[str, ...] = ()) -> None:
        self.store = store
        self.node_id = node_id
        self.worker_id = worker_id
        self.tell = tell
        self.result_ttl_s = result_ttl_s
        self.rebuild = rebuild        # get() of a lost argument: the runtime's, injected
        self.functions = FunctionCache(store, import_allow)
        self.output: OutputCapture | None = None
        self.calls: dict[str, int] = {}
        self.current = ""
        self.interruptible = False
        self.cancelled: set[str] = set()
        self.pid = os.getpid()
        self.ip = host_ip()

    def interrupt_for(self, message: protocol.SupervisorMessage) -> BaseException | None:
        """What to raise in the running task for a supervisor request, if anything."""
        if isinstance(message, protocol.Cancel):
            self.cancelled.add(message.task_id)
        if message.task_id != self.current or not self.interruptible:
            return None
        self.interruptible = False
        return KeyboardInterrupt() if isinstance(message, protocol.Cancel) else TaskInterrupt()

    def run(self, task: Claimed) -> Outcome:
        """Run one claimed task; its outcome is not committed here (see commits.py)."""
        if task.task_id in self.cancelled:
            self.cancelled.discard(task.task_id)
            return Outcome(task.task_id, task.fence, "cancelled", b"", False,
                           "cancelled before it started")
        signals = _WorkerSignals()
        self.current = task.task_id
        self.tell(protocol.Started(task.task_id, task.fence, task.timeout_s, task.retry_timeout,
                                   task.func_name))
        set_current_task(TaskContext(task.task_id, task.attempt, task.job_id, self.node_id,
                                     self.worker_id, task.func_name))
        if self.output is not None:
            self.output.start(task.task_id, task.attempt, task.job_id, task.func_name,
                              self.result_ttl_s)
        try:
            return self._execute(task)
        finally:
            self.current = ""
            signals.restore()     # a request that waited behind a blocked signal lands here
            if self.output is not None:
                self.output.finish()
            set_current_task(None)

    def _load(self, task: Claimed) -> tuple[Callable[..., Any], list[Any], dict[str, Any],
                                            bool | tuple[type, ...]]:
        """Verify, then import or unpickle: nothing read from Redis is used before its
        signature and the execution fields it binds check out (DESIGN invariant 10)."""
        bound, data = payload.open_args(task.args_blob, task.task_id)
        payload.check_execution_fields(task.task_id, bound, payload.execution_fields(
            task.fn, task.max_calls, task.timeout_s, task.retry_timeout, task.max_retries))
        fn = self.functions.get(task.fn)
        args, kwargs, retry_exceptions = payload.loads_args(data)
        return fn, args, kwargs, retry_exceptions

    def _execute(self, task: Claimed) -> Outcome:
        try:
            fn, args, kwargs, retry_exceptions = self._load(task)
        except Exception as e:  # noqa: BLE001 - cannot load: fails, never retried
            if isinstance(e, PayloadVerificationError):
                self._count("payload_rejected")
            return self._failed(task, e, f"{type(e).__name__}: {e}\n", False)
        try:
            dep_error = self._resolve(args, kwargs)
        except Exception as e:  # noqa: BLE001 - e.g. a corrupt dependency record
            return self._failed(task, e, f"{type(e).__name__}: {e}\n", False)
        if dep_error is not None:
            blob = payload.dependency_error(task.func_name, dep_error, self.pid, self.ip,
                                            task.task_id)
            return Outcome(task.task_id, task.fence, "err", blob, False,
                           "input argument failed: " + payload.error_summary(dep_error))
        self.calls[task.fn] = self.calls.get(task.fn, 0) + 1
        try:
            value = self._call(task, fn, args, kwargs)
        except TaskInterrupt as e:
            cause = TimeoutError(f"the task ran longer than its timeout_s={task.timeout_s}")
            trace = payload.format_traceback(e, USER_FRAMES_SKIP)
            blob = payload.pack_error(task.func_name, cause, trace, self.pid, self.ip,
                                      task.task_id, kind="TaskTimeoutError")
            return Outcome(task.task_id, task.fence, "err", blob, task.retry_timeout,
                           f"TaskTimeoutError: {cause}")
        except KeyboardInterrupt as e:
            self.cancelled.discard(task.task_id)
            trace = payload.format_traceback(e, USER_FRAMES_SKIP)
            blob = payload.pack_error(task.func_name, TaskCancelledError(task.task_id), trace,
                                      self.pid, self.ip, task.task_id)
            return Outcome(task.task_id, task.fence, "cancelled", blob, False,
                           "KeyboardInterrupt: task interrupted")
        except BaseException as e:  # noqa: BLE001 - every task error is the caller's to see
            return self._failed(task, e, payload.format_traceback(e, USER_FRAMES_SKIP),
                                exception_is_retryable(e, retry_exceptions))
        try:
            return Outcome(task.task_id, task.fence, "ok",
                           payload.pack_value(value, task.task_id), False, "")
        except FtqueueError as e:   # unpicklable or oversized: deterministic, not retried
            return self._failed(task, e, f"{type(e).__name__}: {e}\n", False)

    def _call(self, task: Claimed, fn: Callable[..., Any], args: list[Any],
              kwargs: dict[str, Any]) -> Any:
        """The task's own code, interruptible by cancel and timeout while it runs."""
        try:
            if task.task_id in self.cancelled:
                raise KeyboardInterrupt
            self.interruptible = True
            try:
                return fn(*args, **kwargs)
            finally:
                self.interruptible = False
        except SystemExit as e:
            # As in Ray, sys.exit() in a task ends the worker: a worker death, charged and
            # retried per max_retries (what finished before is already committed).
            os._exit(e.code if isinstance(e.code, int) and e.code else 1)

    def _failed(self, task: Claimed, exc: BaseException, traceback_text: str,
                retryable: bool) -> Outcome:
        blob = payload.pack_error(task.func_name, exc, traceback_text, self.pid, self.ip,
                                  task.task_id)
        return Outcome(task.task_id, task.fence, "err", blob, retryable,
                       payload.error_summary(exc))

    def _count(self, stat: str) -> None:
        try:
            self.store.incr_stat(stat)
        except Exception as e:  # noqa: BLE001 - a counter is not worth failing a task for
            log.debug("counting %s failed: %s", stat, describe(e))

    def _resolve(self, args: list[Any], kwargs: dict[str, Any]) -> BaseException | None:
        """Replace top-level ArgRefs by their values; return the first failed one's error."""
        slots: list[tuple[Any, Any]] = [(args, i) for i, a in enumerate(args)
                                        if isinstance(a, ArgRef)]
        slots += [(kwargs, k) for k, v in kwargs.items() if isinstance(v, ArgRef)]
        if not slots:
            return None
        ids = list(dict.fromkeys(c[k].object_id for c, k in slots))
        results = {}
        for object_id, (record, blob) in zip(ids, retry_across_outage(
                lambda: self.store.outcomes(ids))):
            if blob is None and record.get("state") == "FINISHED":
                results[object_id] = self._rebuilt(object_id)
            else:
                results[object_id] = payload.outcome_to_result(object_id, record, blob)
        for container, key in slots:
            ok, value = results[container[key].object_id]
            if not ok:
                return value  # type: ignore[no-any-return]
            container[key] = value
        return None

    def _rebuilt(self, object_id: str) -> tuple[bool, Any]:
        """An argument whose result was lost: rebuild it (the slot is lent while we wait)."""
        if self.rebuild is None:
            return False, FtqueueError(f"the result of {object_id} is lost and this worker "
                                       "cannot rebuild it")
        try:
            return True, self.rebuild(object_id)
        except Exception as e:  # noqa: BLE001 - the dependent fails with this as its cause
            return False, e

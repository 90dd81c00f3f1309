"""One task attempt inside a worker process: verify, load, resolve arguments, call, and turn
whatever happened into an `Outcome`. Interrupts (cancel, timeout) land only while the
task's own code runs."""

from __future__ import annotations

import asyncio
import contextlib
import inspect
import logging
import os
import signal
import socket
import threading
from collections.abc import AsyncIterator, Iterator
from typing import Any, Callable

from . import payload, protocol
from .context import TaskContext, set_current_task
from .exceptions import FtqueueError, PayloadVerificationError, TaskCancelledError
from .functions import FunctionCache
from .output import OutputCapture
from .policy import exception_is_retryable
from .spec import ArgRef, Outcome, item_id
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


class Streamed(int):
    """What a generator task returns: how many values it yielded (each stored already)."""


class AttemptLost(BaseException):
    """A value the task returned could not be stored: its attempt no longer holds the task
    (swept, cancelled, run elsewhere). The body stops; its outcome is fenced at commit."""


@contextlib.contextmanager
def task_env(env_vars: dict[str, str]) -> Iterator[None]:
    """`runtime_env={"env_vars": ...}`: set for this task only, restored after it."""
    if not env_vars:
        yield
        return
    before = {k: os.environ[k] if k in os.environ else None for k in env_vars}
    os.environ.update(env_vars)
    try:
        yield
    finally:
        for key, value in before.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value


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
        # Called as a started task's body is over, before its output is shipped (a write
        # that can wait on Redis): the worker tells its supervisor then if it is stopping.
        self.on_body_end: Callable[[], None] = lambda: None
        # An `async def` task runs in its own event loop: an interrupt cancels its asyncio
        # task (it sees CancelledError) instead of being raised into the loop's machinery.
        self._async: tuple[asyncio.AbstractEventLoop, asyncio.Task[Any]] | None = None
        self._async_interrupt: BaseException | None = None
        self.pid = os.getpid()
        self.ip = host_ip()

    def interrupt_for(self, message: protocol.SupervisorMessage) -> BaseException | None:
        """What to raise in the running task for a supervisor request, if anything."""
        if isinstance(message, protocol.Cancel):
            self.cancelled.add(message.task_id)
        if message.task_id != self.current or not self.interruptible:
            return None
        self.interruptible = False
        interrupt = KeyboardInterrupt() if isinstance(message, protocol.Cancel) \
            else TaskInterrupt()
        if self._async is not None:
            loop, main = self._async
            self._async_interrupt = interrupt
            loop.call_soon_threadsafe(main.cancel)
            return None
        return interrupt

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
                                     self.worker_id, task.func_name, task.gpu_ids))
        if self.output is not None:
            self.output.start(task.task_id, task.attempt, task.job_id, task.func_name,
                              self.result_ttl_s)
        try:
            return self._execute(task)
        finally:
            self.current = ""
            self.on_body_end()
            signals.restore()     # a request that waited behind a blocked signal lands here
            if self.output is not None:
                self.output.finish()
            set_current_task(None)

    def _load(self, task: Claimed) -> tuple[Callable[..., Any], payload.CallArgs]:
        """Verify, then import or unpickle: nothing read from Redis is used before its
        signature and the execution fields it binds check out (DESIGN invariant 10)."""
        bound, data = payload.open_args(task.args_blob, task.task_id)
        payload.check_execution_fields(task.task_id, bound, payload.execution_fields(
            task.fn, task.max_calls, task.timeout_s, task.retry_timeout, task.max_retries))
        fn = self.functions.get(task.fn)
        return fn, payload.loads_args(data)

    def _execute(self, task: Claimed) -> Outcome:
        try:
            fn, call = self._load(task)
        except Exception as e:  # noqa: BLE001 - cannot load: fails, never retried
            if isinstance(e, PayloadVerificationError):
                self._count("payload_rejected")
            return self._failed(task, e, f"{type(e).__name__}: {e}\n", False)
        try:
            dep_error = self._resolve(call.args, call.kwargs)
        except Exception as e:  # noqa: BLE001 - e.g. a corrupt dependency record
            return self._failed(task, e, f"{type(e).__name__}: {e}\n", False)
        if dep_error is not None:
            blob = payload.dependency_error(task.func_name, dep_error, self.pid, self.ip,
                                            task.task_id)
            return Outcome(task.task_id, task.fence, "err", blob, False,
                           "input argument failed: " + payload.error_summary(dep_error))
        self.calls[task.fn] = self.calls.get(task.fn, 0) + 1
        try:
            value = self._call(task, fn, call)
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
        except AttemptLost:
            return Outcome(task.task_id, task.fence, "err", b"", False,
                           "its attempt lost the task while it ran")
        except BaseException as e:  # noqa: BLE001 - every task error is the caller's to see
            return self._failed(task, e, payload.format_traceback(e, USER_FRAMES_SKIP),
                                exception_is_retryable(e, call.retry_exceptions))
        try:
            value = self._several_values(task, call.num_returns, value)
            return Outcome(task.task_id, task.fence, "ok",
                           payload.pack_value(value, task.task_id), False, "")
        except (FtqueueError, ValueError) as e:   # unpicklable, oversized, wrong count:
            return self._failed(task, e, f"{type(e).__name__}: {e}\n", False)  # not retried
        except AttemptLost:
            return Outcome(task.task_id, task.fence, "err", b"", False,
                           "its attempt lost the task while it ran")

    def _call(self, task: Claimed, fn: Callable[..., Any], call: payload.CallArgs) -> Any:
        """The task's own code, interruptible by cancel and timeout while it runs."""
        try:
            if task.task_id in self.cancelled:
                raise KeyboardInterrupt
            self.interruptible = True
            try:
                env = call.env_vars
                if task.gpu_ids:     # the GPUs it holds, as Ray sets them
                    env = {**env, "CUDA_VISIBLE_DEVICES": ",".join(task.gpu_ids)}
                with task_env(env):
                    if inspect.iscoroutinefunction(fn) or inspect.isasyncgenfunction(fn):
                        return self._run_async(task, fn(*call.args, **call.kwargs))
                    value = fn(*call.args, **call.kwargs)
                    if inspect.isgeneratorfunction(fn):   # as Ray: only a generator function
                        return self._stream(task, value)  # streams; a returned generator
                    return value                          # object is a value (unpicklable)
            finally:
                self.interruptible = False
        except SystemExit as e:
            # As in Ray, sys.exit() in a task ends the worker: a worker death, charged and
            # retried per max_retries (what finished before is already committed).
            os._exit(e.code if isinstance(e.code, int) and e.code else 1)

    def _run_async(self, task: Claimed, body: Any) -> Any:
        """An `async def` task (or async generator) in an event loop of its own."""
        loop = asyncio.new_event_loop()
        try:
            coro = self._stream_async(task, body) if inspect.isasyncgen(body) else body
            main = loop.create_task(coro)
            self._async_interrupt = None
            self._async = (loop, main)
            try:
                return loop.run_until_complete(main)
            except asyncio.CancelledError:
                if self._async_interrupt is not None:
                    raise self._async_interrupt from None
                raise
        finally:
            self._async = None
            try:
                loop.run_until_complete(loop.shutdown_asyncgens())
            finally:
                loop.close()

    def _stream(self, task: Claimed, values: Iterator[Any]) -> Streamed:
        """A generator task: each value is stored and its consumer told as it is yielded;
        the task's own result is how many there were."""
        count = 0
        for value in values:
            self._store_values(task, [(count, value)], tell=True)
            count += 1
        return Streamed(count)

    async def _stream_async(self, task: Claimed, values: AsyncIterator[Any]) -> Streamed:
        count = 0
        async for value in values:
            self._store_values(task, [(count, value)], tell=True)
            count += 1
        return Streamed(count)

    def _several_values(self, task: Claimed, num_returns: int | str, value: Any) -> Any:
        """num_returns=N: the N values are stored one by one (`<task>#<i>`), the task's own
        result is N. A generator's values are stored already."""
        if isinstance(value, Streamed):
            if isinstance(num_returns, int) and num_returns > 1 and value != num_returns:
                raise ValueError(f"Task returned {int(value)} objects, but num_returns="
                                 f"{num_returns}.")
            return int(value)
        if not isinstance(num_returns, int) or num_returns == 1:
            return value
        if not isinstance(value, (list, tuple)):
            raise ValueError(f"Task returned a {type(value).__name__}, but num_returns="
                             f"{num_returns}: return a tuple or list of {num_returns} values")
        if len(value) != num_returns:
            raise ValueError(f"Task returned {len(value)} objects, but num_returns="
                             f"{num_returns}.")
        self._store_values(task, list(enumerate(value)), tell=False)
        return num_returns

    def _store_values(self, task: Claimed, values: list[tuple[int, Any]], tell: bool) -> None:
        blobs = [(i, payload.pack_value(v, item_id(task.task_id, i))) for i, v in values]
        answer = retry_across_outage(
            lambda: self.store.stream(task.task_id, task.fence, blobs, tell))
        if answer in ("fenced", "corrupt"):
            raise AttemptLost(answer)

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
            if blob is None and record and record.get("state") != "FAILED":
                # Lost (FINISHED, no result), or being rebuilt already because another
                # reader found it lost first (not final again): wait for its new value.
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

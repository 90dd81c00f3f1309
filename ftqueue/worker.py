"""A worker process: a thin loop around `step()` that claims, runs and commits tasks.

It is always the child of a node supervisor and tells it through a pipe (see protocol.py)
which tasks it holds, which one runs, when a body ended and when outcomes are settled in
Redis, so the supervisor can fail exactly the right attempt if this process dies, renew the
right leases, and lend the slot of a worker blocked in `get`.
"""

from __future__ import annotations

import logging
import os
import signal
import socket
import sys
import threading
import time
from collections import deque
from typing import Any, BinaryIO, Callable, Sequence

from . import payload, protocol
from .commits import CommitBatcher
from .context import TaskContext, set_current_task
from .exceptions import FtqueueError, PayloadVerificationError, TaskCancelledError
from .functions import FunctionCache
from .logs import LogOnce
from .output import OutputCapture
from .policy import EXIT_RECYCLE, exception_is_retryable
from .settings import NodeSettings, retention_from_env
from .spec import ArgRef, Outcome
from .store import Claimed, Store, describe, is_transient, retry_across_outage

log = logging.getLogger("ftqueue.worker")

BELL_WAIT_S = 1.0
IDLE_ERROR_PAUSE_S = 1.0


def host_ip() -> str:
    try:
        return socket.gethostbyname(socket.gethostname())
    except OSError:
        return "127.0.0.1"


class TaskInterrupt(BaseException):
    """Raised inside a task that ran past its timeout_s (a BaseException, so a task's
    `except Exception:` does not swallow it)."""


class Worker:
    def __init__(self, settings: NodeSettings, node_id: str, worker_id: str,
                 control: BinaryIO, store: Store, inbox_fd: int | None = None,
                 rebuild: Callable[[str], Any] | None = None) -> None:
        self.settings = settings
        self.node_id = node_id
        self.worker_id = worker_id
        self.control = control
        self.store = store
        self.functions = FunctionCache(store)
        self.commits = CommitBatcher(store, worker_id,
                                     lambda ids: self.tell(protocol.Settled(tuple(ids))))
        self.local: deque[Claimed] = deque()
        self.calls: dict[str, int] = {}
        self.claimed_at = 0.0
        self.inbox_fd = inbox_fd
        self.inbox = protocol.LineBuffer()
        self.current = ""
        self.interruptible = False
        self.cancelled: set[str] = set()
        self.output: OutputCapture | None = None
        self.rebuild = rebuild        # get() of a lost argument: the runtime's, injected
        self.result_ttl_s = retention_from_env()[0]
        self.stopping = False
        self.pid = os.getpid()
        self.ip = host_ip()
        self.lease_timeout_ms = int(settings.lease_timeout_s * 1000)
        self._once = LogOnce(log)

    def tell(self, message: protocol.WorkerMessage) -> None:
        try:
            self.control.write(protocol.encode(message))
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
            self.commits.flush()
            if self.stopping:
                return 0
            claimed = self._claim()
            if not claimed:
                self._wait_for_work()
                return None
            self.local.extend(claimed)
            self.claimed_at = time.monotonic()
            self.tell(protocol.Held(tuple(t.task_id for t in claimed)))
        elif time.monotonic() - self.claimed_at > self.settings.lease_timeout_s:
            # We were frozen or starved past our lease: the reaper has most likely handed
            # these prefetched tasks to others. Give back whatever is still ours.
            self._release_prefetched("prefetch outlived its lease")
            return None
        task = self.local.popleft()
        # What finished before is in Redis before this task starts (DESIGN invariant 8).
        self.commits.flush(next_task_id=task.task_id)
        if task.task_id in self.cancelled:
            self.cancelled.discard(task.task_id)
            self.commits.add(Outcome(task.task_id, task.fence, "cancelled", b"", False,
                                     "cancelled before it started"))
        else:
            self.commits.add(self.execute(task))
        if not self.local:
            self.commits.flush()
        return self._exit_code_after(task)

    def _exit_code_after(self, task: Claimed) -> int | None:
        if task.max_calls and self.calls.get(task.fn, 0) >= task.max_calls:
            return self.leave(EXIT_RECYCLE)
        if self.stopping:
            return self.leave(0)
        if self.over_memory():
            return self.leave(EXIT_RECYCLE)
        if self.output is not None and self.output.stdio_closed:
            log.warning("worker process %d: a task closed its stdout/stderr; recycling "
                        "this worker", self.pid)
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
        data = b""
        try:
            while self.inbox_fd is not None:
                chunk = os.read(self.inbox_fd, 65536)
                if not chunk:
                    break
                data += chunk
        except BlockingIOError:
            pass
        interrupt: BaseException | None = None
        for line in self.inbox.feed(data):
            try:
                message = protocol.decode_supervisor(line)
            except protocol.ProtocolError:
                continue
            if isinstance(message, protocol.Cancel):
                self.cancelled.add(message.task_id)
            if message.task_id == self.current and self.interruptible:
                interrupt = (KeyboardInterrupt() if isinstance(message, protocol.Cancel)
                             else TaskInterrupt())
        if interrupt is not None:
            self.interruptible = False
            raise interrupt

    def leave(self, code: int) -> int:
        """Commit what is done and hand prefetched tasks back before exiting on purpose."""
        self.commits.flush()
        if self.local:
            self._release_prefetched("worker exited on purpose before starting it")
        return code

    def _release_prefetched(self, reason: str) -> None:
        self.commits.flush()
        self._retry_redis(lambda: self.store.worker_lost(
            self.node_id, self.worker_id, "", "WORKER_DIED", reason, charge=False))
        self.tell(protocol.Settled(tuple(t.task_id for t in self.local)))
        self.local.clear()

    def _claim(self) -> list[Claimed]:
        try:
            claimed = self.store.claim(self.node_id, self.worker_id, self.settings.queues,
                                       self.settings.prefetch, 8, self.lease_timeout_ms)
            self._once.clear("claim", "claiming works again")
            return claimed
        except Exception as e:  # noqa: BLE001 - classified: a worker never dies of Redis
            if is_transient(e):
                # The claim may have run with its reply lost: hand back anything it took.
                self._retry_redis(lambda: self.store.worker_lost(
                    self.node_id, self.worker_id, "", "WORKER_DIED", "claim reply lost",
                    charge=False))
            else:
                self._once.start("claim", f"claiming failed ({describe(e)}); retrying",
                                 logging.ERROR)
                time.sleep(IDLE_ERROR_PAUSE_S)
            return []

    def _wait_for_work(self) -> None:
        try:
            self.store.wait_for_bell(self.settings.queues, BELL_WAIT_S)
        except Exception as e:  # noqa: BLE001 - a bell is a hint; poll instead
            if not is_transient(e):
                self._once.start("bell", f"waiting for work failed ({describe(e)}); polling",
                                 logging.ERROR)
            time.sleep(0.5)

    def _retry_redis(self, step: Callable[[], Any]) -> Any:
        return retry_across_outage(step)

    # -- one task -----------------------------------------------------------------------------

    def execute(self, task: Claimed) -> Outcome:
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
            if self.output is not None:
                self.output.finish()
            self.current = ""
            set_current_task(None)
            self.tell(protocol.Ended())

    def _load(self, task: Claimed) -> tuple[Callable[..., Any], list[Any], dict[str, Any],
                                            bool | tuple[type, ...]]:
        """Verify, then import or unpickle: nothing read from Redis is used before its
        signature and the execution fields it binds check out."""
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
            blob = payload.pack_error(task.func_name, cause, payload.format_traceback(e, 1),
                                      self.pid, self.ip, task.task_id, kind="TaskTimeoutError")
            return Outcome(task.task_id, task.fence, "err", blob, task.retry_timeout,
                           f"TaskTimeoutError: {cause}")
        except KeyboardInterrupt as e:
            self.cancelled.discard(task.task_id)
            blob = payload.pack_error(task.func_name, TaskCancelledError(task.task_id),
                                      payload.format_traceback(e, 1), self.pid, self.ip,
                                      task.task_id)
            return Outcome(task.task_id, task.fence, "cancelled", blob, False,
                           "KeyboardInterrupt: task interrupted")
        except BaseException as e:  # noqa: BLE001 - every task error is the caller's to see
            return self._failed(task, e, payload.format_traceback(e, 1),
                                exception_is_retryable(e, retry_exceptions))
        try:
            return Outcome(task.task_id, task.fence, "ok", payload.pack_value(value, task.task_id),
                           False, "")
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
        for object_id, (record, blob) in zip(ids, self._retry_redis(
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


def _watch_parent(parent_pid: int) -> None:
    while True:
        if os.getppid() != parent_pid:
            os._exit(1)
        time.sleep(0.5)


def _read_settings(fd: int) -> NodeSettings:
    """The node's settings come through an inherited pipe, never argv: the Redis address
    may hold a password, and every user can read every process's command line."""
    import json

    chunks = []
    with os.fdopen(fd, "rb") as f:
        while True:
            chunk = f.read(65536)
            if not chunk:
                break
            chunks.append(chunk)
    raw = json.loads(b"".join(chunks))
    raw["queues"] = tuple(raw["queues"])
    return NodeSettings(**raw)


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of a worker process (started by the supervisor, never by hand)."""
    import argparse

    from .api import _attach_worker_client, get
    from .embedded import set_parent_death_signal
    from .logs import setup_console
    from .spec import ObjectRef
    from .store import connect

    parser = argparse.ArgumentParser(prog="ftqueue-worker-process")
    parser.add_argument("--settings-fd", type=int, required=True)
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
    setup_console(f"ftqueue worker {os.getpid()}")

    settings = _read_settings(ns.settings_fd)
    control = os.fdopen(ns.control_fd, "wb", buffering=0)
    store = Store(connect(settings.address), settings.namespace)
    if ns.inbox_fd is not None:
        os.set_blocking(ns.inbox_fd, False)
    worker = Worker(settings, ns.node_id, ns.worker_id, control, store, ns.inbox_fd,
                    rebuild=lambda object_id: get(ObjectRef(object_id)))
    signal.signal(signal.SIGUSR1, worker.on_inbox)
    worker.output = OutputCapture(store, copy=settings.copy_task_output)

    def on_term(signum: int, frame: Any) -> None:
        worker.stopping = True

    signal.signal(signal.SIGTERM, on_term)
    _attach_worker_client(settings.address, settings.namespace,
                          lambda blocked: worker.tell(protocol.Blocked(blocked)))
    return worker.run()


if __name__ == "__main__":
    sys.exit(main())

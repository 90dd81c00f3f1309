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
import sys
import threading
import time
from collections import deque
from typing import Any, BinaryIO, Callable, Sequence

from . import protocol
from .commits import CommitBatcher
from .logs import LogOnce
from .output import OutputCapture
from .policy import EXIT_RECYCLE
from .runner import TaskRunner
from .settings import NodeSettings
from .shapes import ShapeChooser
from .store import Claimed, Store, describe, is_transient, retry_across_outage

log = logging.getLogger("ftqueue.worker")

BELL_WAIT_S = 1.0
MIN_WAIT_S = 0.001     # Redis's blocking timeout resolution; 0 would mean "forever"
REDIS_TIMER_S = 0.1    # how late Redis may end a blocking wait (one tick at hz 10)
DUE_POLL_S = 0.01
IDLE_ERROR_PAUSE_S = 1.0


class Worker:
    def __init__(self, settings: NodeSettings, node_id: str, worker_id: str,
                 control: BinaryIO, store: Store, inbox_fd: int | None = None,
                 rebuild: Callable[[str], Any] | None = None) -> None:
        self.settings = settings
        self.node_id = node_id
        self.worker_id = worker_id
        self.control = control
        self.store = store
        self._outbox: list[protocol.WorkerMessage] = []
        self._tell_lock = threading.Lock()
        self.shapes = ShapeChooser(dict(settings.resources), settings.queues, store.shapes)
        self.commits = CommitBatcher(store, worker_id,
                                     lambda ids: self.later(protocol.Settled(tuple(ids))),
                                     on_stalled=lambda: self.tell(protocol.Ended()))
        self.runner = TaskRunner(store, node_id, worker_id, self.tell,
                                 settings.result_ttl_s, rebuild, settings.import_allow)
        # Stopping, a worker says at once that a task's body is over: the node's grace
        # period may run out while its output and outcome wait on a frozen Redis, and a
        # worker still seen running then is killed, handing the finished task back.
        self.runner.on_body_end = self._say_body_ended
        self.local: deque[Claimed] = deque()
        self.claimed_at = 0.0
        self.inbox_fd = inbox_fd
        self.inbox = protocol.LineBuffer()
        self.stopping = False
        self.body_over = False      # the current task's body ended (its outcome may not be in)
        self.pid = os.getpid()
        self.lease_timeout_ms = int(settings.lease_timeout_s * 1000)
        self._next_due_s: float | None = None
        self._once = LogOnce(log)

    def later(self, message: protocol.WorkerMessage) -> None:
        """Say this with the next line that must go now (one write per task, not three)."""
        with self._tell_lock:
            self._outbox.append(message)

    def tell(self, message: protocol.WorkerMessage | None = None, *,
             wait: bool = True) -> None:
        """Send what waits in the outbox, and `message`, now. Not `wait`ing (from a signal
        handler), only if no line is being written now (it would be cut)."""
        # A task's own threads may block in get (B/U) meanwhile.
        if not self._tell_lock.acquire(blocking=wait):
            return
        try:
            lines = self._outbox + ([message] if message is not None else [])
            self._outbox = []
            if not lines:
                return
            try:
                self.control.write(b"".join(protocol.encode(m) for m in lines))
                self.control.flush()
            except (OSError, ValueError):
                os._exit(1)  # the supervisor is gone: so must we be
        finally:
            self._tell_lock.release()

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
                self._wait_for_work(self._next_due_s)
                return None
            self.local.extend(claimed)
            self.claimed_at = time.monotonic()
            self.later(protocol.Held(tuple(t.task_id for t in claimed)))
        elif time.monotonic() - self.claimed_at > self.settings.lease_timeout_s:
            # We were frozen or starved past our lease: the reaper has most likely handed
            # these prefetched tasks to others. Give back whatever is still ours.
            self._release_prefetched("prefetch outlived its lease")
            return None
        task = self.local.popleft()
        # What finished before is in Redis before this task starts (DESIGN invariant 8).
        self.commits.flush(next_task_id=task.task_id, next_fence=task.fence)
        if not self.commits.next_held:
            # Swept while this process was frozen, and perhaps running elsewhere under the
            # same attempt number: starting it here would run it twice.
            log.warning("task %s is no longer held by this worker; not starting it",
                        task.task_id)
            self.tell(protocol.Settled((task.task_id,)))
            return None
        self.body_over = False
        self.commits.add(self.runner.run(task))
        if not self.local:
            self.commits.flush()
            self.tell()
        return self._exit_code_after(task)

    def _exit_code_after(self, task: Claimed) -> int | None:
        if task.max_calls and self.runner.calls.get(task.fn, 0) >= task.max_calls:
            return self.leave(EXIT_RECYCLE)
        if self.stopping:
            return self.leave(0)
        if self.over_memory():
            return self.leave(EXIT_RECYCLE)
        output = self.runner.output
        if output is not None and output.stdio_closed:
            log.warning("worker process %d: a task closed its stdout/stderr; recycling "
                        "this worker", self.pid)
            return self.leave(EXIT_RECYCLE)
        return None

    def _say_body_ended(self) -> None:
        self.body_over = True
        if self.stopping:
            self.tell(protocol.Ended())

    def on_stop(self) -> None:
        """SIGTERM: stop after this task. One that came after the body ended, while its
        output and outcome wait on Redis, says so now: the node's grace period may run out
        before they are in, and a worker still seen running then is killed, which hands the
        finished task back. From a signal handler, so only if the pipe is free; the
        commit's stall says it otherwise."""
        self.stopping = True
        if self.body_over:
            self.tell(protocol.Ended(), wait=False)

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

    def on_block(self, blocked: bool) -> None:
        """The running task waits in get (or goes on): its CPUs and its max_concurrency slot
        are lent meanwhile (before the supervisor starts a stand-in worker, which may need
        them)."""
        if self.runner.current:
            task_id = self.runner.current
            try:
                # Idempotent (the task's 'lent' flag), so a lost reply or a blip is tried
                # again: a lend lost, the task it waits for might never fit on this node.
                retry_across_outage(lambda: self.store.lend(task_id, blocked),
                                    deadline=time.monotonic() + self.settings.lease_timeout_s)
            except Exception as e:  # noqa: BLE001 - tried for a lease; the task goes on
                log.debug("lending the CPUs and slot of %s failed: %s", task_id, describe(e))
        self.tell(protocol.Blocked(blocked))

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
            interrupt = self.runner.interrupt_for(message) or interrupt
        if interrupt is not None:
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
            claimed, due_in_ms = self.store.claim_due(
                self.node_id, self.worker_id, self.settings.queues, self.settings.prefetch, 8,
                self.lease_timeout_ms, self.shapes.for_claim())
            self._next_due_s = None if due_in_ms is None else due_in_ms / 1000
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

    def _wait_for_work(self, next_due_s: float | None = None) -> None:
        """Sleep until a bell rings, or until the next DELAYED task is due (the claim that
        found nothing promotes it then)."""
        wait_s = BELL_WAIT_S if next_due_s is None else min(BELL_WAIT_S, next_due_s)
        if wait_s < MIN_WAIT_S:
            return      # due now (more than one claim's batch was due): claim again
        try:
            # Its node's bell rings when room it lacked for a task frees up.
            bells = [*self.settings.queues, "@" + self.node_id]
            if next_due_s is None or next_due_s > BELL_WAIT_S + REDIS_TIMER_S:
                self.store.wait_for_bell(bells, wait_s)
            elif wait_s > REDIS_TIMER_S:
                # Redis ends a blocking wait up to one timer tick (100 ms at its default
                # hz 10) late: wake a tick early, by the due time at the latest.
                self.store.wait_for_bell(bells, wait_s - REDIS_TIMER_S)
            else:
                # The last tick before a due task: listen for bells without blocking, so
                # the task starts on time (bounded: a few polls per due task).
                deadline = time.monotonic() + wait_s
                while not self.store.take_bell(bells):
                    left = deadline - time.monotonic()
                    if left <= 0:
                        return
                    time.sleep(min(DUE_POLL_S, left))
        except Exception as e:  # noqa: BLE001 - a bell is a hint; poll instead
            if not is_transient(e):
                self._once.start("bell", f"waiting for work failed ({describe(e)}); polling",
                                 logging.ERROR)
            time.sleep(0.5)

    def _retry_redis(self, step: Callable[[], Any]) -> Any:
        return retry_across_outage(step)

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
    raw["import_allow"] = tuple(raw["import_allow"])
    raw["resources"] = tuple((name, int(units)) for name, units in raw["resources"])
    raw["gpu_ids"] = tuple(raw["gpu_ids"])
    return NodeSettings(**raw)


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of a worker process (started by the supervisor, never by hand)."""
    import argparse

    from .api import _attach_worker_client, flush_submissions, get
    from .embedded import set_parent_death_signal
    from .logs import setup_console
    from .settings import Settings
    from .spec import ObjectRef
    from .store import connect_patiently

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
    # Its first PING's reply may be lost like any other: a blip is no reason to die.
    store = Store(connect_patiently(settings.address, Settings.from_env().startup_wait_s),
                  settings.namespace)
    if ns.inbox_fd is not None:
        os.set_blocking(ns.inbox_fd, False)
    worker = Worker(settings, ns.node_id, ns.worker_id, control, store, ns.inbox_fd,
                    rebuild=lambda object_id: get(ObjectRef(object_id)))
    signal.signal(signal.SIGUSR1, worker.on_inbox)
    worker.runner.output = OutputCapture(store, copy=settings.copy_task_output,
                                         max_bytes=settings.log_max_bytes)

    def on_term(signum: int, frame: Any) -> None:
        worker.on_stop()

    signal.signal(signal.SIGTERM, on_term)
    _attach_worker_client(settings.address, settings.namespace, worker.on_block)
    code = worker.run()
    # What tasks submitted and is still buffered (a burst of `.remote()` returns before it is
    # sent) goes to Redis before this process exits (max_calls, a GPU task, a recycle, a
    # stop), so none is lost with it. After the outcomes are committed, so no task waits on
    # it (a timeout enforced meanwhile would re-run a finished task).
    try:
        flush_submissions()
    except Exception as e:  # noqa: BLE001 - a refused submission is its getter's error
        log.warning("sending the tasks a task submitted failed: %s", describe(e))
    # Everything is committed or handed back: leave now. The interpreter's own exit would
    # wait for any non-daemon thread a task left running, and hold the node's slot (and the
    # memory a recycle is meant to free) for as long as that thread lives.
    logging.shutdown()
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except (OSError, ValueError):
            pass
    os._exit(code)


if __name__ == "__main__":
    sys.exit(main())

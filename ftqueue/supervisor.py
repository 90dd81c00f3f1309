"""The node supervisor: the watchdog that owns N long-running worker processes.

It spawns them, learns from each one's pipe which task it runs, sees a death at once (the
pipe closes; the child is reaped), fails exactly that attempt through the same atomic step
the reaper uses, and starts a replacement. It keeps the node's heartbeat and renews its
leases (from this process, so task code that holds the GIL cannot starve them), sweeps
the cluster for expired leases, and lends the slot of a worker blocked in `get`.
"""

from __future__ import annotations

import dataclasses
import json
import os
import select
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass, field
from enum import Enum
from typing import Any, Callable

import psutil

from .settings import MEMORY_CHECK_INTERVAL_S, NodeSettings, retention_from_env
from .spec import ErrorType, new_id
from .store import Store, backoff, connect, is_connection_error
from .worker import EXIT_RECYCLE

TICK_S = 0.1
CANCEL_POLL_S = 0.1
MESSAGE_BATCH_S = 0.005      # a running task hears of its cancel within this (plus a signal)
CRASH_WINDOW_S = 10.0
CRASH_LOOP_LIMIT = 10
CRASH_LOOP_DELAY_S = 1.0


class Restart(str, Enum):
    RESPAWN = "respawn"          # replace it now
    RESPAWN_LATER = "later"      # crash loop: replace it after a pause
    NONE = "none"                # it was asked to leave


@dataclass(frozen=True)
class Exit:
    """How a worker ended, as the supervisor saw it."""

    returncode: int
    stop_requested: bool
    temporary: bool

    @property
    def on_purpose(self) -> bool:
        return self.returncode == EXIT_RECYCLE or (self.returncode == 0 and self.stop_requested)

    def describe(self, pid: int) -> str:
        if self.returncode < 0:
            try:
                name = signal.Signals(-self.returncode).name
            except ValueError:
                name = str(-self.returncode)
            return f"worker process {pid} died: killed by signal {name}"
        return f"worker process {pid} died: exit code {self.returncode}"


def node_memory() -> tuple[int, int]:
    """(used, total) bytes of this container (cgroup v2 limit) or else of the host."""
    try:
        with open("/sys/fs/cgroup/memory.max") as f:
            limit = f.read().strip()
        if limit != "max":
            with open("/sys/fs/cgroup/memory.current") as f:
                return int(f.read()), int(limit)
    except (OSError, ValueError):
        pass
    vm = psutil.virtual_memory()
    return vm.total - vm.available, vm.total


def pick_oom_victim(handles: list[WorkerHandle]) -> WorkerHandle | None:
    """As Ray's memory monitor: the worker whose task started last."""
    busy = [h for h in handles if h.running and not h.kill_reason]
    return max(busy, key=lambda h: h.task_started) if busy else None


def decide_restart(exit: Exit, node_stopping: bool, recent_crashes: int) -> Restart:
    """Pure: what to do after a worker exits."""
    if node_stopping or exit.stop_requested or exit.temporary:
        return Restart.NONE
    if not exit.on_purpose and recent_crashes >= CRASH_LOOP_LIMIT:
        return Restart.RESPAWN_LATER
    return Restart.RESPAWN


@dataclass
class WorkerHandle:
    worker_id: str
    process: subprocess.Popen
    control: int                 # we read what it tells us here
    inbox: int = -1              # we write requests here, then send SIGUSR1
    temporary: bool = False
    running: str = ""
    fence: str = ""
    func_name: str = ""
    timeout_s: float | None = None
    retry_timeout: bool = False
    task_started: float = 0.0
    interrupted_at: float = 0.0
    kill_reason: str = ""        # why we killed it: "cancel", "timeout", "oom", "recycle"
    kill_detail: str = ""
    blocked: bool = False
    stop_requested: bool = False
    tasks_run: int = 0
    held: set[str] = field(default_factory=set)   # claimed and not yet committed or released
    on_task_end: Callable[[float], None] | None = None
    buffer: bytes = b""
    started: float = field(default_factory=time.monotonic)

    def hear(self, line: bytes) -> None:
        """One line from the worker's pipe."""
        if line.startswith(b"S "):
            parts = line[2:].decode().split()
            self.running = parts[0]
            self.fence = parts[1] if len(parts) > 1 else ""
            self.timeout_s = float(parts[2]) if len(parts) > 2 and parts[2] != "-" else None
            self.retry_timeout = len(parts) > 3 and parts[3] == "1"
            self.func_name = parts[4] if len(parts) > 4 else ""
            self.task_started = time.monotonic()
            self.interrupted_at = 0.0
            self.tasks_run += 1
        elif line == b"E":
            if self.running and self.on_task_end is not None:
                self.on_task_end(time.monotonic() - self.task_started)
            self.running = ""
        elif line.startswith(b"H "):
            self.held.update(line[2:].decode().split())
        elif line.startswith(b"D "):
            self.held.difference_update(line[2:].decode().split())
        elif line == b"B":
            self.blocked = True
        elif line == b"U":
            self.blocked = False


class Supervisor:
    def __init__(self, settings: NodeSettings, *, node_id: str | None = None,
                 parent_pid: int | None = None, metrics_port: int | None = None,
                 health_file: str | None = None,
                 log: Callable[[str], None] | None = None) -> None:
        self.settings = settings
        self.node_id = node_id or new_id()[:16]
        self.parent_pid = parent_pid
        self.store = Store(connect(settings.address), settings.namespace)
        self.keys = self.store.keys
        self.workers: dict[int, WorkerHandle] = {}   # by control fd
        self.stopping = False
        self.stop_deadline = 0.0
        self.crash_times: list[float] = []
        self.respawn_at: list[float] = []
        self.lease_timeout_ms = int(settings.lease_timeout_s * 1000)
        self.next_renew = 0.0
        self.next_sweep = 0.0
        self.next_memory_check = 0.0
        self.next_cancel_poll = 0.0
        self.epoch = ""
        self.index_ttl_ms = retention_from_env()[1] * 1000
        self.redis_down_since: float | None = None
        self.log = log or (lambda msg: print(f"ftqueue node {self.node_id}: {msg}",
                                             file=sys.stderr, flush=True))
        self.health_file = health_file
        self.metrics = None
        if metrics_port is not None:
            from .metrics import NodeMetrics

            self.metrics = NodeMetrics(self, metrics_port)

    # -- lifecycle ----------------------------------------------------------------------------

    def register(self) -> None:
        self.store.redis.hset(self.keys.node(self.node_id), mapping={
            "node_id": self.node_id, "host": socket.gethostname(), "pid": os.getpid(),
            "num_workers": self.settings.num_workers, "queues": ",".join(self.settings.queues),
            "started_ms": self.store.clock_ms(), "state": "ALIVE",
            "lease_timeout_s": self.settings.lease_timeout_s,
        })
        self.store.redis.zadd(self.keys.node_index, {self.node_id: self.store.clock_ms()})
        self.epoch = self.store.ensure_epoch()
        self.store.renew(self.node_id, self.lease_timeout_ms)

    def request_stop(self, *_: Any) -> None:
        if not self.stopping:
            self.stopping = True
            self.stop_deadline = time.monotonic() + self.settings.grace_period_s
            for handle in self.workers.values():
                self._ask_to_stop(handle)

    def run(self) -> int:
        signal.signal(signal.SIGTERM, self.request_stop)
        signal.signal(signal.SIGINT, self.request_stop)
        self.register()
        for _ in range(self.settings.num_workers):
            self.spawn()
        try:
            while self.workers or not self.stopping:
                self.step(TICK_S)
        finally:
            self.shutdown()
        return 0

    def shutdown(self) -> None:
        for handle in list(self.workers.values()):
            self._kill(handle)
        try:
            self.store.redis.hset(self.keys.node(self.node_id), mapping={
                "state": "DEAD", "end_ms": self.store.clock_ms()})
            self.store.redis.zrem(self.keys.nodes, self.node_id)
            self.store.redis.expire(self.keys.node(self.node_id), 86400)
        except Exception:  # noqa: BLE001 - Redis may be gone; the reaper covers us
            pass

    # -- one step -----------------------------------------------------------------------------

    def step(self, timeout: float) -> None:
        fds = list(self.workers)
        try:
            readable, _, _ = select.select(fds, [], [], timeout) if fds else ([], [], [])
        except InterruptedError:
            readable = []
        if not fds:
            time.sleep(timeout)
        for fd in readable:
            self._read_control(self.workers[fd])
        self._reap()
        self._keep_workers()
        self._tick()
        if self.parent_pid is not None and os.getppid() != self.parent_pid:
            self.request_stop()
            self.stop_deadline = 0.0
        if self.stopping and time.monotonic() >= self.stop_deadline:
            for handle in list(self.workers.values()):
                self._kill(handle)
        if readable and not self.stopping:
            # Workers write a few lines per task; reading them in batches keeps this
            # process from taking a core under load, for a few ms of extra detection time.
            time.sleep(MESSAGE_BATCH_S)

    def _read_control(self, handle: WorkerHandle) -> None:
        try:
            data = os.read(handle.control, 65536)
        except OSError:
            data = b""
        if not data:
            self._reap(handle, wait=True)
            return
        handle.buffer += data
        *lines, handle.buffer = handle.buffer.split(b"\n")
        for line in lines:
            handle.hear(line)

    def _reap(self, only: WorkerHandle | None = None, wait: bool = False) -> None:
        for handle in [only] if only else list(self.workers.values()):
            if wait:
                try:
                    handle.process.wait(1.0)
                except subprocess.TimeoutExpired:
                    pass  # closed its pipe but lives on (it forked?): the poll finds it later
            if handle.process.poll() is not None:
                self._on_exit(handle)

    def _on_exit(self, handle: WorkerHandle) -> None:
        if self.workers.pop(handle.control, None) is None:
            return
        try:  # drain what it said last (its final "S <id>" matters)
            while True:
                data = os.read(handle.control, 65536)
                if not data:
                    break
                handle.buffer += data
                *lines, handle.buffer = handle.buffer.split(b"\n")
                for line in lines:
                    handle.hear(line)
        except OSError:
            pass
        os.close(handle.control)
        if handle.inbox >= 0:
            os.close(handle.inbox)
        exit = Exit(handle.process.returncode,
                    handle.stop_requested or self.stopping or bool(handle.kill_reason),
                    handle.temporary)
        now = time.monotonic()
        if not exit.on_purpose:
            self.crash_times = [t for t in self.crash_times if now - t < CRASH_WINDOW_S] + [now]
        pid = handle.process.pid
        if handle.kill_reason == "timeout" and handle.running:
            self._redis(lambda: self.store.commit([self._timeout_outcome(handle)]))
        if handle.kill_reason == "oom":
            charge, error_type, message = True, ErrorType.OUT_OF_MEMORY.value, handle.kill_detail
            self.log(message)
        elif handle.kill_reason or exit.on_purpose or (self.stopping and exit.stop_requested):
            charge, error_type, message = False, ErrorType.WORKER_DIED.value, \
                f"worker process {pid} stopped on purpose; retry not charged"
        else:
            charge, error_type, message = True, ErrorType.WORKER_DIED.value, exit.describe(pid)
            self.log(message + (f" while running task {handle.running}" if handle.running else ""))
        self._redis(lambda: self.store.worker_lost(self.node_id, handle.worker_id, handle.running,
                                                   error_type, message, charge))
        self._redis(lambda: self.store.redis.hset(self.keys.worker(handle.worker_id), mapping={
            "state": "DEAD", "exit": exit.describe(pid) if not exit.on_purpose else "stopped",
            "end_ms": self.store.clock_ms()}))
        self._redis(lambda: self.store.redis.expire(self.keys.worker(handle.worker_id), 3600))
        decision = decide_restart(exit, self.stopping, len(self.crash_times))
        if decision is Restart.RESPAWN_LATER:
            self.respawn_at.append(now + CRASH_LOOP_DELAY_S)

    def _keep_workers(self) -> None:
        """Replace lost workers, and lend the slot of each worker blocked in `get` to a
        temporary one (so nested tasks cannot deadlock the node); retire spare temporaries."""
        if self.stopping:
            return
        now = time.monotonic()
        self.respawn_at = [t for t in self.respawn_at if t > now]
        target = self.settings.num_workers - len(self.respawn_at)
        live = [h for h in self.workers.values() if not h.stop_requested]
        for _ in range(target - sum(1 for h in live if not h.temporary)):
            live.append(self.spawn())
        active = [h for h in live if not h.blocked]
        for _ in range(target - len(active)):
            active.append(self.spawn(temporary=True))
        spare = [h for h in active if h.temporary and not h.running]
        for handle in spare[:max(0, len(active) - target)]:
            self._ask_to_stop(handle)

    def _tick(self) -> None:
        now = time.monotonic()
        if now >= self.next_renew:
            self.next_renew = now + self.settings.renew_interval_s
            if self._redis(self.store.ensure_epoch, once=True) not in (None, self.epoch):
                self.log("Redis lost its data (a new epoch): registering this node again")
                self._redis(self.register, once=True)
            running = [h.running for h in self.workers.values() if h.running]
            held = [t for h in self.workers.values() for t in h.held]
            self._redis(lambda: self.store.renew(self.node_id, self.lease_timeout_ms, running,
                                                 held), once=True)
            self._redis(self._publish_workers, once=True)
            if self.health_file:
                self._write_health()
        if now >= self.next_sweep:
            self.next_sweep = now + max(self.settings.renew_interval_s, 0.5)
            self._redis(lambda: self.store.sweep(self.lease_timeout_ms,
                                                 index_ttl_ms=self.index_ttl_ms), once=True)
        if now >= self.next_cancel_poll:
            # A timer, not every step: steps also run for every line a worker writes.
            self.next_cancel_poll = now + CANCEL_POLL_S
            for task_id, forced in self._redis(
                    lambda: self.store.pop_cancel_requests(self.node_id), once=True) or []:
                self._relay_cancel(task_id, forced)
        self._enforce_timeouts(now)
        if now >= self.next_memory_check:
            self.next_memory_check = now + MEMORY_CHECK_INTERVAL_S
            self._watch_memory()

    def _write_health(self) -> None:
        """For a container healthcheck (`ftqueue health`): who we are and when we last
        heartbeated. Written atomically."""
        tmp = f"{self.health_file}.tmp"
        with open(tmp, "w") as f:
            json.dump({"node_id": self.node_id, "address": self.settings.address,
                       "namespace": self.settings.namespace, "pid": os.getpid(),
                       "heartbeat": time.time(), "redis_ok": self.redis_down_since is None,
                       "lease_timeout_s": self.settings.lease_timeout_s}, f)
        os.replace(tmp, self.health_file)

    def _publish_workers(self) -> None:
        """What each worker is doing, for `ftqueue list workers` (refreshed with the heartbeat)."""
        pipe = self.store.redis.pipeline(transaction=False)
        for handle in self.workers.values():
            pipe.hset(self.keys.worker(handle.worker_id), mapping={
                "current_task": handle.running, "tasks_run": handle.tasks_run,
                "blocked": int(handle.blocked)})
        pipe.execute()

    # -- cancellation, timeouts, memory --------------------------------------------------------

    def _tell(self, handle: WorkerHandle, message: str) -> None:
        try:
            os.write(handle.inbox, message.encode() + b"\n")
            handle.process.send_signal(signal.SIGUSR1)
        except (OSError, ProcessLookupError):
            pass

    def _relay_cancel(self, task_id: str, forced: bool) -> None:
        handle = next((h for h in self.workers.values() if h.running == task_id), None)
        if handle is None:  # prefetched, not started: the worker drops it
            worker_id = self._redis(lambda: self.store.redis.hget(self.keys.task(task_id),
                                                                  "worker_id"), once=True)
            worker_id = worker_id.decode() if worker_id else ""
            handle = next((h for h in self.workers.values() if h.worker_id == worker_id), None)
            if handle is not None:
                self._tell(handle, f"C {task_id}")
            return
        if forced:
            self._kill_for(handle, "cancel", f"task {task_id} was cancelled with force=True")
        else:
            self._tell(handle, f"C {task_id}")

    def _enforce_timeouts(self, now: float) -> None:
        for handle in list(self.workers.values()):
            if not handle.running or handle.timeout_s is None or handle.kill_reason:
                continue
            if not handle.interrupted_at and now - handle.task_started > handle.timeout_s:
                handle.interrupted_at = now
                self._tell(handle, f"T {handle.running}")
            elif handle.interrupted_at and now - handle.interrupted_at > self.settings.timeout_grace_s:
                self._kill_for(handle, "timeout", f"task {handle.running} ignored its timeout")

    def _timeout_outcome(self, handle: WorkerHandle) -> tuple[str, str, str, bytes, bool, str]:
        from . import payload

        cause = TimeoutError(f"the task ran longer than its timeout_s={handle.timeout_s} and "
                             f"did not stop within {self.settings.timeout_grace_s} s; "
                             "its worker was killed")
        blob = payload.pack_error(handle.func_name or handle.running, cause,
                                  f"TimeoutError: {cause}\n", handle.process.pid,
                                  socket.gethostname(), handle.running, kind="TaskTimeoutError")
        return (handle.running, handle.fence, "err", blob, handle.retry_timeout,
                f"TaskTimeoutError: {cause}")

    def _watch_memory(self) -> None:
        limit = self.settings.max_memory_per_worker_bytes
        rss: dict[int, int] = {}
        for fd, handle in list(self.workers.items()):
            if handle.kill_reason:
                continue
            try:
                rss[fd] = psutil.Process(handle.process.pid).memory_info().rss
            except psutil.Error:
                continue
            if limit and rss[fd] > limit:
                detail = (f"worker process {handle.process.pid} used {rss[fd] // 2**20} MiB, over "
                          f"its limit of {limit // 2**20} MiB")
                if handle.running:
                    self._kill_for(handle, "oom", detail + f" while running task {handle.running}")
                else:
                    self._kill_for(handle, "recycle", detail)
        used, total = node_memory()
        if total and used / total > self.settings.memory_threshold:
            victim = pick_oom_victim(list(self.workers.values()))
            if victim is not None:
                self._kill_for(victim, "oom", f"node memory at {used / total:.0%} of "
                               f"{total // 2**20} MiB, over the {self.settings.memory_threshold:.0%}"
                               f" threshold: killed worker process {victim.process.pid} running "
                               f"task {victim.running}")

    def _kill_for(self, handle: WorkerHandle, reason: str, detail: str) -> None:
        handle.kill_reason, handle.kill_detail = reason, detail
        try:
            handle.process.kill()
        except ProcessLookupError:
            pass

    def _redis(self, step: Callable[[], Any], once: bool = False) -> Any:
        """Run a Redis step, riding out an outage: `once` steps are simply skipped."""
        failures = 0
        while True:
            try:
                result = step()
                if self.redis_down_since is not None:
                    self.log("Redis is reachable again")
                    self.redis_down_since = None
                return result
            except Exception as e:
                if not is_connection_error(e):
                    raise
                if self.redis_down_since is None:
                    self.redis_down_since = time.monotonic()
                    self.log(f"Redis unreachable ({e}); retrying")
                if once or self.stopping and failures >= 3:
                    return None
                time.sleep(backoff(failures))
                failures += 1

    # -- workers ------------------------------------------------------------------------------

    def spawn(self, temporary: bool = False) -> WorkerHandle:
        read_fd, write_fd = os.pipe()
        inbox_read, inbox_write = os.pipe()
        os.set_blocking(inbox_write, False)
        worker_id = new_id()[:16]
        settings = json.dumps(dataclasses.asdict(self.settings))
        cmd = [sys.executable, "-m", "ftqueue.worker", "--settings", settings,
               "--node-id", self.node_id, "--worker-id", worker_id,
               "--control-fd", str(write_fd), "--inbox-fd", str(inbox_read),
               "--parent-pid", str(os.getpid())]
        try:
            process = subprocess.Popen(cmd, stdin=subprocess.DEVNULL,
                                       pass_fds=(write_fd, inbox_read))
        finally:
            os.close(write_fd)
            os.close(inbox_read)
        handle = WorkerHandle(worker_id, process, read_fd, inbox_write, temporary=temporary)
        if self.metrics is not None:
            handle.on_task_end = self.metrics.task_ended
        self.workers[read_fd] = handle
        self._redis(lambda: self.store.redis.hset(self.keys.worker(worker_id), mapping={
            "worker_id": worker_id, "node_id": self.node_id, "pid": process.pid,
            "host": socket.gethostname(), "state": "ALIVE", "started_ms": self.store.clock_ms(),
            "temporary": int(temporary)}))
        self._redis(lambda: self.store.redis.zadd(self.keys.workers,
                                                  {worker_id: self.store.clock_ms()}))
        return handle

    def _ask_to_stop(self, handle: WorkerHandle) -> None:
        handle.stop_requested = True
        try:
            handle.process.send_signal(signal.SIGTERM)
        except ProcessLookupError:
            pass

    def _kill(self, handle: WorkerHandle) -> None:
        handle.stop_requested = True
        try:
            handle.process.kill()
        except ProcessLookupError:
            pass
        handle.process.wait()
        self._on_exit(handle)

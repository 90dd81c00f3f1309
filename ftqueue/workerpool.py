"""A node's worker processes as the supervisor sees them: spawn, hear, signal, kill."""

from __future__ import annotations

import dataclasses
import json
import os
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field

import psutil

from . import protocol
from .policy import KillReason
from .settings import NodeSettings
from .spec import new_id

# How long a force cancel waits for the worker it froze to stop before reading its pipe.
FREEZE_WAIT_S = 0.1


@dataclass
class WorkerHandle:
    worker_id: str
    process: subprocess.Popen  # type: ignore[type-arg]
    control: int                 # we read what it tells us here
    inbox: int = -1              # we write requests here, then send SIGUSR1
    temporary: bool = False
    running: str = ""            # the task whose body runs now
    cancels_told: int = 0        # the running task's cancel requests told it (by number)
    unsettled: str = ""          # the task whose body ended, outcome not yet in Redis
    fence: str = ""
    func_name: str = ""
    timeout_s: float | None = None
    retry_timeout: bool = False
    task_started: float = 0.0
    interrupted_at: float = 0.0
    kill_reason: KillReason = KillReason.NONE
    kill_detail: str = ""
    blocked: bool = False
    asked_to_stop: bool = False
    pipe_closed: bool = False    # its end of the control pipe closed while it lives on
    tasks_run: int = 0
    held: set[str] = field(default_factory=set)   # claimed and not yet settled in Redis
    lines: protocol.LineBuffer = field(default_factory=protocol.LineBuffer)
    started: float = field(default_factory=time.monotonic)
    registered: bool = False     # its record is in Redis

    @property
    def in_flight(self) -> str:
        """The task this worker's death would cost (body running or outcome unsettled)."""
        return self.running or self.unsettled

    @property
    def pid(self) -> int:
        return int(self.process.pid)

    def hear(self, message: protocol.WorkerMessage) -> float | None:
        """Apply one message; returns a task's run time when its body ended."""
        if isinstance(message, protocol.Started):
            self.running, self.fence = message.task_id, message.fence
            self.timeout_s, self.retry_timeout = message.timeout_s, message.retry_timeout
            self.func_name = message.func_name
            self.task_started = time.monotonic()
            self.interrupted_at = 0.0
            self.cancels_told = 0
            self.tasks_run += 1
        elif isinstance(message, protocol.Ended):
            if not self.running:       # said twice (at the body's end and at a stop)
                return None
            ran = time.monotonic() - self.task_started
            self.unsettled, self.running = self.running, ""
            return ran
        elif isinstance(message, protocol.Held):
            self.held.update(message.task_ids)
        elif isinstance(message, protocol.Settled):
            self.held.difference_update(message.task_ids)
            if self.unsettled in message.task_ids:
                self.unsettled = ""
            if self.running in message.task_ids:   # committed: its body ended too
                ran = time.monotonic() - self.task_started
                self.running = ""
                return ran
        elif isinstance(message, protocol.Blocked):
            self.blocked = message.blocked
        return None

    def feed(self, data: bytes) -> list[float]:
        """Bytes from the control pipe; returns the run times of bodies that ended."""
        ran = []
        for line in self.lines.feed(data):
            try:
                seconds = self.hear(protocol.decode_worker(line))
            except (protocol.ProtocolError, ValueError):
                continue   # a line we do not know cannot be acted on
            if seconds is not None:
                ran.append(seconds)
        return ran

    def tell(self, message: protocol.SupervisorMessage) -> None:
        try:
            os.write(self.inbox, protocol.encode(message))
            self.process.send_signal(signal.SIGUSR1)
        except (OSError, ProcessLookupError):
            pass

    def kill(self, reason: KillReason, detail: str = "") -> None:
        """SIGKILL the worker and the processes its tasks started (found before the kill:
        once it is dead they belong to init), so a killed attempt's children do not go on
        running and writing. A daemon that left the tree (double fork) is not found."""
        if self.kill_reason is KillReason.NONE:
            self.kill_reason, self.kill_detail = reason, detail
        try:
            descendants = psutil.Process(self.pid).children(recursive=True)
        except psutil.Error:
            descendants = []
        try:
            self.process.kill()
        except ProcessLookupError:
            pass
        for child in descendants:
            try:
                child.kill()     # psutil checks it is the same process (no pid reuse)
            except psutil.Error:
                pass

    def kill_attempt(self, task_id: str, reason: KillReason, detail: str) -> bool:
        """Kill the worker if it still runs `task_id`: it may have ended that task and
        started the next since we last read its pipe, so it is frozen and heard out first,
        and only that attempt dies. False (thawed, alive): it had moved on."""
        self.catch_up()
        if self.running == task_id:
            self.kill(reason, detail)
            return True
        self.thaw()
        return False

    def catch_up(self) -> list[float]:
        """Freeze the worker and read all it said: what it runs is then known, not guessed
        from lines still in its pipe (it may have ended one task and started the next since
        we last read). Frozen until `thaw` or a kill; returns the run times of bodies that
        ended."""
        try:
            self.process.send_signal(signal.SIGSTOP)
        except ProcessLookupError:
            return []
        try:
            deadline = time.monotonic() + FREEZE_WAIT_S
            while time.monotonic() < deadline and not _stopped(self.pid):
                time.sleep(0.0005)
            data = b""
            try:
                while chunk := os.read(self.control, 65536):
                    data += chunk
            except OSError:
                pass
            return self.feed(data)
        except BaseException:
            self.thaw()        # a signal to the node (Ctrl-C) must not leave it frozen
            raise

    def thaw(self) -> None:
        try:
            self.process.send_signal(signal.SIGCONT)
        except ProcessLookupError:
            pass

    def ask_to_stop(self) -> None:
        self.asked_to_stop = True
        try:
            self.process.send_signal(signal.SIGTERM)
        except ProcessLookupError:
            pass

    def close_pipes(self) -> None:
        for fd in (self.control, self.inbox):
            if fd >= 0:
                try:
                    os.close(fd)
                except OSError:
                    pass


def _stopped(pid: int) -> bool:
    """The process is stopped (or gone): nothing more comes from it."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rpartition(")")[2].split()[0] in ("T", "t", "Z", "X")
    except (OSError, IndexError):
        return True


def spawn_worker(settings: NodeSettings, node_id: str, temporary: bool = False) -> WorkerHandle:
    """Start one worker process. Its settings (which hold the Redis address, perhaps with a
    password) go through an inherited pipe, never its command line."""
    read_fd, write_fd = os.pipe()
    inbox_read, inbox_write = os.pipe()
    settings_read, settings_write = os.pipe()
    os.set_blocking(inbox_write, False)
    # Never block on what a worker says: a process its task forked may hold the write end
    # open after the worker is gone, so its pipe need not close when it dies.
    os.set_blocking(read_fd, False)
    worker_id = new_id()[:16]
    cmd = [sys.executable, "-m", "ftqueue.worker", "--settings-fd", str(settings_read),
           "--node-id", node_id, "--worker-id", worker_id,
           "--control-fd", str(write_fd), "--inbox-fd", str(inbox_read),
           "--parent-pid", str(os.getpid())]
    try:
        process = subprocess.Popen(cmd, stdin=subprocess.DEVNULL,
                                   pass_fds=(write_fd, inbox_read, settings_read))
        with os.fdopen(settings_write, "wb") as f:
            settings_write = -1
            f.write(json.dumps(dataclasses.asdict(settings)).encode())
    except BaseException:
        for fd in (read_fd, inbox_write):
            os.close(fd)
        raise
    finally:
        for fd in (write_fd, inbox_read, settings_read, settings_write):
            if fd >= 0:
                os.close(fd)
    return WorkerHandle(worker_id, process, read_fd, inbox_write, temporary=temporary)


def stop_or_hold(handles: list[WorkerHandle], now: bool) -> list[WorkerHandle]:
    """The grace period is over: kill each worker, but for one whose task's body ended and
    whose outcome Redis does not take yet (killing it would hand that finished task back),
    unless `now`; those are returned. A worker seen running is heard out first: the loop
    may have been held up (a Redis call waiting on a frozen server) while it said its body
    ended."""
    def holds(handle: WorkerHandle) -> bool:
        return bool(handle.unsettled and not handle.running and not now)

    holding = []
    for handle in handles:
        if handle.running and not now:
            handle.catch_up()
            if holds(handle):
                handle.thaw()
        if holds(handle):
            holding.append(handle)
        else:
            handle.kill(KillReason.STOP)
    return holding

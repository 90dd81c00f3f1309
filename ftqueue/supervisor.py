"""The node supervisor: the watchdog that owns N long-running worker processes.

It spawns them, learns from each one's pipe which task it runs, sees a death at once (the
pipe closes; the child is reaped), fails exactly that attempt through the same atomic step
the reaper uses (what it costs is `policy`'s answer), and starts a replacement. Its periodic
duties — heartbeat and lease renewal (from this process, so task code that holds the GIL
cannot starve them), sweeping the cluster for expired leases, firing due schedules, relaying
cancels, reporting lost workers — run from a table, each isolated: a Redis that is down,
busy or holding a corrupt record makes a duty skip a turn and log once, never stops the node.
"""

from __future__ import annotations

import logging
import os
import select
import signal
import subprocess
import time
from typing import Any, Callable

from . import policy, resources, schedules
from .cancel_listener import CancelListener
from .exceptions import FtqueueError
from .heartbeat import NodeRecord
from .logs import LogOnce
from .losses import Loss, describe_exit, report_losses
from .policy import KillReason, Restart
from .relays import Relays
from .settings import MEMORY_CHECK_INTERVAL_S, NodeSettings, Settings
from .spec import new_id
from .store import (
    Store,
    backoff,
    connect_patiently,
    connection_pools,
    describe,
    is_corrupt,
    is_full,
    is_transient,
)
from .watchdog import memory_kills, node_memory
from .workerpool import WorkerHandle, spawn_worker, stop_or_hold

log = logging.getLogger("ftqueue.node")

TICK_S = 0.1
# The cancel listener hands over each cancel relayed to the node as it comes; this poll of
# the same (durable) list is the net under it, for requests it has not popped because it is
# not waiting (backing off after an error, or hung on a connection): as often as the
# heartbeat, which brings a running task's requests whose pop's reply was lost.
CANCEL_SAFETY_POLL_S = 1.0
MESSAGE_BATCH_S = 0.005      # a running task hears of its cancel within this (plus a signal)
FINAL_REPORT_S = 2.0         # at exit, how long to try telling a lost Redis what we know
# One call of the supervisor's to a frozen Redis must not hold its loop (crash detection,
# timeouts, the memory watchdog, Ctrl-C) for long: its calls are short scripts, so a reply
# slower than this means Redis is not serving, and the step is retried (each is idempotent).
SOCKET_TIMEOUT_S = 2.0
# While Redis is not serving, only this duty calls it (a probe, every renew interval); the
# others wait for it to succeed, so a stalled Redis costs the loop one timeout per probe.
PROBE_DUTY = "renew"
LOCAL_DUTIES = ("health", "memory")


class Supervisor:
    # About 300 lines, on purpose: what is left here is the loop and the exit path, which
    # share the loop's state (workers, losses, stopping); every part that can stand alone
    # lives in its own room (workerpool, heartbeat, losses, relays, cancel_listener,
    # watchdog, policy).
    def __init__(self, settings: NodeSettings, *, node_id: str | None = None,
                 parent_pid: int | None = None, metrics_port: int | None = None,
                 health_file: str | None = None) -> None:
        self.settings = settings
        self.node_id = node_id or new_id()[:16]
        self.parent_pid = parent_pid
        self.store = Store(connect_patiently(settings.address, Settings.from_env().startup_wait_s,
                                             socket_timeout=SOCKET_TIMEOUT_S),
                           settings.namespace)
        self.keys = self.store.keys
        self.workers: dict[int, WorkerHandle] = {}   # by control fd
        self.losses: list[Loss] = []
        self.stopping = False
        self.stop_deadline = 0.0
        self.stop_now = False        # a second signal: do not wait for anything
        self.crash_times: list[float] = []
        self.respawn_at: list[float] = []
        self.record = NodeRecord(self.store, self.node_id, settings,
                                 settings.lineage_ttl_s * 1000)
        self.redis_ok = True
        self.health_file = health_file
        self._once = LogOnce(log)
        self._due: dict[str, float] = {}
        self._probe_failures = 0     # renewals failed in a row
        # Cancels relayed to this node for a task no worker has said it holds yet (a claim's
        # reply races the relay): kept until one does, or for a lease timeout.
        self.relays = Relays(settings.lease_timeout_s, settings.timeout_grace_s)
        self.cancel_listener = CancelListener(self.store, self.node_id)
        self.view = (0, 0)          # (workers, running): what the metrics thread reads
        self.metrics = None
        if metrics_port is not None:
            from .metrics import NodeMetrics

            self.metrics = NodeMetrics(self, metrics_port)

    def log(self, message: str) -> None:
        log.warning(message)

    # -- lifecycle ----------------------------------------------------------------------------

    def request_stop(self, signum: int = signal.SIGTERM, frame: Any = None) -> None:
        """First SIGTERM/SIGINT: stop claiming, let running tasks finish within the grace
        period. A second one: stop now (running tasks go back, uncharged)."""
        if self.stopping:
            if not self.stop_now:
                self.log("stopping now: running tasks go back to the queue")
                self.stop_now = True
                self.stop_deadline = 0.0
            return
        self.stopping = True
        self.stop_deadline = time.monotonic() + self.settings.grace_period_s
        running = sum(1 for h in self.workers.values() if h.in_flight)
        again = "Ctrl-C" if signum == signal.SIGINT else "signal"
        # An embedded node told to stop by its driver, idle, at exit: nothing to say.
        if running or self.parent_pid is None or signum == signal.SIGINT:
            self.log(f"stopping: waiting up to {self.settings.grace_period_s:g} s for "
                     f"{running} running task(s); {again} again to stop now")
        for handle in self.workers.values():
            handle.ask_to_stop()

    def _check_partitioned(self) -> None:
        """A partitioned namespace counts a node's resources in each partition on its own
        (heartbeat.py offer_resources): only one task per CPU keeps them apart."""
        if self.store.partition_count == 1:
            return
        cpus = dict(self.settings.resources).get("CPU", 0) / resources.UNIT
        if self.settings.num_workers > cpus:
            raise FtqueueError(
                f"{self.settings.num_workers} workers on {cpus:g} CPUs: on a partitioned "
                "namespace (FTQUEUE_PARTITIONS > 1) a node runs at most one worker per CPU")

    def run(self) -> int:
        signal.signal(signal.SIGTERM, self.request_stop)
        signal.signal(signal.SIGINT, self.request_stop)
        self._check_partitioned()
        self._run_duty("register", self.record.register)
        for _ in range(self.settings.num_workers):
            self.spawn()
        try:
            while self.workers or not self.stopping:
                self.step(TICK_S)
        finally:
            self.shutdown()
        return 0

    def shutdown(self) -> None:
        self.cancel_listener.stop()
        # A frozen Redis must not hold the exit for a socket timeout per call.
        for pool in connection_pools(self.store.redis):
            pool.connection_kwargs["socket_timeout"] = FINAL_REPORT_S
            pool.disconnect()
        for handle in list(self.workers.values()):
            self._kill_and_reap(handle)
        deadline = time.monotonic() + FINAL_REPORT_S
        while self.losses and time.monotonic() < deadline:
            if not self._run_duty("losses", self._report_losses):
                time.sleep(backoff(0))
        if self.losses:
            self.log(f"Redis unreachable: {len(self.losses)} lost worker(s) not reported; "
                     "their tasks are retried when their leases expire")
        elif self.redis_ok:      # else sweeps declare this node dead when its lease expires
            self._run_duty("deregister", self.record.deregister)

    # -- one step -----------------------------------------------------------------------------

    def step(self, timeout: float) -> None:
        fds = [fd for fd, h in self.workers.items() if not h.pipe_closed]
        wake_fd = self.cancel_listener.wake_fd
        try:
            readable, _, _ = select.select(fds + [wake_fd] if wake_fd >= 0 else fds, [], [],
                                           timeout)
        except InterruptedError:
            readable = []
        heard = [self.workers[fd] for fd in readable if fd in self.workers]
        for handle in heard:
            self._read_control(handle)
        if wake_fd in readable:
            self.relays.add_cancels(self.cancel_listener.take())
        if self.relays.pending:
            self.relays.deliver_cancels(self.workers.values())
        self._reap()
        self._keep_workers()
        self._tick()
        if self.parent_pid is not None and os.getppid() != self.parent_pid:
            self.request_stop()
            self.stop_now, self.stop_deadline = True, 0.0
        if self.stopping and time.monotonic() >= self.stop_deadline:
            self._stop_workers()
        self.view = (len(self.workers), sum(1 for h in self.workers.values() if h.running))
        self.cancel_listener.listen(self.redis_ok and self._holds_tasks())
        if heard and not self.stopping:
            # Workers write a few lines per task; reading them in batches keeps this
            # process from taking a core under load, for a few ms of extra detection time.
            time.sleep(MESSAGE_BATCH_S)

    def _stop_workers(self) -> None:
        """The grace period is over: kill what still runs. A worker whose task finished but
        whose outcome Redis does not take yet (full, away) is waited for — killing it would
        run that finished task again — until Redis takes it or a second signal says now."""
        holding = stop_or_hold(list(self.workers.values()), now=self.stop_now)
        if holding:
            self._once.start("holding", f"{len(holding)} worker(s) hold finished outcomes that "
                             "Redis does not take yet; waiting for Redis (Ctrl-C again to stop "
                             "now: those tasks will then run again)")

    def _read_control(self, handle: WorkerHandle) -> None:
        try:
            data = os.read(handle.control, 65536)
        except BlockingIOError:
            return
        except OSError:
            data = b""
        if not data:
            self._reap(handle, wait=True)
            if handle.control in self.workers:
                # It closed its pipe but lives on (its task closed our descriptor): stop
                # watching the pipe, which would read as closed at every step; its exit is
                # found by polling, as every worker's is.
                handle.pipe_closed = True
            return
        self._heard(handle, data)

    def _heard(self, handle: WorkerHandle, data: bytes) -> None:
        for seconds in handle.feed(data):
            if self.metrics is not None:
                self.metrics.task_ended(seconds)

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
        try:  # drain what it said last (its final lines matter); a process its task forked
            # may keep the pipe open, so read what is there, never wait for the end
            for _ in range(64):
                data = os.read(handle.control, 65536)
                if not data:
                    break
                self._heard(handle, data)
        except OSError:
            pass
        handle.close_pipes()
        returncode = int(handle.process.returncode)
        ending = policy.classify_exit(returncode, task_in_flight=bool(handle.in_flight),
                                      kill_reason=handle.kill_reason,
                                      asked_to_stop=handle.asked_to_stop or self.stopping)
        cost = policy.loss_cost(ending)
        now = time.monotonic()
        if cost.is_crash:
            self.crash_times = [t for t in self.crash_times
                                if now - t < policy.CRASH_WINDOW_S] + [now]
        self.losses.append(self._loss(handle, ending, cost, returncode))
        # When stopping, shutdown() reports them within a deadline; while Redis is not
        # serving, the duty does once it is back (their leases are kept meanwhile).
        if not self.stopping and self.redis_ok:
            self._run_duty("losses", self._report_losses)
        decision = policy.decide_restart(ending, node_stopping=self.stopping,
                                         asked_to_stop=handle.asked_to_stop,
                                         temporary=handle.temporary,
                                         recent_crashes=len(self.crash_times))
        if decision is Restart.RESPAWN_LATER:
            self.respawn_at.append(now + policy.CRASH_LOOP_DELAY_S)

    def _report_losses(self) -> None:
        report_losses(self.store, self.node_id, self.losses)

    def _loss(self, handle: WorkerHandle, ending: policy.Ending, cost: policy.LossCost,
              returncode: int) -> Loss:
        exit_text = describe_exit(returncode, handle.pid)
        if ending is policy.Ending.OOM_KILLED:
            message = handle.kill_detail
            self.log(message)
        elif cost.charged or cost.is_crash:
            message = exit_text
            self.log(message + (f" while running task {handle.in_flight}"
                                if handle.in_flight else ""))
        else:
            message = f"worker process {handle.pid} stopped on purpose; retry not charged"
        timeout_outcome = None
        if ending is policy.Ending.TIMEOUT_KILLED and handle.in_flight:
            timeout_outcome = self.relays.timeout_outcome(handle)
        return Loss(handle.worker_id, handle.in_flight, cost.error_type, cost.charged, message,
                    exit_text if cost.is_crash or cost.charged else "stopped",
                    set(handle.held) | ({handle.in_flight} if handle.in_flight else set()),
                    timeout_outcome)

    def _keep_workers(self) -> None:
        """Replace lost workers, and lend the slot of each worker blocked in `get` to a
        temporary one (so nested tasks cannot deadlock the node); retire spare temporaries."""
        if self.stopping:
            return
        now = time.monotonic()
        self.respawn_at = [t for t in self.respawn_at if t > now]
        target = self.settings.num_workers - len(self.respawn_at)
        live = [h for h in self.workers.values() if not h.asked_to_stop]
        for _ in range(target - sum(1 for h in live if not h.temporary)):
            live.append(self.spawn())
        active = [h for h in live if not h.blocked]
        for _ in range(target - len(active)):
            active.append(self.spawn(temporary=True))
        spare = [h for h in active if h.temporary and not h.in_flight]
        for handle in spare[:max(0, len(active) - target)]:
            handle.ask_to_stop()

    # -- periodic duties ----------------------------------------------------------------------

    def _tick(self) -> None:
        if self.stop_now:
            return      # stopping now: shutdown() tells Redis what it must know, in bounded time
        renew_s = self.settings.renew_interval_s
        duties: tuple[tuple[str, float, Callable[[], Any]], ...] = (
            ("renew", renew_s, self._renew),
            ("workers", renew_s, lambda: self.record.publish_workers(self.workers.values())),
            ("health", renew_s, self._write_health),
            ("sweep", self.record.fleet_interval(max(renew_s, 0.5)), self.record.sweep),
            ("schedules", self.record.fleet_interval(schedules.POLL_S),
             lambda: schedules.fire_due(self.store)),
            ("cancels", CANCEL_SAFETY_POLL_S, self._poll_cancels),
            ("losses", renew_s, self._report_losses),
            ("memory", MEMORY_CHECK_INTERVAL_S, self._watch_memory),
        )
        now = time.monotonic()
        for name, interval_s, duty in duties:
            if now >= self._due.get(name, 0.0):
                if not self.redis_ok and name not in LOCAL_DUTIES and name != PROBE_DUTY:
                    continue          # waits for the probe to find Redis serving again
                self._due[name] = now + interval_s
                done = self._run_duty(name, duty)
                if name == PROBE_DUTY:
                    # A renewal lost (its request dropped, its reply lost): tried again soon,
                    # not a whole interval later, so a few lost round trips in a row never let
                    # a live node's lease expire; backing off while Redis stays away, so a
                    # fleet does not hammer a restarting server.
                    self._probe_failures = 0 if done else self._probe_failures + 1
                    if not done:
                        self._due[name] = time.monotonic() + min(
                            interval_s, backoff(self._probe_failures - 1))
        self.relays.enforce_timeouts(self.workers.values(), time.monotonic())

    def _run_duty(self, name: str, duty: Callable[[], Any]) -> bool:
        """Run one duty; a failure is logged once and the duty skips this turn."""
        try:
            duty()
        except Exception as e:  # noqa: BLE001 - isolated: one duty cannot stop the node
            if is_transient(e) or is_full(e):
                if self.redis_ok:
                    self.redis_ok = False
                    what = "refuses writes" if is_full(e) else "unreachable or not serving"
                    self.log(f"Redis {what} ({describe(e)}); retrying")
            elif is_corrupt(e):
                self._once.start(f"corrupt:{name}", f"{name}: a record in Redis has the wrong "
                                 f"type ({describe(e)}); skipped")
            else:
                self._once.start(f"error:{name}", f"{name} failed: {describe(e)}", logging.ERROR)
            return False
        if not self.redis_ok and name in ("renew", "sweep"):
            self.redis_ok = True
            self.log("Redis is serving again")
        self._once.clear(f"error:{name}")
        self._once.clear(f"corrupt:{name}")
        return True

    def _renew(self) -> None:
        if self.record.redis_was_reset():
            self.log("Redis lost its data (a new epoch): registering this node again")
            self.record.register()
            for handle in self.workers.values():
                handle.registered = False      # written again by the next publish
        runners = [h for h in self.workers.values() if h.running]
        running = [h.running for h in runners]
        held = [t for h in self.workers.values() for t in h.held]
        held += [t for loss in self.losses for t in loss.held]   # until their loss is told
        stale_ids, cancels = self.record.renew(running, held, [h.worker_id for h in runners])
        stale = set(stale_ids)
        self.relays.add_cancels(cancels)
        # Declared dead while frozen or cut off, the attempts its workers still run were
        # retried meanwhile (perhaps here, on the capacity they held); after Redis lost its
        # data, drivers submit the tasks again. Ending those attempts now, as a dead node's
        # workers end, stops running the same task twice (their outcomes could only be
        # fenced). Not charged: worker_lost finds the tasks held elsewhere, or not at all.
        for handle in list(self.workers.values()):
            if handle.running and handle.running in stale:
                self.log(f"stopping worker process {handle.pid}: its task {handle.running} "
                         "is no longer this node's (declared dead meanwhile, or Redis lost "
                         "its data) and runs again elsewhere")
                handle.kill(KillReason.STOP)

    def _write_health(self) -> None:
        if self.health_file:
            self.record.write_health(self.health_file, self.redis_ok)

    def _poll_cancels(self) -> None:
        if not self._holds_tasks():
            return
        self.relays.add_cancels(self.store.pop_cancel_requests(self.node_id))
        self.relays.deliver_cancels(self.workers.values())

    def _holds_tasks(self) -> bool:
        # A cancel is sent to a node only for a task it holds; with none held, any request
        # still listed is stale (the list is durable: it is read when a task is held).
        return any(h.running or h.held for h in self.workers.values())

    # -- memory ---------------------------------------------------------------------------------

    def _watch_memory(self) -> None:
        for handle, reason, detail in memory_kills(
                list(self.workers.values()), self.settings.max_memory_per_worker_bytes,
                self.settings.memory_threshold, node_memory()):
            handle.kill(reason, detail)

    # -- workers ------------------------------------------------------------------------------

    def spawn(self, temporary: bool = False) -> WorkerHandle:
        handle = spawn_worker(self.settings, self.node_id, temporary)
        self.workers[handle.control] = handle
        return handle

    def _kill_and_reap(self, handle: WorkerHandle) -> None:
        handle.kill(KillReason.STOP)
        handle.process.wait()
        self._on_exit(handle)

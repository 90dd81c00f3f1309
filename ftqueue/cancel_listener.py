"""The node's cancel listener: a thread that waits on the node's cancel list (BLPOP) while
the node holds a task, and wakes the supervisor's loop through a self-pipe with what it
popped, so a cancel reaches the running task in milliseconds rather than at the loop's next
poll. It only pops and hands over: relaying stays in the loop's thread, which owns the
worker handles."""

from __future__ import annotations

import logging
import os
import queue
import threading

from .logs import LogOnce
from .store import Store, backoff, describe, is_transient
from .store.store import CancelRequest

log = logging.getLogger("ftqueue.node")

# How long one BLPOP waits: bounds how soon the thread sees that the node holds no task any
# more (an idle node must not call Redis) or is stopping. Below the supervisor's socket
# timeout, so a wait on a healthy Redis never times out.
WAIT_S = 1


class CancelListener:
    def __init__(self, store: Store, node_id: str) -> None:
        self._store = store
        self._node_id = node_id
        self._listening = threading.Event()
        self._stopped = threading.Event()
        self._popped: queue.SimpleQueue[CancelRequest] = queue.SimpleQueue()
        self._once = LogOnce(log)
        self._started = False
        self._live_threads = 0
        self._lock = threading.Lock()
        # Workers never inherit these: os.pipe's descriptors are close-on-exec, and workers
        # are started by fork+exec with close_fds (only their own pipes are passed).
        self.wake_fd, self._wake_w = os.pipe()
        for fd in (self.wake_fd, self._wake_w):
            os.set_blocking(fd, False)

    def listen(self, on: bool) -> None:
        """The loop says, at each step, whether to wait on the list (it holds a task and
        Redis serves)."""
        if not on:
            self._listening.clear()
            return
        if not self._started:       # started at first need: an idle node never runs it
            # Partitioned (partitions.py), a cancel is relayed to the node's list in the
            # task's partition, and a blocking pop waits on one: a thread for each.
            count = self._store.partition_count
            self._started, self._live_threads = True, count
            for part in range(count):
                threading.Thread(target=self._run, args=(part,), daemon=True,
                                 name="ftqueue-cancels" + (f"-{part}" if part else "")).start()
        self._listening.set()

    def take(self) -> list[CancelRequest]:
        """What the thread popped since the last call; never blocks."""
        try:   # the pipe first: a request is queued before its wake-up byte is written
            while os.read(self.wake_fd, 4096):
                pass
        except OSError:
            pass
        popped = []
        while True:
            try:
                popped.append(self._popped.get_nowait())
            except queue.Empty:
                return popped

    def stop(self) -> None:
        """End the thread without waiting for it: its wait is bounded and it is a daemon, so
        neither a frozen Redis nor a wait under way holds the node's exit."""
        self._stopped.set()
        self._listening.set()
        if self.wake_fd >= 0:
            os.close(self.wake_fd)
            self.wake_fd = -1
        if not self._started and self._wake_w >= 0:   # else the last thread closes its end
            os.close(self._wake_w)
            self._wake_w = -1

    def _run(self, part: int) -> None:
        failures = 0
        try:
            while True:
                self._listening.wait()
                if self._stopped.is_set():
                    return
                try:
                    popped = self._store.wait_cancel_request(self._node_id, WAIT_S, part)
                except Exception as e:  # noqa: BLE001 - no Redis error may end the thread
                    if self._stopped.is_set():
                        return      # its connection was closed by shutdown()
                    self._failed(e)
                    self._stopped.wait(backoff(failures))
                    failures += 1
                    continue
                failures = 0
                self._once.clear("error")
                if popped:
                    self._hand_over(popped)
        finally:
            with self._lock:
                self._live_threads -= 1
                if self._live_threads == 0:
                    os.close(self._wake_w)

    def _failed(self, e: Exception) -> None:
        # Redis away or not serving is the loop's to report (its duties fail too); a lost
        # reply's request still reaches a running task through the heartbeat.
        if not is_transient(e):
            self._once.start("error", f"cancel listener: {describe(e)}; retrying",
                             logging.ERROR)

    def _hand_over(self, popped: list[CancelRequest]) -> None:
        for request in popped:
            self._popped.put(request)
        try:
            os.write(self._wake_w, b"!")
        except OSError:
            pass    # the pipe is full: the loop has a wake-up pending already

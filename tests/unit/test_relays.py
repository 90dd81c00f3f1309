"""The supervisor's relays against a real process whose control pipe says more than the
supervisor has read: only the attempt it means to end dies."""

from __future__ import annotations

import os
import subprocess
import sys
import time

from ftqueue import protocol
from ftqueue.relays import Relays
from ftqueue.workerpool import WorkerHandle, stop_or_hold


def _worker_that_moved_on() -> WorkerHandle:
    """A handle that believes its worker still runs X past X's timeout and grace, while the
    unread pipe says X ended and Z started."""
    read, write = os.pipe()
    os.set_blocking(read, False)
    process = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    handle = WorkerHandle("w1", process, read)
    handle.hear(protocol.Started("X", "1", 1.0, False, "f"))
    handle.task_started = handle.interrupted_at = time.monotonic() - 100
    os.write(write, protocol.encode(protocol.Ended())
             + protocol.encode(protocol.Started("Z", "1", None, False, "g")))
    os.close(write)
    return handle


def test_a_timeout_kill_spares_the_task_the_worker_runs_next():
    handle = _worker_that_moved_on()
    try:
        Relays(keep_cancels_s=10, timeout_grace_s=1).enforce_timeouts([handle],
                                                                      time.monotonic())
        assert handle.running == "Z"
        time.sleep(0.2)
        assert handle.process.poll() is None           # not killed
        with open(f"/proc/{handle.pid}/stat") as f:    # and not left frozen
            assert f.read().rpartition(")")[2].split()[0] != "T"
    finally:
        handle.process.kill()
        handle.process.wait()
        os.close(handle.control)


def _stopping_worker(said: bytes) -> WorkerHandle:
    """A handle that believes its worker still runs X, while the unread pipe says `said`."""
    read, write = os.pipe()
    os.set_blocking(read, False)
    process = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    handle = WorkerHandle("w1", process, read)
    handle.hear(protocol.Started("X", "1", None, False, "f"))
    os.write(write, said)
    os.close(write)
    return handle


def test_a_stop_spares_a_worker_whose_body_ended_unheard():
    """The node's loop was held up (a Redis call on a frozen server) while the worker said
    its task's body ended; past the grace period it must not be killed: its outcome waits
    for Redis, and killing it would run that finished task again."""
    held, running = (_stopping_worker(protocol.encode(protocol.Ended())),
                     _stopping_worker(b""))
    try:
        assert stop_or_hold([held, running], now=False) == [held]
        assert held.unsettled == "X" and held.process.poll() is None
        with open(f"/proc/{held.pid}/stat") as f:      # not left frozen
            assert f.read().rpartition(")")[2].split()[0] != "T"
        assert running.process.wait(5) == -9            # one still running dies
        assert stop_or_hold([held], now=True) == [] and held.process.wait(5) == -9
    finally:
        for handle in (held, running):
            handle.process.kill()
            handle.process.wait()
            os.close(handle.control)


def test_a_second_ended_changes_nothing():
    handle = _stopping_worker(b"")
    try:
        handle.hear(protocol.Ended())
        handle.hear(protocol.Ended())      # said again, at a stop: still unsettled
        assert handle.unsettled == "X" and handle.running == ""
    finally:
        handle.process.kill()
        handle.process.wait()
        os.close(handle.control)

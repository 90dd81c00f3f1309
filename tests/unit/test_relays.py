"""The supervisor's relays against a real process whose control pipe says more than the
supervisor has read: only the attempt it means to end dies."""

from __future__ import annotations

import os
import subprocess
import sys
import time

from ftqueue import protocol
from ftqueue.relays import Relays
from ftqueue.workerpool import WorkerHandle


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

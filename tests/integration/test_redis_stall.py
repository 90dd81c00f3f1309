"""A Redis stall is not a node death (DESIGN invariant 9): with a 3 s lease, a task that runs
about 2 s while Redis is stopped (SIGSTOP) for 8 s finishes with one attempt and runs once,
although another process sweeps for expired leases the moment Redis thaws."""

from __future__ import annotations

import os
import signal
import threading
import time

import redis
from conftest import NodeProcess, wait_until

import ftqueue
import ftqueue.state
from ftqueue.store import Store, connect

LEASE_TIMEOUT_S = 3
LEASE_MS = LEASE_TIMEOUT_S * 1000
TASK_S = 2.0
FREEZE_S = 8.0
SWEEP_INTERVAL_S = 0.02


def runs(path) -> int:
    try:
        with open(path) as f:
            return len(f.read().split())
    except FileNotFoundError:
        return 0


@ftqueue.remote(max_retries=1)
def slow(path):
    with open(path, "a") as f:
        f.write("run\n")
    time.sleep(TASK_S)
    return "done"


class Sweeper:
    """Another process's reaper, sweeping all the time: its sweep is in flight while Redis is
    frozen, so it is the first command Redis runs when it thaws."""

    def __init__(self, address: str) -> None:
        self.store = Store(connect(address))
        self.stop_event = threading.Event()
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def _run(self) -> None:
        while not self.stop_event.is_set():
            try:
                self.store.sweep(LEASE_MS)
            except redis.RedisError:
                pass
            self.stop_event.wait(SWEEP_INTERVAL_S)

    def stop(self) -> None:
        self.stop_event.set()
        self.thread.join(15)
        self.store.redis.close()




def test_redis_frozen_longer_than_the_lease_fails_and_reruns_nothing(own_redis, tmp_path):
    path = tmp_path / "runs"
    node = NodeProcess(own_redis.address, 1, "--lease-timeout", str(LEASE_TIMEOUT_S))
    sweeper = None
    ftqueue.init(address=own_redis.address)
    try:
        node.wait_workers(1)
        sweeper = Sweeper(own_redis.address)
        ref = slow.remote(path)
        wait_until(lambda: runs(path) == 1, 30, "the task to start")
        os.kill(own_redis.process.pid, signal.SIGSTOP)
        time.sleep(FREEZE_S)              # the fault itself: Redis frozen for this long
        os.kill(own_redis.process.pid, signal.SIGCONT)
        assert ftqueue.get(ref, timeout=60) == "done"
        rows = ftqueue.state.get_task(ref.hex())
        assert [(r["attempt_number"], r["state"]) for r in rows] == [(0, "FINISHED")]
        assert runs(path) == 1
        assert node.process.poll() is None, node.output()
    finally:
        os.kill(own_redis.process.pid, signal.SIGCONT)
        if sweeper is not None:
            sweeper.stop()
        ftqueue.shutdown()
        node.stop()

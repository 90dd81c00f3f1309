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


@ftqueue.remote(max_retries=1)
def waits_for(path, flag):
    with open(path, "a") as f:
        f.write("run\n")
    while not os.path.exists(flag):
        time.sleep(0.02)
    print("finished")     # shipped as the body ends: a write that waits on Redis
    return "done"


def test_a_node_stopping_while_redis_is_frozen_keeps_an_outcome_it_could_not_commit(
        own_redis, tmp_path):
    """SIGTERM, then the task ends while Redis is frozen: its commit waits on a socket that
    does not answer, past the grace period. The worker said its body ended, so the node
    waits for Redis rather than kill it (which would hand the finished task back)."""
    path, flag = tmp_path / "runs", tmp_path / "go"
    node = NodeProcess(own_redis.address, 1, "--lease-timeout", "10", "--grace-period", "1")
    second = None
    ftqueue.init(address=own_redis.address)
    try:
        node.wait_workers(1)
        ref = waits_for.remote(str(path), str(flag))
        wait_until(lambda: runs(path) == 1, 30, "the task to start")
        os.kill(own_redis.process.pid, signal.SIGSTOP)
        node.process.send_signal(signal.SIGTERM)     # what `docker stop` sends
        time.sleep(0.3)
        flag.write_text("go")
        time.sleep(2.5)                   # the grace period runs out while Redis is frozen
        os.kill(own_redis.process.pid, signal.SIGCONT)
        node.process.wait(20)
        second = NodeProcess(own_redis.address, 1)   # would run a handed-back task again
        assert ftqueue.get(ref, timeout=10) == "done"
        time.sleep(1.0)
        assert runs(path) == 1, node.output()
        rows = ftqueue.state.get_task(ref.hex())
        assert [r["state"] for r in rows] == ["FINISHED"]
    finally:
        os.kill(own_redis.process.pid, signal.SIGCONT)
        ftqueue.shutdown()
        node.stop()
        if second is not None:
            second.stop()

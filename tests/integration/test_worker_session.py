"""A task's own calls into ftqueue from a worker process, whose client is made lazily at the
first nested call: `init()` inside a task, and a process a task forks."""

from __future__ import annotations

import os
import signal
import time

import redis
from conftest import wait_until

import ftqueue


@ftqueue.remote
def double(x):
    return x * 2


def test_init_inside_a_task_joins_the_workers_cluster(driver, start_node, redis_url):
    """A task calling `init(ignore_reinit_error=True)` (as code written for Ray does) is
    already part of its worker's cluster: it gets that cluster's info, never an embedded
    cluster of its own, and its nested `get` still lends the slot (one worker: no
    deadlock)."""
    start_node(1)

    @ftqueue.remote
    def parent():
        info = ftqueue.init(ignore_reinit_error=True)
        try:
            ftqueue.init()
            twice = "no error"
        except RuntimeError:
            twice = "RuntimeError"
        return info.address, info.embedded, twice, ftqueue.get(double.remote(21), timeout=60)

    address, embedded, twice, value = ftqueue.get(parent.remote(), timeout=90)
    assert (address, embedded, twice, value) == (redis_url, False, "RuntimeError", 42)


def test_a_process_forked_by_a_task_does_not_speak_for_its_worker(driver, start_node,
                                                                   rclient, tmp_path):
    """A child forked by a task that blocks in `get` has a client of its own: it must not
    tell the supervisor that the worker is blocked (nor lend the task's CPUs). Killed while
    blocked, it would leave the worker marked blocked for good, with a stand-in worker
    beside it."""
    node = start_node(2)
    node.wait_workers(2)
    release = str(tmp_path / "release")

    @ftqueue.remote
    def sleeper(path):
        while not os.path.exists(path):
            time.sleep(0.05)
        return 1

    @ftqueue.remote
    def parent(path):
        pid = os.fork()
        if pid == 0:        # the child: blocks in get until the parent kills it
            try:
                ftqueue.get(sleeper.remote(path), timeout=60)
            finally:
                os._exit(0)
        time.sleep(3.0)     # the child is blocked in get by now
        os.kill(pid, signal.SIGKILL)
        os.waitpid(pid, 0)
        return "done"

    try:
        assert ftqueue.get(parent.remote(release), timeout=60) == "done"
        time.sleep(2.5)     # the supervisor publishes its workers' records meanwhile
        blocked = [k for k in rclient.scan_iter("ftq:worker:*")
                   if rclient.hget(k, "state") == "ALIVE" and rclient.hget(k, "blocked") == "1"]
        assert blocked == []
        # No stand-in worker for a slot that was never lent.
        wait_until(lambda: len(node.workers()) == 2, 10, "the node's 2 workers, no more")
    finally:
        open(release, "w").close()


def test_a_burst_of_nested_submissions_survives_the_workers_exit(driver, start_node, rclient):
    """`.remote()` in a burst returns before its task is sent; a worker that exits right after
    the task (max_calls=1, as every GPU task) must not take the unsent ones with it."""
    start_node(2)

    @ftqueue.remote
    def child(i):
        return i

    @ftqueue.remote(max_calls=1)
    def parent(n):
        for i in range(n):
            child.remote(i)           # fire and forget: nobody waits for these
        return "ok"

    assert ftqueue.get([parent.remote(1500) for _ in range(2)], timeout=120) == ["ok", "ok"]

    def created() -> int:
        stats = rclient.hgetall("ftq:stats")
        return sum(int(v) for k, v in stats.items()
                   if k.startswith("summary:created:") and k.endswith("child"))

    time.sleep(1.0)     # any stragglers would have arrived by now
    assert created() == 3000


def test_a_tasks_first_nested_call_waits_out_a_redis_restart(tmp_path):
    """The worker's client is made at a task's first nested call: made while Redis restarts,
    it waits the outage out as every other step does, instead of failing the task with a
    connection error (the client made at the worker's start never had to)."""
    from conftest import NodeProcess

    from ftqueue.embedded import RedisServer

    server = RedisServer.start(unix_socket=True, directory=str(tmp_path / "redis"),
                               appendonly=True)
    node = None
    go = str(tmp_path / "go")
    try:
        node = NodeProcess(server.address, 1, "--lease-timeout", "5")
        ftqueue.init(address=server.address)

        @ftqueue.remote
        def parent(path):
            while not os.path.exists(path):
                time.sleep(0.02)
            return ftqueue.get(double.remote(21), timeout=60)

        ref = parent.remote(go)
        ftqueue.flush_submissions()
        client = redis.Redis.from_url(server.address, decode_responses=True)
        wait_until(lambda: client.hget(f"ftq:task:{ref.hex()}", "state") == "RUNNING", 30,
                   "the parent task to run")
        client.close()
        server.kill()
        open(go, "w").close()       # the task's first nested call meets no Redis
        time.sleep(1.5)
        server.restart()
        assert ftqueue.get(ref, timeout=90) == 42
    finally:
        ftqueue.shutdown()
        if node is not None:
            node.stop()
        server.kill()


def test_a_tasks_first_get_keeps_its_timeout_while_redis_is_away(tmp_path):
    """Waiting out the outage to make the worker's client does not outlive the timeout of
    the `get` that needs it (DESIGN invariant 11)."""
    from conftest import NodeProcess

    from ftqueue.embedded import RedisServer

    server = RedisServer.start(unix_socket=True, directory=str(tmp_path / "redis"),
                               appendonly=True)
    node = None
    go = str(tmp_path / "go")
    try:
        node = NodeProcess(server.address, 1, "--lease-timeout", "30")
        ftqueue.init(address=server.address)

        @ftqueue.remote
        def parent(path, refs):
            while not os.path.exists(path):
                time.sleep(0.02)
            start = time.monotonic()
            try:
                ftqueue.get(refs[0], timeout=2)
                outcome = "returned"
            except Exception as e:  # noqa: BLE001 - what the task saw is the result
                outcome = type(e).__name__
            return outcome, time.monotonic() - start

        ref = parent.remote(go, [double.remote(1)])
        ftqueue.flush_submissions()
        client = redis.Redis.from_url(server.address, decode_responses=True)
        wait_until(lambda: client.hget(f"ftq:task:{ref.hex()}", "state") == "RUNNING", 30,
                   "the parent task to run")
        client.close()
        server.kill()
        open(go, "w").close()
        time.sleep(6.0)             # longer than the task's get may wait
        server.restart()
        outcome, waited = ftqueue.get(ref, timeout=90)
        assert outcome == "FtqueueConnectionError" and waited < 5.0
    finally:
        ftqueue.shutdown()
        if node is not None:
            node.stop()
        server.kill()

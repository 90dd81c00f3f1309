"""Lost results rebuilt from lineage, retention, and surviving a Redis that restarts, with
or without its data."""

from __future__ import annotations

import os
import signal
import time

import pytest
import redis
from conftest import NodeProcess, child_env, wait_until

import ftqueue
import ftqueue.state
from ftqueue.embedded import RedisServer
from ftqueue.exceptions import ObjectLostError, ObjectReconstructionFailedError


def runs(path, name) -> int:
    try:
        with open(path) as f:
            return f.read().split().count(name)
    except FileNotFoundError:
        return 0


def mark(path, name) -> None:
    with open(path, "a") as f:
        f.write(name + "\n")


@ftqueue.remote
def make(path, name, value):
    mark(path, name)
    return value


@ftqueue.remote
def plus(path, name, x, y=1):
    mark(path, name)
    return x + y


def test_deleted_result_is_rebuilt_by_rerunning_its_task(cluster, rclient, tmp_path):
    path = tmp_path / "runs"
    ref = make.remote(path, "a", 42)
    assert ftqueue.get(ref) == 42
    rclient.delete(f"ftq:result:{ref.hex()}")
    assert ftqueue.get(ref, timeout=60) == 42
    assert runs(path, "a") == 2
    rows = ftqueue.state.get_task(ref.hex())
    assert [(r["attempt_number"], r["state"]) for r in rows] == [(0, "FINISHED"), (1, "FINISHED")]


def test_chain_rebuilds_lost_arguments_recursively(cluster, rclient, tmp_path):
    path = tmp_path / "runs"
    a = make.remote(path, "a", 1)
    b = plus.remote(path, "b", a)
    assert ftqueue.get(b) == 2
    rclient.delete(f"ftq:result:{a.hex()}", f"ftq:result:{b.hex()}")
    c = plus.remote(path, "c", b)          # its argument resolution finds b lost
    assert ftqueue.get(c, timeout=60) == 3
    assert (runs(path, "a"), runs(path, "b"), runs(path, "c")) == (2, 2, 1)
    rclient.delete(*(f"ftq:result:{r.hex()}" for r in (a, b, c)))
    assert ftqueue.get(c, timeout=60) == 3   # all three lost: get rebuilds the chain
    assert (runs(path, "a"), runs(path, "b"), runs(path, "c")) == (3, 3, 2)


def test_concurrent_getters_trigger_one_reexecution(cluster, rclient, tmp_path):
    import threading

    path = tmp_path / "runs"
    ref = make.remote(path, "a", 7)
    ftqueue.get(ref)
    rclient.delete(f"ftq:result:{ref.hex()}")
    results = []
    threads = [threading.Thread(target=lambda: results.append(ftqueue.get(ref, timeout=60)))
               for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert results == [7] * 4 and runs(path, "a") == 2


@ftqueue.remote
def plus_slowly_again(path, name, x):
    mark(path, name)
    if ftqueue.get_runtime_context().get_task_attempt_number() > 0:
        time.sleep(2)       # its rebuild is still running when a dependent starts
    return x + 1


def test_dependent_waits_for_a_rebuild_another_reader_started(cluster, start_node, rclient,
                                                              tmp_path):
    """A dependent that starts while its lost argument is being rebuilt (another reader
    asked first) waits for the new value: it used to fail with "The error of task ... is
    lost" (the argument's record was neither FINISHED nor carrying an error)."""
    import threading

    path = tmp_path / "runs"
    b = plus_slowly_again.remote(path, "b", 1)
    assert ftqueue.get(b) == 2
    c = plus.options(queue="later").remote(path, "c", b)    # queued: b is FINISHED
    rclient.delete(f"ftq:result:{b.hex()}")
    got = []
    reader = threading.Thread(target=lambda: got.append(ftqueue.get(b, timeout=60)))
    reader.start()
    wait_until(lambda: rclient.hget(f"ftq:task:{b.hex()}", "state") == "RUNNING", 30,
               "the rebuild of b to start")
    start_node(1, "--queues", "later")
    assert ftqueue.get(c, timeout=60) == 3
    reader.join()
    assert got == [2] and (runs(path, "b"), runs(path, "c")) == (2, 1)


def test_reconstruction_without_retries_fails_clearly(cluster, rclient, tmp_path):
    ref = make.options(max_retries=0).remote(tmp_path / "runs", "a", 1)
    ftqueue.get(ref)
    rclient.delete(f"ftq:result:{ref.hex()}")
    with pytest.raises(ObjectReconstructionFailedError, match="MAX_ATTEMPTS_EXCEEDED"):
        ftqueue.get(ref)
    ref = make.remote(tmp_path / "runs", "b", 1)
    ftqueue.get(ref)
    rclient.delete(f"ftq:result:{ref.hex()}", f"ftq:args:{ref.hex()}")
    with pytest.raises(ObjectReconstructionFailedError, match="LINEAGE_EVICTED"):
        ftqueue.get(ref)


def test_wait_rebuilds_lost_results_too(cluster, rclient, tmp_path):
    path = tmp_path / "runs"
    ref = make.remote(path, "a", 5)
    ftqueue.get(ref)
    rclient.delete(f"ftq:result:{ref.hex()}")
    ready, _ = ftqueue.wait([ref], timeout=60)
    assert ready == [ref] and rclient.exists(f"ftq:result:{ref.hex()}")
    assert runs(path, "a") == 2


def test_lost_put_object(cluster, rclient):
    ref = ftqueue.put("value")
    rclient.delete(f"ftq:result:{ref.hex()}")
    with pytest.raises(ObjectLostError) as info:
        ftqueue.get(ref)
    assert not isinstance(info.value, ObjectReconstructionFailedError)


def test_memory_returns_to_baseline_after_retention(redis_url, rclient, monkeypatch):
    env = child_env(FTQUEUE_RESULT_TTL_S="1", FTQUEUE_LINEAGE_TTL_S="2")
    for key, value in env.items():
        if key.startswith("FTQUEUE_"):
            monkeypatch.setenv(key, value)
    node = NodeProcess(redis_url, 2, "--lease-timeout", "2", env=env)
    ftqueue.init(address=redis_url)
    try:
        ftqueue.get(make.remote("/dev/null", "warm", 0))    # permanent keys: function, stats
        with pytest.raises(ValueError):
            ftqueue.get(_raise.remote())
        per_task = ("ftq:task:", "ftq:args:", "ftq:result:", "ftq:attempts:", "ftq:log:",
                    "ftq:children:", "ftq:dependents:", "ftq:waiters:")

        def task_keys():
            return [k for k in rclient.scan_iter("ftq:*") if k.startswith(per_task)]

        wait_until(lambda: not task_keys(), 10, "the warm-up task's keys to expire")
        def stored():   # bytes held by ftqueue's keys (not client buffers, which come and go)
            return sum(rclient.memory_usage(k) or 0 for k in rclient.scan_iter("ftq:*"))

        wait_until(lambda: rclient.zcard("ftq:index:tasks") == 0, 30, "the warm-up's index")
        baseline = stored()
        refs = [make.remote("/dev/null", "x", "v" * 1000) for _ in range(300)]
        ftqueue.get(refs)
        with pytest.raises(ValueError):
            ftqueue.get(_raise.remote())
        assert len(task_keys()) > 300
        peak = stored()
        wait_until(lambda: not task_keys(), 30, "every per-task key to expire")
        wait_until(lambda: rclient.zcard("ftq:index:tasks") == 0, 30, "the index to be trimmed")
        assert rclient.zcard("ftq:index:failed") == 0
        after = stored()
        assert peak > baseline + 300 * 1000 and after - baseline < 1024, (baseline, peak, after)
    finally:
        ftqueue.shutdown()
        node.stop()


@ftqueue.remote
def _raise():
    raise ValueError("kept for a while, then gone")


@ftqueue.remote
def square(i):
    time.sleep(0.02)
    return i * i


@pytest.fixture
def own_redis(tmp_path):
    servers = []

    def start(appendonly: bool) -> RedisServer:
        server = RedisServer.start(unix_socket=True, directory=str(tmp_path / "redis"),
                                   appendonly=appendonly)
        servers.append(server)
        return server

    yield start
    for server in servers:
        server.kill()


def test_redis_killed_and_restarted_with_aof_mid_run(own_redis):
    server = own_redis(appendonly=True)
    node = NodeProcess(server.address, 2, "--lease-timeout", "2")
    ftqueue.init(address=server.address)
    try:
        refs = [square.remote(i) for i in range(100)]
        ftqueue.flush_submissions()
        time.sleep(0.5)
        server.kill()
        time.sleep(1.0)
        server.restart()
        assert ftqueue.get(refs, timeout=120) == [i * i for i in range(100)]
        assert node.process.poll() is None, node.output()
        assert len(node.workers()) == 2
    finally:
        ftqueue.shutdown()
        node.stop()


def test_redis_restarted_empty_while_a_driver_waits(own_redis):
    server = own_redis(appendonly=False)
    node = NodeProcess(server.address, 2, "--lease-timeout", "2")
    ftqueue.init(address=server.address)
    try:
        refs = [square.options(max_retries=0).remote(i) for i in range(40)]
        ftqueue.get(refs[:5], timeout=60)
        server.restart(empty=True)      # everything in Redis is gone
        assert ftqueue.get(refs, timeout=120) == [i * i for i in range(40)]
        assert node.process.poll() is None, node.output()
        client = redis.Redis.from_url(server.address, decode_responses=True)
        wait_until(lambda: client.zcard("ftq:nodes") == 1, 10, "the node to register again")
        client.close()
        # A put object held nowhere else is simply gone, and says so.
        ref = ftqueue.put(1)
        server.restart(empty=True)
        with pytest.raises(ObjectLostError):
            ftqueue.get(ref, timeout=30)
    finally:
        ftqueue.shutdown()
        node.stop()


def test_redis_away_for_a_while_nothing_crashes(own_redis):
    server = own_redis(appendonly=True)
    node = NodeProcess(server.address, 2, "--lease-timeout", "3")
    ftqueue.init(address=server.address)
    try:
        node.wait_workers(2)
        refs = [square.remote(i) for i in range(30)]
        ftqueue.flush_submissions()
        os.kill(server.process.pid, signal.SIGSTOP)     # unresponsive, not dead
        time.sleep(2.0)
        more = [square.remote(i) for i in range(30, 40)]  # buffered while Redis is away
        os.kill(server.process.pid, signal.SIGCONT)
        assert ftqueue.get(refs + more, timeout=120) == [i * i for i in range(40)]
        assert node.process.poll() is None and len(node.workers()) == 2
    finally:
        os.kill(server.process.pid, signal.SIGCONT)
        ftqueue.shutdown()
        node.stop()


@ftqueue.remote(max_retries=-1)
def stamped(path):
    """Returns which attempt ran it: (pid, start time)."""
    started = time.time()
    with open(path, "a") as f:
        f.write(f"{os.getpid()} {started}\n")
    time.sleep(1.0)
    return os.getpid(), started


def test_old_epoch_commit_is_fenced_after_redis_lost_its_data(own_redis, tmp_path):
    """A worker that finished while Redis was down holds its outcome; Redis comes back empty
    and the driver submits the task again, which another worker claims. The held commit
    (a lease of the old epoch) must be fenced, not taken for the new attempt's (fences
    started at 0 for every task, so both attempts had fence 1)."""
    server = own_redis(appendonly=False)
    node = NodeProcess(server.address, 2, "--lease-timeout", "5")
    ledger = str(tmp_path / "ledger")
    ftqueue.init(address=server.address)
    old = 0
    try:
        node.wait_workers(2)
        ref = stamped.remote(ledger)
        wait_until(lambda: os.path.exists(ledger), 20, "the task to start")
        server.kill()
        time.sleep(1.5)                                 # it finishes: the outcome is held
        old = int(open(ledger).read().split()[0])
        os.kill(old, signal.SIGSTOP)                    # its commit comes late
        restarted = time.time()
        server.restart(empty=True)
        wait_until(lambda: len(open(ledger).read().splitlines()) == 2, 20,
                   "the task submitted again to start")
        time.sleep(0.1)
        os.kill(old, signal.SIGCONT)
        pid, started = ftqueue.get(ref, timeout=30)
        assert started > restarted and pid != old, "a commit of the old epoch was accepted"
    finally:
        if old:
            try:
                os.kill(old, signal.SIGCONT)
            except ProcessLookupError:
                pass
        ftqueue.shutdown()
        node.stop()

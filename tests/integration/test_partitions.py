"""A partitioned namespace (FTQUEUE_PARTITIONS=3) on one real redis-server: the same keys and
scripts as on a Redis Cluster (tests/integration/test_cluster.py runs them there), faster.
Tasks spread over the partitions; dependencies across partitions, nested tasks, recursive
cancel, lineage rebuild and kills keep every result right, every execution counted."""

from __future__ import annotations

import os
import signal
import time

import pytest
import redis
from conftest import NodeProcess, child_env, mark, runs, wait_until

import ftqueue
from ftqueue.exceptions import TaskCancelledError, TaskError
from ftqueue.partitions import partition_of, tags
from ftqueue.store import Store, connect
from ftqueue.store.store import PartitionsMismatch

P = 3


@pytest.fixture
def partitioned(redis_url, monkeypatch):
    monkeypatch.setenv("FTQUEUE_PARTITIONS", str(P))
    nodes: list[NodeProcess] = []

    def start(num_workers: int = 2, *args: str) -> NodeProcess:
        node = NodeProcess(redis_url, num_workers, "--lease-timeout", "3", *args,
                           env=child_env(FTQUEUE_PARTITIONS=str(P)))
        nodes.append(node)
        return node

    ftqueue.init(address=redis_url)
    try:
        yield start
    finally:
        ftqueue.shutdown()
        for node in nodes:
            node.stop()


@ftqueue.remote
def add(path, x, y):
    mark(path)
    return x + y


@ftqueue.remote
def square(i):
    return i * i


@ftqueue.remote
def fan_out(n):
    return sum(ftqueue.get([square.remote(i) for i in range(n)]))


@ftqueue.remote
def boom():
    raise ValueError("boom")


@ftqueue.remote
def sleeper(seconds):
    time.sleep(seconds)
    return seconds


@ftqueue.remote
def parent_of_two():
    return ftqueue.get([sleeper.remote(60) for _ in range(2)])


def test_tasks_spread_over_partitions_and_dependencies_cross_them(partitioned, tmp_path,
                                                                   redis_url):
    partitioned(2)
    path = tmp_path / "runs"
    leaves = [add.remote(str(path), i, 0) for i in range(30)]
    assert len({partition_of(r.hex(), P) for r in leaves}) == P
    # A reduce over leaves of every partition: its first dependency decides where it lives,
    # the others reach it through the outbox.
    pairs = [add.remote(str(path), leaves[i], leaves[i + 1]) for i in range(0, 30, 2)]
    total = add.remote(str(path), pairs[0], pairs[-1])
    assert ftqueue.get(pairs) == [2 * i + 1 for i in range(0, 30, 2)]
    assert ftqueue.get(total) == 1 + 57
    assert len(runs(path)) == 30 + 15 + 1
    # Every key of the namespace is in the layout of one of its partitions, or its own.
    client = redis.Redis.from_url(redis_url)
    prefixes = {"{" + t + "}" for t in tags("ftq", P)} | {"ftq"}
    assert {k.decode().split(":")[0] for k in client.scan_iter()} <= prefixes
    client.close()


def test_a_failed_dependency_in_another_partition_fails_its_dependent(partitioned):
    partitioned(2)
    bad = boom.remote()
    dependents = [add.remote("/dev/null", bad, i) for i in range(6)]
    assert len({partition_of(d.hex(), P) for d in [bad, *dependents]}) >= 1
    for ref in dependents:
        with pytest.raises(TaskError, match="could not be computed"):
            ftqueue.get(ref, timeout=30)


def test_nested_tasks_and_recursive_cancel(partitioned):
    partitioned(2)
    assert ftqueue.get(fan_out.remote(12), timeout=60) == sum(i * i for i in range(12))
    parent = parent_of_two.remote()
    wait_until(lambda: len(ftqueue.state.list_tasks(
        filters=[("name", "=", "sleeper"), ("state", "=", "RUNNING")])) == 1, 30,
        "a child running")
    ftqueue.cancel(parent, recursive=True)
    with pytest.raises(TaskCancelledError):
        ftqueue.get(parent, timeout=30)
    children = ftqueue.state.list_tasks(filters=[("name", "=", "sleeper")])
    wait_until(lambda: all(t["state"] == "FAILED" for t in ftqueue.state.list_tasks(
        filters=[("name", "=", "sleeper")])), 30, "every child cancelled")
    assert len(children) == 2


def test_worker_sigkill_retries_in_its_partition(partitioned, tmp_path):
    node = partitioned(2)
    path = tmp_path / "runs"
    refs = [add.remote(str(path), i, 1) for i in range(10)]
    ftqueue.get(refs, timeout=60)
    long = [sleeper.remote(1.5) for _ in range(2)]
    wait_until(lambda: len(ftqueue.state.list_tasks(
        filters=[("name", "=", "sleeper"), ("state", "=", "RUNNING")])) == 2, 30, "running")
    os.kill(node.workers()[0].pid, signal.SIGKILL)
    assert ftqueue.get(long, timeout=60) == [1.5, 1.5]


def test_a_process_with_other_partitions_is_refused(partitioned, redis_url):
    partitioned(1)
    with pytest.raises(PartitionsMismatch, match="has 3 partition"):
        Store(connect(redis_url), partitions=4).ping()

"""A partitioned namespace on a real Redis Cluster (tests/clusterkit.py): one queue's tasks
spread over every primary, each script still on keys of one slot (the cluster refuses any
other with CROSSSLOT), dependencies across partitions, the seed's programs, and a primary
SIGKILLed mid-workload with its replica promoted: every result right, every execution
counted."""

from __future__ import annotations

import os
import signal
import time
from collections.abc import Iterator

import pytest
import redis
from clusterkit import flush, node_starter
from conftest import child_env, mark, run_script, runs, wait_until
from test_cluster import logged, read_log, replica_of
from test_seed_examples import CRASH_RETRY_EXAMPLE, ERRORS_EXAMPLE

import ftqueue
from ftqueue.embedded_cluster import LocalCluster
from ftqueue.exceptions import TaskCancelledError
from ftqueue.partitions import tags
from ftqueue.store import Store, connect


@pytest.fixture(scope="module")
def cluster3() -> Iterator[LocalCluster]:
    cluster = LocalCluster.start(3, 0)
    try:
        yield cluster
    finally:
        cluster.stop()


@ftqueue.remote
def add(x, y):
    return x + y


@ftqueue.remote
def fan_out(n):
    return sum(ftqueue.get([add.remote(i, i) for i in range(n)]))


@ftqueue.remote
def sleeper(seconds, path):
    mark(path)
    time.sleep(seconds)
    return seconds


@ftqueue.remote
def parent(path, task_ids):
    return ftqueue.get([sleeper.options(task_id=t).remote(60, path) for t in task_ids])


def test_lineage_cancel_and_kills_across_partitions_on_a_cluster(cluster3, monkeypatch,
                                                                 tmp_path):
    monkeypatch.setenv("FTQUEUE_PARTITIONS", "6")
    flush(cluster3)
    start, nodes = node_starter(cluster3.address)
    try:
        doomed = start(2, "--lease-timeout", "2")
        doomed.wait_workers(2)
        ftqueue.init(address=cluster3.address)
        store = Store(connect(cluster3.address))
        # A worker SIGKILLed, then its whole node: the tasks run again.
        path = tmp_path / "killed"
        refs = [sleeper.remote(1.0, str(path)) for _ in range(2)]
        wait_until(lambda: len(runs(path)) == 2, 30, "both running")
        os.kill(int(runs(path)[0]), signal.SIGKILL)
        wait_until(lambda: len(runs(path)) == 3, 30, "the killed one again")
        start(2, "--lease-timeout", "2")
        doomed.signal_group(signal.SIGKILL)
        assert ftqueue.get(refs, timeout=60) == [1.0, 1.0]
        # Lineage: a result lost on one primary, rebuilt for a dependent on another.
        first = add.remote(1, 1)
        other = next(r for r in (add.remote(0, i) for i in range(50))
                     if store.part_of(r.hex()) != store.part_of(first.hex()))
        ftqueue.get([first, other], timeout=60)
        owner = redis.Redis.from_url(cluster3.owner_of(
            store.keys_for(first.hex()).stats).address)
        assert owner.delete(store.keys_for(first.hex()).result(first.hex())) == 1
        owner.close()
        assert ftqueue.get(add.remote(other, first), timeout=60) == 2 + other_value(other)
        # Recursive cancel reaches children with ids of their own in other partitions.
        named = [f"kid-{i}" for i in range(4)]
        path = tmp_path / "kids"
        ref = parent.remote(str(path), named)
        wait_until(lambda: len(runs(path)) >= 1, 30, "a child running")
        ftqueue.cancel(ref)
        for r in [ref, *map(ftqueue.ObjectRef.from_hex, named)]:
            with pytest.raises(TaskCancelledError):
                ftqueue.get(r, timeout=30)
    finally:
        ftqueue.shutdown()
        for node in nodes:
            node.stop()


def other_value(ref):
    return ftqueue.get(ref)


def test_one_queue_spreads_over_every_primary(cluster3, monkeypatch):
    monkeypatch.setenv("FTQUEUE_PARTITIONS", "6")
    flush(cluster3)
    start, nodes = node_starter(cluster3.address)
    try:
        start(2).wait_workers(2)
        ftqueue.init(address=cluster3.address)
        env = child_env(FTQUEUE_ADDRESS=cluster3.address)
        result = run_script(ERRORS_EXAMPLE, env=env)
        assert result.returncode == 0, result.stderr
        assert "At least one of the input arguments for this task could not be computed:" in \
            result.stdout
        result = run_script(CRASH_RETRY_EXAMPLE, env=env)
        assert result.returncode == 0, result.stderr
        leaves = [add.remote(i, 0) for i in range(120)]
        sums = [add.remote(leaves[i], leaves[-1 - i]) for i in range(60)]
        assert ftqueue.get(sums, timeout=120) == [119] * 60
        assert ftqueue.get(fan_out.remote(10), timeout=60) == 90
        # Every primary holds task records, about a third each (two partitions apiece).
        counts = []
        for server in cluster3.primaries:
            client = redis.Redis.from_url(server.address)
            counts.append(sum(1 for _ in client.scan_iter(match="{ftq.*}:task:*", count=1000)))
            client.close()
        assert all(c > 0 for c in counts) and min(counts) > max(counts) / 3, counts
        owners = {cluster3.owner_of("{" + t + "}:x").address for t in tags("ftq", 6)}
        assert len(owners) == 3
    finally:
        ftqueue.shutdown()
        for node in nodes:
            node.stop()


def test_a_primary_sigkilled_mid_workload_loses_nothing(tmp_path, monkeypatch):
    """Partitioned over 3 primaries with a replica each; the primary of one partition is
    SIGKILLed while tasks run. Every result is right; a task ran twice only if it lives on
    the killed primary (running at the kill, or its commit not on the replica yet)."""
    monkeypatch.setenv("FTQUEUE_PARTITIONS", "3")
    cluster = LocalCluster.start(3, 1)
    start, nodes = node_starter(cluster.address)
    log = tmp_path / "executions"
    try:
        for _ in range(2):
            start(2, "--lease-timeout", "3")
        ftqueue.init(address=cluster.address)
        store = Store(connect(cluster.address))
        refs = [logged.remote(i, log, 0.02) for i in range(240)]
        ftqueue.flush_submissions(timeout=60)
        wait_until(lambda: sum(1 for e in read_log(log) if e[0] == "E") >= 60, 60,
                   "a quarter of the tasks to run")
        victim = cluster.owner_of(store.parts[0].stats)
        heir = replica_of(cluster, victim)
        kill_ns = time.time_ns()
        victim.kill()
        wait_until(lambda: cluster.owner_of(store.parts[0].stats) is heir, 30,
                   "the replica promoted")
        assert ftqueue.get(refs, timeout=120) == [i * i for i in range(240)]
        on_victim = {r.hex() for r in refs if store.part_of(r.hex()) == 0}
    finally:
        ftqueue.shutdown()
        for node in nodes:
            node.stop()
        cluster.stop()
    entries = read_log(log)
    starts: dict[str, int] = {}
    for kind, task, _, _ in entries:
        if kind == "S":
            starts[task] = starts.get(task, 0) + 1
    assert len(starts) == 240
    assert any(kind == "E" and at > kill_ns for kind, _, _, at in entries)
    duplicated = {task for task, n in starts.items() if n > 1}
    print(f"tasks run twice {len(duplicated)} (of {len(on_victim)} on the killed primary)")
    assert duplicated <= on_victim, duplicated - on_victim
    assert os.path.exists(log)

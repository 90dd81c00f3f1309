"""Adversarial tests of resources and scheduling strategies: nodes killed or frozen around
tasks pinned to them, capacity after node loss, with real nodes and a real Redis."""

from __future__ import annotations

import os
import signal
import time

import psutil
import pytest
from conftest import NodeProcess, mark, runs, wait_until

import ftqueue
from ftqueue.api import _ensure_client
from ftqueue.exceptions import TaskUnschedulableError
from ftqueue.util.scheduling_strategies import NodeAffinitySchedulingStrategy


@ftqueue.remote
def hold(seconds):
    time.sleep(seconds)
    return os.getpid()


@ftqueue.remote
def plus_one(x):
    return x + 1


def _node_id(node):
    pid = node.pid
    return wait_until(lambda: next((n["node_id"] for n in ftqueue.state.list_nodes()
                                    if n["pid"] == pid and n["state"] == "ALIVE"), None),
                      30, "the node's id")


def _busy(node_id, n):
    wait_until(lambda: sum(1 for w in ftqueue.state.list_workers()
                           if w["node_id"] == node_id and w["current_task"]) >= n, 30,
               f"{n} busy workers on {node_id}")


def test_a_hard_pinned_task_whose_node_died_fails_and_releases_its_dependents(
        driver, start_node):
    """The claim that fails a task hard-pinned to a dead node finished it halfway (claim.lua
    could not write the failed index): its dependents and waiters were never told, and the
    claim itself failed, so the dependent below waited forever."""
    victim = start_node(1, "--lease-timeout", "2")
    other = start_node(1, "--lease-timeout", "2")
    victim_id = _node_id(victim)
    _node_id(other)
    pin = NodeAffinitySchedulingStrategy(victim_id, soft=False)
    blocker = hold.options(scheduling_strategy=pin, max_retries=0).remote(60)
    _busy(victim_id, 1)
    pinned = plus_one.options(scheduling_strategy=pin).remote(1)
    after = plus_one.remote(pinned)
    ftqueue.flush_submissions(10)
    victim.stop()
    with pytest.raises(TaskUnschedulableError, match="gone"):
        ftqueue.get(pinned, timeout=60)
    with pytest.raises(TaskUnschedulableError):
        ftqueue.get(after, timeout=30)
    with pytest.raises(ftqueue.exceptions.WorkerCrashedError):
        ftqueue.get(blocker, timeout=30)
    assert ftqueue.get(plus_one.remote(41), timeout=30) == 42
    assert "claiming failed" not in other.output(), other.output()


def test_a_hard_pinned_task_fails_when_its_node_dies_even_if_no_other_node_fits_it(
        driver, start_node):
    """A task hard-pinned to a node that dies was left to "the first node to claim it": when
    no live node could fit its shape (or served its queue), nobody ever claimed it and its
    `get` waited forever. It fails as unschedulable when its node is found gone."""
    victim = start_node(1, "--lease-timeout", "2", "--num-gpus", "1")
    other = start_node(1, "--lease-timeout", "2")
    victim_id = _node_id(victim)
    _node_id(other)
    pin = NodeAffinitySchedulingStrategy(victim_id, soft=False)
    blocker = hold.options(scheduling_strategy=pin, max_retries=0).remote(60)
    _busy(victim_id, 1)
    pinned = plus_one.options(scheduling_strategy=pin, num_gpus=1).remote(1)
    ftqueue.flush_submissions(10)
    victim.stop()
    with pytest.raises(TaskUnschedulableError, match="gone"):
        ftqueue.get(pinned, timeout=60)
    with pytest.raises(ftqueue.exceptions.WorkerCrashedError):
        ftqueue.get(blocker, timeout=30)


@ftqueue.remote
def span(seconds):
    start = time.time()
    time.sleep(seconds)
    return (start, time.time())


def _most_at_once(spans):
    edges = sorted([(s[0], 1) for s in spans] + [(s[1], -1) for s in spans])
    now = best = 0
    for _, step in edges:
        now += step
        best = max(best, now)
    return best


def _state_of(node_id):
    return next((n["state"] for n in ftqueue.state.list_nodes() if n["node_id"] == node_id),
                None)


def test_a_node_declared_dead_while_frozen_keeps_to_its_capacity_when_it_comes_back(
        driver, start_node):
    """A node frozen past its lease is declared dead (its free capacity dropped with its
    pins); when it thaws, its heartbeat made it alive again without any capacity record, and
    a node without one counts nothing: it ran as many tasks at once as it had workers."""
    node = start_node(3, "--lease-timeout", "2", "--num-cpus", "1")
    node_id = _node_id(node)
    node.wait_workers(3)
    total = ftqueue.cluster_resources()
    assert total["CPU"] == 1
    wait_until(lambda: ftqueue.available_resources() == total, 30, "all free")
    store = _ensure_client().store
    node.signal_group(signal.SIGSTOP)
    try:
        def dead():
            store.sweep(2000, index_ttl_ms=3_600_000)
            return _state_of(node_id) == "DEAD"

        wait_until(dead, 30, "the frozen node declared dead")
    finally:
        node.signal_group(signal.SIGCONT)
    wait_until(lambda: _state_of(node_id) == "ALIVE", 30, "the node alive again")
    spans = ftqueue.get([span.remote(0.3) for _ in range(4)], timeout=60)
    assert _most_at_once(spans) == 1, spans
    wait_until(lambda: ftqueue.available_resources() == total, 30, "all free again")


def test_a_queue_with_more_shapes_than_a_claim_names_runs_them_all(driver, start_node):
    """A worker names at most MAX_SHAPES shapes per queue in a claim; it took the first ones
    in sorted order, always, so a task of any later shape (a queue that ever saw more than
    16: memory= values, fractions) was never claimed and its `get` waited forever."""
    from ftqueue.shapes import MAX_SHAPES

    start_node(2, "--num-cpus", "2")
    wait_until(lambda: ftqueue.nodes(), 30, "a node")
    amounts = [round(0.01 * (i + 1), 2) for i in range(MAX_SHAPES + 4)]
    refs = [plus_one.options(num_cpus=c).remote(i) for i, c in enumerate(amounts)]
    assert ftqueue.get(refs, timeout=60) == [i + 1 for i in range(len(amounts))]


@ftqueue.remote(max_retries=1)
def long_first_attempt(path):
    if mark(path) == 0:
        time.sleep(120)
    return "second attempt"


def test_a_revived_node_stops_the_attempts_that_were_handed_to_others(driver, start_node,
                                                                      tmp_path):
    """A node frozen past its lease is declared dead and its tasks retried; when it thawed,
    its workers went on running those old attempts (fenced at commit, but running: twice
    the work, and on top of the capacity the retries took). The node stops them."""
    node = start_node(2, "--lease-timeout", "2", "--num-cpus", "1")
    node_id = _node_id(node)
    path = tmp_path / "runs"
    ref = long_first_attempt.remote(path)
    pid = int(wait_until(lambda: runs(path), 30, "the first attempt")[0])
    store = _ensure_client().store
    node.signal_group(signal.SIGSTOP)
    try:
        def swept():
            store.sweep(2000, index_ttl_ms=3_600_000)
            return _state_of(node_id) == "DEAD" and store.redis.hget(
                store.keys.task(ref.hex()), "attempt") not in (b"0", "0")

        wait_until(swept, 30, "the frozen node declared dead, its task swept")
    finally:
        node.signal_group(signal.SIGCONT)
    assert ftqueue.get(ref, timeout=60) == "second attempt"
    wait_until(lambda: not psutil.pid_exists(pid) or psutil.Process(pid).status()
               == psutil.STATUS_ZOMBIE, 30, "the old attempt stopped")
    total = ftqueue.cluster_resources()
    wait_until(lambda: ftqueue.available_resources() == total, 30, "all free again")


def test_a_node_stops_the_attempts_redis_forgot_when_it_restarts_empty(own_redis, tmp_path):
    """Redis restarted empty: the node registers again with all its capacity free and the
    driver submits its tasks again, but the workers went on running the attempts Redis
    forgot (their outcomes can only be fenced): each such task ran twice at once, over the
    node's capacity. The node stops them when it finds Redis emptied."""
    node = NodeProcess(own_redis.address, 2, "--lease-timeout", "2", "--num-cpus", "1")
    ftqueue.init(address=own_redis.address)
    try:
        path = tmp_path / "runs"
        ref = long_first_attempt.remote(path)
        pid = int(wait_until(lambda: runs(path), 30, "the first attempt")[0])
        own_redis.restart(empty=True)
        assert ftqueue.get(ref, timeout=60) == "second attempt"
        wait_until(lambda: not psutil.pid_exists(pid) or psutil.Process(pid).status()
                   == psutil.STATUS_ZOMBIE, 30, "the forgotten attempt stopped")
    finally:
        ftqueue.shutdown()
        node.stop()


def test_a_custom_resource_may_be_called_blocked(driver, start_node):
    """A node's free hash also held a 'blocked' flag (a claim found no room): a custom
    resource of that name was overwritten by the flag, then deleted with it, and the tasks
    needing it waited forever."""
    start_node(3, "--resources", '{"blocked": 2}')
    wait_until(lambda: ftqueue.nodes(), 30, "a node")
    refs = [hold.options(resources={"blocked": 1}).remote(0.3) for _ in range(6)]
    assert len(set(ftqueue.get(refs, timeout=60))) >= 1
    total = ftqueue.cluster_resources()
    assert total["blocked"] == 2
    wait_until(lambda: ftqueue.available_resources() == total, 30, "all free again")


@ftqueue.remote(num_gpus=1)
def gpu_span(seconds):
    start = time.time()
    time.sleep(seconds)
    return (start, time.time(), os.environ.get("CUDA_VISIBLE_DEVICES"))


def test_workers_of_a_node_declared_dead_claim_nothing(driver, start_node):
    """Only the node's supervisor froze: it was declared dead (its free capacity dropped),
    but its workers went on claiming, and a claim on a node without a capacity record counts
    nothing: both workers ran a one-GPU task at once, without GPU ids."""
    node = start_node(2, "--lease-timeout", "2", "--num-gpus", "1")
    node_id = _node_id(node)
    node.wait_workers(2)
    store = _ensure_client().store
    os.kill(node.pid, signal.SIGSTOP)
    try:
        def dead():
            store.sweep(2000, index_ttl_ms=3_600_000)
            return _state_of(node_id) == "DEAD"

        wait_until(dead, 30, "the node declared dead")
        refs = [gpu_span.remote(0.5) for _ in range(2)]
        ftqueue.wait(refs, num_returns=2, timeout=3)     # what its workers do meanwhile
    finally:
        os.kill(node.pid, signal.SIGCONT)
    spans = ftqueue.get(refs, timeout=60)
    assert [s[2] for s in spans] == ["0", "0"], spans
    assert _most_at_once(spans) == 1, spans


def test_a_corrupt_free_capacity_record_does_not_stop_its_node(driver, start_node, rclient):
    """A node's free hash overwritten with another type failed every claim of that node
    (WRONGTYPE), for good: nothing ran there again. It is isolated and rebuilt from what the
    node offers, less what its running tasks hold."""
    start_node(2, "--num-cpus", "2", "--num-gpus", "1")
    node_id = wait_until(lambda: [n["NodeID"] for n in ftqueue.nodes() if n["Alive"]], 30,
                         "a node")[0]
    total = ftqueue.cluster_resources()
    assert ftqueue.get(plus_one.remote(1), timeout=30) == 2
    key = f"ftq:node_free:{node_id}"
    rclient.delete(key)
    rclient.set(key, "garbage")
    assert ftqueue.get([plus_one.remote(i) for i in range(4)], timeout=30) == [1, 2, 3, 4]
    assert rclient.type(key) == "hash"
    assert key in rclient.hkeys("ftq:corrupt")
    spans = ftqueue.get([gpu_span.remote(0.2) for _ in range(2)], timeout=30)
    assert [s[2] for s in spans] == ["0", "0"] and _most_at_once(spans) == 1, spans
    wait_until(lambda: ftqueue.available_resources() == total, 30, "all free again")

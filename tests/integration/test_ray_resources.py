"""Resources, GPUs, scheduling strategies and the cluster view, with real nodes (a node
declares GPUs with --num-gpus; no GPU is needed)."""

from __future__ import annotations

import json
import logging
import os
import signal
import subprocess
import sys
import time

import pytest
from conftest import child_env, wait_until

import ftqueue
from ftqueue.exceptions import TaskUnschedulableError
from ftqueue.util.scheduling_strategies import NodeAffinitySchedulingStrategy


@ftqueue.remote
def span(seconds):
    """(pid, start, end, CUDA_VISIBLE_DEVICES, gpu ids, node id)."""
    start = time.time()
    time.sleep(seconds)
    return (os.getpid(), start, time.time(), os.environ.get("CUDA_VISIBLE_DEVICES"),
            ftqueue.get_gpu_ids(), ftqueue.get_runtime_context().get_node_id())


@ftqueue.remote
def meet(folder, n):
    """Run until n tasks run at once (each leaves a file in folder): proves they can."""
    open(os.path.join(folder, str(os.getpid())), "w").close()
    deadline = time.monotonic() + 60
    while len(os.listdir(folder)) < n:
        if time.monotonic() > deadline:
            raise TimeoutError(f"only {len(os.listdir(folder))} of {n} ran at once")
        time.sleep(0.01)
    return os.environ.get("CUDA_VISIBLE_DEVICES")


def at_once(tmp_path, name, n, **options):
    """n tasks with these options, shown to run all at once; their CUDA_VISIBLE_DEVICES."""
    folder = tmp_path / name
    folder.mkdir()
    return ftqueue.get([meet.options(**options).remote(str(folder), n) for _ in range(n)],
                       timeout=90)


def most_at_once(spans):
    """The largest number of spans that overlap in time."""
    edges = sorted([(s[1], 1) for s in spans] + [(s[2], -1) for s in spans])
    now = best = 0
    for _, step in edges:
        now += step
        best = max(best, now)
    return best


def node_ids():
    return {n["NodeID"] for n in ftqueue.nodes() if n["Alive"]}


def wait_nodes(n):
    return wait_until(lambda: len(node_ids()) >= n and node_ids(), 30, f"{n} live nodes")


def test_a_node_runs_what_fits_its_free_cpus(driver, start_node, tmp_path):
    start_node(4, "--num-cpus", "2")
    wait_nodes(1)
    at_once(tmp_path, "ones", 2)
    assert most_at_once(ftqueue.get([span.remote(0.3) for _ in range(6)], timeout=60)) <= 2
    twos = ftqueue.get([span.options(num_cpus=2).remote(0.2) for _ in range(3)], timeout=60)
    assert most_at_once(twos) == 1
    at_once(tmp_path, "halves", 4, num_cpus=0.5)     # as many as there are workers


def test_gpu_tasks_get_their_own_ids_unless_they_ask_for_fractions(driver, start_node,
                                                                   tmp_path):
    start_node(4, "--num-gpus", "2", "--num-cpus", "4")
    wait_nodes(1)
    assert sorted(at_once(tmp_path, "whole", 2, num_gpus=1)) == ["0", "1"]
    whole = ftqueue.get([span.options(num_gpus=1).remote(0.3) for _ in range(4)], timeout=60)
    assert most_at_once(whole) <= 2
    for s in whole:
        assert s[3] in ("0", "1") and s[4] == [int(s[3])]
    overlapping = [(a, b) for a in whole for b in whole if a is not b and a[1] < b[2]
                   and b[1] < a[2]]
    assert all(a[3] != b[3] for a, b in overlapping)
    both = ftqueue.get(span.options(num_gpus=2).remote(0), timeout=60)
    assert both[3] == "0,1" and both[4] == [0, 1]
    halves = at_once(tmp_path, "halves", 4, num_gpus=0.5, num_cpus=0)
    assert sorted(halves) == ["0", "0", "1", "1"]
    plain = ftqueue.get(span.remote(0), timeout=60)
    assert plain[3] is None and plain[4] == []     # a CPU task sees no GPU of its own


def test_a_task_that_fits_nowhere_waits_without_blocking_the_queue(driver, start_node,
                                                                    caplog):
    start_node(2)
    wait_nodes(1)
    big = span.options(num_gpus=1).remote(0)
    with caplog.at_level(logging.WARNING, logger="ftqueue"):
        assert len(ftqueue.get([span.remote(0) for _ in range(5)], timeout=60)) == 5
        assert ftqueue.wait([big], timeout=2.5)[0] == []
    warnings = [r.getMessage() for r in caplog.records if "missing GPU=1" in r.getMessage()]
    assert len(warnings) == 1 and "span" in warnings[0], warnings
    assert ftqueue.state.list_tasks([("task_id", "=", big.hex())])[0]["state"] == \
        "PENDING_NODE_ASSIGNMENT"
    assert ftqueue.state.list_infeasible() == [
        {"queue": "default", "shape": "CPU=1,GPU=1", "tasks": 1, "missing": {"GPU": 1}}]
    status = subprocess.run([sys.executable, "-m", "ftqueue", "status", "--address",
                             ftqueue.api._client.address], capture_output=True, text=True,
                            env=child_env(), timeout=60)
    assert "need CPU=1,GPU=1, which no live node has (missing GPU=1)" in status.stdout
    start_node(1, "--num-gpus", "1")
    assert ftqueue.get(big, timeout=60)[3] == "0"


def test_custom_resources_and_memory_are_honoured(driver, start_node):
    start_node(3, "--resources", '{"accel": 1}', "--memory", "3G")
    wait_nodes(1)
    accel = ftqueue.get([span.options(resources={"accel": 1}).remote(0.3) for _ in range(3)],
                        timeout=60)
    assert most_at_once(accel) == 1
    mem = ftqueue.get([span.options(memory=2 * 1024 ** 3).remote(0.3) for _ in range(3)],
                      timeout=60)
    assert most_at_once(mem) == 1


def test_cluster_view_shows_totals_and_what_is_free(driver, start_node, tmp_path):
    start_node(2, "--num-cpus", "2", "--num-gpus", "2", "--resources", '{"accel": 3}',
               "--memory", "1G")
    wait_nodes(1)
    total = ftqueue.cluster_resources()
    assert total == {"CPU": 2, "GPU": 2, "accel": 3, "memory": 1024 ** 3}
    assert ftqueue.available_resources() == total
    ref = span.options(num_gpus=1, resources={"accel": 2}).remote(3)
    wait_until(lambda: ftqueue.available_resources().get("GPU") == 1, 30, "the GPU held")
    assert ftqueue.available_resources()["accel"] == 1
    assert ftqueue.available_resources()["CPU"] == 1
    node, = ftqueue.nodes()
    assert node["Alive"] and node["Resources"] == total and node["GPUIDs"] == ["0", "1"]
    row = ftqueue.state.list_tasks([("task_id", "=", ref.hex())], detail=True)[0]
    assert row["required_resources"] == {"CPU": 1, "GPU": 1, "accel": 2}
    listed = subprocess.run([sys.executable, "-m", "ftqueue", "list", "nodes", "--address",
                             ftqueue.api._client.address, "--format", "json"],
                            capture_output=True, text=True, env=child_env(), timeout=60)
    shown, = json.loads(listed.stdout)
    assert shown["resources_free"]["GPU"] == 1 and shown["resources_total"]["GPU"] == 2
    status = subprocess.run([sys.executable, "-m", "ftqueue", "status", "--address",
                             ftqueue.api._client.address], capture_output=True, text=True,
                            env=child_env(), timeout=60)
    assert "resources free / offered: CPU 1/2   GPU 1/2   accel 1/3   memory 1G/1G" \
        in status.stdout, status.stdout
    ftqueue.get(ref, timeout=60)
    wait_until(lambda: ftqueue.available_resources() == total, 30, "everything free again")


def test_a_killed_worker_gives_its_resources_back(driver, start_node, tmp_path):
    node = start_node(2, "--num-gpus", "1", "--num-cpus", "2")
    wait_nodes(1)
    first = span.options(num_gpus=1, max_retries=0).remote(60)
    wait_until(lambda: ftqueue.available_resources().get("GPU") == 0, 30, "the GPU held")
    pid = wait_until(lambda: next((w["pid"] for w in ftqueue.state.list_workers()
                                   if w["current_task"] == first.hex()), None), 30,
                     "the worker running it")
    assert pid in [w.pid for w in node.workers()]
    os.kill(pid, signal.SIGKILL)
    with pytest.raises(ftqueue.exceptions.WorkerCrashedError):
        ftqueue.get(first, timeout=60)
    assert ftqueue.get(span.options(num_gpus=1).remote(0), timeout=60)[3] == "0"


def test_spread_places_tasks_on_every_node_in_turn(driver, start_node):
    start_node(2)
    start_node(2)
    wait_nodes(2)
    spans = ftqueue.get([span.options(scheduling_strategy="SPREAD").remote(0.05)
                         for _ in range(10)], timeout=60)
    per_node = {}
    for s in spans:
        per_node[s[5]] = per_node.get(s[5], 0) + 1
    assert sorted(per_node.values()) == [5, 5], per_node


def test_node_affinity_hard_soft_and_dead_nodes(driver, start_node):
    a = start_node(2, "--lease-timeout", "2")
    start_node(2, "--lease-timeout", "2")
    ids = wait_nodes(2)
    target = sorted(ids)[0]
    hard = NodeAffinitySchedulingStrategy(target, soft=False)
    assert {s[5] for s in ftqueue.get([span.options(scheduling_strategy=hard).remote(0)
                                       for _ in range(6)], timeout=60)} == {target}
    with pytest.raises(TaskUnschedulableError, match="no live node"):
        ftqueue.get(span.options(scheduling_strategy=NodeAffinitySchedulingStrategy(
            "0" * 32, soft=False)).remote(0), timeout=60)
    soft = ftqueue.get(span.options(scheduling_strategy=NodeAffinitySchedulingStrategy(
        "f" * 32, soft=True)).remote(0), timeout=60)
    assert soft[5] in ids
    # Tasks pinned to a node that dies before they start: soft ones run elsewhere, hard fail.
    victim, victim_id = a, _node_of(a)
    blockers = [span.options(scheduling_strategy=NodeAffinitySchedulingStrategy(
        victim_id, soft=False), max_retries=0).remote(30) for _ in range(2)]
    wait_until(lambda: sum(1 for w in ftqueue.state.list_workers()
                           if w["node_id"] == victim_id and w["current_task"]) == 2, 30,
               "the victim's workers busy")
    soft_ref = span.options(scheduling_strategy=NodeAffinitySchedulingStrategy(
        victim_id, soft=True)).remote(0)
    hard_ref = span.options(scheduling_strategy=NodeAffinitySchedulingStrategy(
        victim_id, soft=False)).remote(0)
    ftqueue.flush_submissions(10)
    victim.stop()
    assert ftqueue.get(soft_ref, timeout=60)[5] != victim_id
    with pytest.raises(TaskUnschedulableError, match="gone"):
        ftqueue.get(hard_ref, timeout=60)
    for ref in blockers:
        with pytest.raises(ftqueue.exceptions.WorkerCrashedError):
            ftqueue.get(ref, timeout=60)


def _node_of(node):
    pid = node.pid
    return wait_until(lambda: next((n["node_id"] for n in ftqueue.state.list_nodes()
                                    if n["pid"] == pid and n["state"] == "ALIVE"), None),
                      30, "the node's id")

"""Retries as in Ray, crash detection, node loss, fencing and graceful shutdown: real
processes, real signals."""

from __future__ import annotations

import os
import signal
import time

import psutil
import pytest
from conftest import mark, runs, wait_until

import ftqueue
import ftqueue.state
from ftqueue.exceptions import NodeDiedError, TaskError, WorkerCrashedError


@ftqueue.remote(max_retries=2)
def crash_always(path):
    mark(path)
    os._exit(1)


@ftqueue.remote
def crash_until(path, n):
    if mark(path) < n:
        os._exit(0)
    return "survived"


@ftqueue.remote
def sleep_then(path, seconds, value):
    mark(path)
    time.sleep(seconds)
    return value


class RandomError(Exception):
    pass


@ftqueue.remote
def raise_always(path, cls=RandomError):
    mark(path)
    raise cls("Failed!")


@ftqueue.remote
def alternate(path):
    """Odd executions raise, even ones crash the worker."""
    if mark(path) % 2 == 0:
        raise RandomError("app error")
    os._exit(1)


def attempts(rclient, task_id) -> list[dict]:
    return ftqueue.state.get_task(task_id)


def test_sigkilled_worker_task_is_retried_and_attempts_recorded(cluster, rclient, tmp_path):
    path = tmp_path / "runs"
    ref = sleep_then.remote(path, 2.0, "done")
    wait_until(lambda: runs(path), 30, "the task to start")
    os.kill(int(runs(path)[0]), signal.SIGKILL)
    assert ftqueue.get(ref, timeout=60) == "done"
    assert len(runs(path)) == 2
    rows = attempts(rclient, ref.hex())
    assert [(r["attempt_number"], r["state"], r["error_type"]) for r in rows] == [
        (0, "FAILED", "WORKER_DIED"), (1, "FINISHED", "")]
    assert "killed by signal SIGKILL" in rows[0]["error_message"]
    assert rows[0]["end_time"] >= rows[0]["start_time"]
    assert rows[0]["worker_id"] != rows[1]["worker_id"]


def test_crash_every_time_exhausts_max_retries(cluster, tmp_path):
    path = tmp_path / "runs"
    with pytest.raises(WorkerCrashedError) as info:
        ftqueue.get(crash_always.remote(path), timeout=60)
    assert not isinstance(info.value, NodeDiedError)
    assert len(runs(path)) == 3


def test_env_default_max_retries_zero(cluster, tmp_path, monkeypatch):
    monkeypatch.setenv("FTQUEUE_TASK_MAX_RETRIES", "0")
    path = tmp_path / "runs"
    with pytest.raises(WorkerCrashedError):
        ftqueue.get(crash_until.remote(path, 1), timeout=60)
    assert len(runs(path)) == 1


def test_infinite_retries_survive_many_crashes(cluster, tmp_path):
    path = tmp_path / "runs"
    ref = crash_until.options(max_retries=-1).remote(path, 6)
    assert ftqueue.get(ref, timeout=90) == "survived"
    assert len(runs(path)) == 7


def test_sys_exit_in_task_is_a_worker_death(cluster, tmp_path):
    @ftqueue.remote(max_retries=1)
    def exits(path):
        mark(path)
        import sys
        sys.exit(0)

    path = tmp_path / "runs"
    with pytest.raises(WorkerCrashedError):
        ftqueue.get(exits.remote(path), timeout=60)
    assert len(runs(path)) == 2


@pytest.mark.parametrize("options, executions, expected", [
    (dict(max_retries=3), 1, RandomError),                               # retry_exceptions=False
    (dict(max_retries=2, retry_exceptions=True), 3, RandomError),
    (dict(max_retries=2, retry_exceptions=[RandomError]), 3, RandomError),
    (dict(max_retries=2, retry_exceptions=[KeyError]), 1, RandomError),   # allowlist miss
])
def test_retry_exceptions_truth_table(cluster, tmp_path, options, executions, expected):
    path = tmp_path / "runs"
    with pytest.raises(expected) as info:
        ftqueue.get(raise_always.options(**options).remote(path), timeout=60)
    assert isinstance(info.value, TaskError)
    assert len(runs(path)) == executions


def test_allowlist_matches_subclasses(cluster, tmp_path):
    class Sub(RandomError):
        pass

    path = tmp_path / "runs"
    with pytest.raises(Sub):
        ftqueue.get(raise_always.options(max_retries=1, retry_exceptions=[RandomError])
                    .remote(path, Sub), timeout=60)
    assert len(runs(path)) == 2


@pytest.mark.parametrize("max_retries, executions, expected", [
    (3, 4, WorkerCrashedError),   # app error, crash, app error, crash
    (2, 3, RandomError),          # app error, crash, app error
])
def test_crashes_and_exceptions_share_one_budget(cluster, tmp_path, max_retries, executions,
                                                 expected):
    path = tmp_path / "runs"
    with pytest.raises(expected):
        ftqueue.get(alternate.options(max_retries=max_retries, retry_exceptions=True)
                    .remote(path), timeout=60)
    assert len(runs(path)) == executions


def test_killed_node_tasks_move_to_another_node(driver, start_node, rclient, tmp_path):
    doomed = start_node(2, "--lease-timeout", "2")
    doomed.wait_workers(2)
    path = tmp_path / "runs"
    refs = [sleep_then.remote(path, 1.5, i) for i in range(2)]
    wait_until(lambda: len(runs(path)) == 2, 30, "both tasks to start on the first node")
    start_node(2, "--lease-timeout", "2")
    killed_at = time.monotonic()
    doomed.signal_group(signal.SIGKILL)
    assert ftqueue.get(refs, timeout=60) == [0, 1]
    assert time.monotonic() - killed_at < 2 + 2 + 1.5 + 5
    for ref in refs:
        first = attempts(rclient, ref.hex())[0]
        assert (first["state"], first["error_type"]) == ("FAILED", "NODE_DIED")


def test_lost_node_with_no_retries_fails_with_node_died(driver, start_node, tmp_path):
    node = start_node(1, "--lease-timeout", "1")
    path = tmp_path / "runs"
    ref = sleep_then.options(max_retries=0).remote(path, 30, "never")
    wait_until(lambda: runs(path), 30, "the task to start")
    node.signal_group(signal.SIGKILL)
    # No node is left: the driver blocked in get reaps the expired lease itself.
    with pytest.raises(NodeDiedError):
        ftqueue.get(ref, timeout=30)


def test_frozen_node_late_result_is_fenced(driver, start_node, rclient, tmp_path):
    frozen = start_node(1, "--lease-timeout", "1.5")
    frozen.wait_workers(1)
    path = tmp_path / "runs"
    ref = sleep_then.remote(path, 2.0, "value")
    wait_until(lambda: runs(path), 30, "the task to start")
    frozen.signal_group(signal.SIGSTOP)
    try:
        start_node(1, "--lease-timeout", "1.5")
        assert ftqueue.get(ref, timeout=60) == "value"
    finally:
        frozen.signal_group(signal.SIGCONT)
    wait_until(lambda: int(rclient.hget("ftq:stats", "fenced") or 0) >= 1, 30,
               "the frozen worker's late commit to be fenced")
    assert ftqueue.get(ref) == "value"
    rows = attempts(rclient, ref.hex())
    assert [r["state"] for r in rows] == ["FAILED", "FINISHED"]
    assert rows[0]["error_type"] == "NODE_DIED"


def test_supervisor_sigkill_leaves_no_orphan_workers(start_node):
    node = start_node(2)
    workers = node.wait_workers(2)
    os.kill(node.pid, signal.SIGKILL)
    wait_until(lambda: not any(w.is_running() and w.status() != psutil.STATUS_ZOMBIE
                               for w in workers), 10, "the workers to die with their supervisor")


def test_crashed_worker_is_replaced(start_node):
    node = start_node(2)
    first = node.wait_workers(2)
    first[0].kill()
    wait_until(lambda: len(node.workers()) == 2 and first[0].pid not in
               [w.pid for w in node.workers()], 15, "a replacement worker")


def test_graceful_shutdown_lets_running_task_finish(driver, start_node, tmp_path):
    node = start_node(1, "--grace-period", "20")
    path = tmp_path / "runs"
    ref = sleep_then.options(max_retries=0).remote(path, 1.0, "finished")
    wait_until(lambda: runs(path), 30, "the task to start")
    node.process.send_signal(signal.SIGTERM)
    assert ftqueue.get(ref, timeout=30) == "finished"
    assert node.process.wait(30) == 0


def test_graceful_shutdown_past_grace_requeues_without_charge(driver, start_node, rclient,
                                                              tmp_path):
    node = start_node(1, "--grace-period", "0.5")
    path = tmp_path / "runs"
    ref = sleep_then.options(max_retries=0).remote(path, 3.0, "second node")
    wait_until(lambda: runs(path), 30, "the task to start")
    node.process.send_signal(signal.SIGTERM)
    assert node.process.wait(30) == 0
    start_node(1)
    assert ftqueue.get(ref, timeout=60) == "second node"   # max_retries=0 and yet it ran again
    rows = attempts(rclient, ref.hex())
    assert [r["state"] for r in rows] == ["FAILED", "FINISHED"]
    assert "retry not charged" in rows[0]["error_message"]

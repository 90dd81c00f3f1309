"""A cancel reaches a running task through the node's cancel listener (a BLPOP that wakes
the supervisor's loop), not only at its next poll or heartbeat. The nodes here are patched
so that only the listener can bring a cancel: their safety poll waits a minute and their
heartbeat drops the cancel requests it finds. Real redis-server, real worker processes;
executions are counted."""

from __future__ import annotations

import os
import signal
import time

import pytest
from conftest import NodeProcess, mark, runs, wait_until

import ftqueue
from ftqueue.exceptions import TaskCancelledError

ONLY_THE_LISTENER = """
import ftqueue.heartbeat, ftqueue.supervisor
ftqueue.supervisor.CANCEL_SAFETY_POLL_S = 60.0
_renew = ftqueue.heartbeat.NodeRecord.renew
ftqueue.heartbeat.NodeRecord.renew = lambda self, *a, **k: (_renew(self, *a, **k)[0], [])
"""
# Far below the safety poll's minute, far above the listener's milliseconds.
CANCELLED_WITHIN_S = 20
FREEZE_S = 6      # a few of the listener's BLPOPs time out (2 s socket timeout) meanwhile


@ftqueue.remote(max_retries=3)
def sleep_long(path):
    mark(path)
    time.sleep(120)


def cancel_and_expect_interrupt(ref) -> None:
    ftqueue.cancel(ref)
    with pytest.raises(TaskCancelledError):
        ftqueue.get(ref, timeout=CANCELLED_WITHIN_S)


def cancel_through_the_listener(address: str, path) -> None:
    node = NodeProcess(address, 1, prelude=ONLY_THE_LISTENER)
    ftqueue.init(address=address)
    try:
        ref = sleep_long.remote(str(path))
        wait_until(lambda: runs(path), 30, "the task to start")
        cancel_and_expect_interrupt(ref)
        assert len(runs(path)) == 1
        assert "Traceback" not in node.output(), node.output()
    finally:
        ftqueue.shutdown()
        node.stop()


def test_a_cancel_reaches_the_running_task_through_the_listener(redis_url, tmp_path):
    cancel_through_the_listener(redis_url, tmp_path / "runs")


def test_the_listener_waits_on_a_redis_cluster(cluster3, tmp_path):
    cancel_through_the_listener(cluster3.address, tmp_path / "runs")


def test_the_listener_outlives_a_frozen_redis(own_redis, tmp_path):
    node = NodeProcess(own_redis.address, 1, prelude=ONLY_THE_LISTENER)
    ftqueue.init(address=own_redis.address)
    path = tmp_path / "runs"
    try:
        ref = sleep_long.remote(str(path))
        wait_until(lambda: runs(path), 30, "the task to start")
        time.sleep(0.5)                     # the listener is waiting on the list
        os.kill(own_redis.process.pid, signal.SIGSTOP)
        time.sleep(FREEZE_S)
        os.kill(own_redis.process.pid, signal.SIGCONT)
        cancel_and_expect_interrupt(ref)
        time.sleep(1.0)                     # a second run, were there one, would start now
        assert len(runs(path)) == 1
        output = node.output()
        assert "Traceback" not in output and "cancel listener" not in output, output
    finally:
        os.kill(own_redis.process.pid, signal.SIGCONT)
        ftqueue.shutdown()
        node.stop()

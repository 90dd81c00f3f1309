"""The node side, tried as an adversary would: tasks that fork, close descriptors, block
signals, or race their own end; a supervisor whose Redis stalls. Real redis-server, real
processes and signals; executions are counted, not only results."""

from __future__ import annotations

import os
import signal
import time

import pytest

import ftqueue
import ftqueue.state
from ftqueue.exceptions import WorkerCrashedError


def runs(path) -> list[str]:
    try:
        with open(path) as f:
            return f.read().split()
    except FileNotFoundError:
        return []


def mark(path) -> None:
    with open(path, "a") as f:
        f.write(f"{os.getpid()}\n")


def kill_pids(path) -> None:
    """End the processes whose pids a task wrote to `path` (its forked children)."""
    for pid in runs(path):
        try:
            os.kill(int(pid), signal.SIGKILL)
        except (ProcessLookupError, ValueError):
            pass


@ftqueue.remote(max_retries=0)
def quick(value):
    return value


@ftqueue.remote(max_retries=0)
def fork_then_die(path, children):
    """A forked child (as multiprocessing's fork does) inherits the worker's control pipe and
    outlives it."""
    mark(path)
    pid = os.fork()
    if pid == 0:
        time.sleep(120)
        os._exit(0)
    with open(children, "a") as f:
        f.write(f"{pid}\n")
    os._exit(1)


# -- a child forked by a task keeps the worker's control pipe open after the worker died ------

def test_worker_death_is_seen_although_a_forked_child_holds_its_pipe(driver, start_node,
                                                                    tmp_path):
    node = start_node(1, "--lease-timeout", "30")
    path, children = tmp_path / "runs", tmp_path / "children"
    try:
        ref = fork_then_die.remote(str(path), str(children))
        with pytest.raises(WorkerCrashedError):
            ftqueue.get(ref, timeout=20)
        assert [r["error_type"] for r in ftqueue.state.get_task(ref.hex())] == ["WORKER_DIED"]
        assert len(runs(path)) == 1
        # The supervisor is not stuck on the pipe: it replaced the worker, which serves.
        assert ftqueue.get(quick.remote(7), timeout=20) == 7
        assert node.process.poll() is None
    finally:
        kill_pids(children)

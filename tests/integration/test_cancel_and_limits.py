"""Cancellation, max_calls recycling, the memory watchdog and task timeouts: real workers."""

from __future__ import annotations

import os
import time

import psutil
import pytest
from conftest import wait_until

import ftqueue
import ftqueue.state
from ftqueue.exceptions import (
    OutOfMemoryError,
    TaskCancelledError,
    TaskError,
    TaskTimeoutError,
)


def lines(path) -> list[str]:
    try:
        with open(path) as f:
            return f.read().split()
    except FileNotFoundError:
        return []


def note(path, text) -> None:
    with open(path, "a") as f:
        f.write(f"{text}\n")


@ftqueue.remote
def sleeper(path, seconds):
    note(path, f"start:{os.getpid()}")
    try:
        time.sleep(seconds)
    except KeyboardInterrupt:
        note(path, "interrupted")
        raise
    note(path, "finished")
    return os.getpid()


@ftqueue.remote
def pid():
    return os.getpid()


@ftqueue.remote
def pid_after(*deps):
    return os.getpid()


def final_row(task_id):
    return ftqueue.state.get_task(task_id)[-1]


def test_cancel_running_interrupts_only_that_task_and_worker_survives(driver, start_node, tmp_path):
    start_node(1)
    path = tmp_path / "log"
    ref = sleeper.remote(path, 60)
    wait_until(lambda: lines(path), 30, "the task to start")
    worker_pid = int(lines(path)[0].split(":")[1])
    ftqueue.cancel(ref)
    with pytest.raises(TaskCancelledError):
        ftqueue.get(ref, timeout=30)
    wait_until(lambda: "interrupted" in lines(path), 10, "the task to see KeyboardInterrupt")
    assert ftqueue.get(pid.remote(), timeout=30) == worker_pid   # same process, next task
    row = final_row(ref.hex())
    assert (row["state"], row["error_type"]) == ("FAILED", "TASK_CANCELLED")


def test_force_cancel_kills_the_worker_and_never_reruns(driver, start_node, tmp_path):
    start_node(1)
    path = tmp_path / "log"
    ref = sleeper.options(max_retries=3).remote(path, 60)
    wait_until(lambda: lines(path), 30, "the task to start")
    worker_pid = int(lines(path)[0].split(":")[1])
    ftqueue.cancel(ref, force=True)
    with pytest.raises(TaskCancelledError):
        ftqueue.get(ref, timeout=30)
    wait_until(lambda: not psutil.pid_exists(worker_pid) or
               psutil.Process(worker_pid).status() == psutil.STATUS_ZOMBIE, 10,
               "the worker process to be killed")
    assert ftqueue.get(pid.remote(), timeout=30) != worker_pid   # a replacement serves on
    time.sleep(0.5)
    assert [x for x in lines(path) if x.startswith("start")] == [f"start:{worker_pid}"]
    assert final_row(ref.hex())["error_type"] == "TASK_CANCELLED"


def test_cancel_queued_task_never_runs_even_with_no_worker_online(driver, start_node, tmp_path):
    path = tmp_path / "log"
    ref = sleeper.remote(path, 0)
    ftqueue.cancel(ref)                      # no node is running yet
    start_node(1)
    with pytest.raises(TaskCancelledError):
        ftqueue.get(ref, timeout=30)
    assert ftqueue.get(pid.remote(), timeout=30)   # the node works, and skipped the cancelled one
    assert lines(path) == []


def test_cancel_after_completion_is_a_noop(cluster, tmp_path):
    ref = sleeper.remote(tmp_path / "log", 0)
    value = ftqueue.get(ref, timeout=30)
    ftqueue.cancel(ref)
    assert ftqueue.get(ref) == value


def test_recursive_cancel_reaches_children_and_dependents_fail(cluster, rclient, tmp_path):
    @ftqueue.remote
    def parent(path):
        refs = [sleeper.remote(path, 60) for _ in range(2)]
        return ftqueue.get(refs)

    path = tmp_path / "log"
    ref = parent.remote(path)
    wait_until(lambda: len(rclient.smembers(f"ftq:children:{ref.hex()}")) == 2, 30,
               "the parent to submit its children")
    dependent = pid_after.remote(ref)
    ftqueue.cancel(ref)
    with pytest.raises(TaskCancelledError):
        ftqueue.get(ref, timeout=30)
    for child in rclient.smembers(f"ftq:children:{ref.hex()}"):
        wait_until(lambda c=child: rclient.hget(f"ftq:task:{c}", "state") == "FAILED", 30,
                   "the child to be cancelled")
        assert rclient.hget(f"ftq:task:{child}", "error_type") == "TASK_CANCELLED"
    with pytest.raises(TaskError) as info:
        ftqueue.get(dependent, timeout=30)
    assert isinstance(info.value.cause, TaskCancelledError)


def test_max_calls_one_gives_a_new_process_per_call(driver, start_node):
    start_node(1)
    once = pid.options(max_calls=1)
    pids = [ftqueue.get(once.remote(), timeout=30) for _ in range(3)]
    assert len(set(pids)) == 3
    reused = [ftqueue.get(pid.remote(), timeout=30) for _ in range(3)]
    assert len(set(reused)) == 1


def test_memory_limit_kills_retries_then_out_of_memory(driver, start_node, tmp_path):
    start_node(2, "--max-memory-per-worker", "200M")

    @ftqueue.remote(max_retries=1)
    def hog(path):
        note(path, "run")
        block = bytearray(400 * 2**20)   # touches every page
        time.sleep(10)
        return len(block)

    path = tmp_path / "log"
    ref = hog.remote(path)
    others = [pid.remote() for _ in range(5)]
    with pytest.raises(OutOfMemoryError):
        ftqueue.get(ref, timeout=60)
    assert len(lines(path)) == 2
    assert len(ftqueue.get(others, timeout=30)) == 5
    rows = ftqueue.state.get_task(ref.hex())
    assert [r["error_type"] for r in rows] == ["OUT_OF_MEMORY", "OUT_OF_MEMORY"]


def test_timeout_interrupts_and_raises_task_timeout_error(cluster, tmp_path):
    path = tmp_path / "log"
    ref = sleeper.options(timeout_s=0.5).remote(path, 30)
    with pytest.raises(TaskTimeoutError) as info:
        ftqueue.get(ref, timeout=30)
    assert isinstance(info.value, TimeoutError) and isinstance(info.value, TaskError)
    assert len([x for x in lines(path) if x.startswith("start")]) == 1


def test_timeout_retried_only_when_allowed(cluster, tmp_path):
    path = tmp_path / "log"
    ref = sleeper.options(timeout_s=0.5, max_retries=1,
                          retry_exceptions=[TaskTimeoutError]).remote(path, 30)
    with pytest.raises(TaskTimeoutError):
        ftqueue.get(ref, timeout=30)
    assert len([x for x in lines(path) if x.startswith("start")]) == 2


def test_timeout_ignored_by_the_task_ends_in_a_kill(driver, start_node, tmp_path):
    start_node(1, "--timeout-grace", "0.5")

    @ftqueue.remote(timeout_s=0.5)
    def stubborn(path):
        note(path, f"start:{os.getpid()}")
        deadline = time.time() + 30
        while time.time() < deadline:
            try:
                time.sleep(0.05)
            except BaseException:
                note(path, "swallowed")
        return "never"

    path = tmp_path / "log"
    with pytest.raises(TaskTimeoutError):
        ftqueue.get(stubborn.remote(path), timeout=30)
    assert "swallowed" in lines(path)
    worker_pid = int(lines(path)[0].split(":")[1])
    wait_until(lambda: not psutil.pid_exists(worker_pid) or
               psutil.Process(worker_pid).status() == psutil.STATUS_ZOMBIE, 10,
               "the stubborn worker to be killed")


def test_node_memory_threshold_kills_as_out_of_memory(driver, start_node, tmp_path):
    start_node(1, "--memory-threshold", "0.001")   # any host is above this
    path = tmp_path / "log"
    with pytest.raises(OutOfMemoryError) as info:
        ftqueue.get(sleeper.options(max_retries=0).remote(path, 30), timeout=30)
    assert "threshold" in str(info.value)


@ftqueue.remote
def stubborn(path, seconds):
    """Notes each KeyboardInterrupt and carries on until `seconds` have passed."""
    note(path, f"start:{os.getpid()}")
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        try:
            time.sleep(0.05)
        except KeyboardInterrupt:
            note(path, "interrupted")
    return "done"


@pytest.mark.parametrize("force", [False, True])
def test_a_cancel_whose_relay_was_lost_still_reaches_the_task(driver, start_node, rclient,
                                                              tmp_path, force):
    """A cancel is relayed to the node through a list it pops; a pop whose reply is lost
    takes the request with it. The request also stays in the task's record, and the node's
    heartbeat finds it there: the task is interrupted (or its worker killed) all the same."""
    import signal

    node = start_node(1)
    path = tmp_path / "log"
    ref = (sleeper.remote(path, 60) if force else stubborn.remote(path, 8))
    wait_until(lambda: lines(path), 30, "the task to start")
    worker_pid = int(lines(path)[0].split(":")[1])
    (node_id,) = [n["node_id"] for n in ftqueue.state.list_nodes() if n["state"] == "ALIVE"]
    os.kill(node.pid, signal.SIGSTOP)          # the supervisor cannot pop meanwhile
    try:
        time.sleep(0.1)
        # Its cancel listener's BLPOP, already waiting in Redis, would take the request.
        for client in rclient.client_list():
            if "b" in client["flags"]:
                rclient.client_unblock(client["id"])
        ftqueue.cancel(ref, force=force)
        assert rclient.delete(f"ftq:cancel:{node_id}") == 1    # the relayed request, lost
    finally:
        os.kill(node.pid, signal.SIGCONT)
    if force:
        wait_until(lambda: not psutil.pid_exists(worker_pid) or
                   psutil.Process(worker_pid).status() == psutil.STATUS_ZOMBIE, 15,
                   "the worker process to be killed")
    else:
        wait_until(lambda: "interrupted" in lines(path), 6, "the task's KeyboardInterrupt")
    with pytest.raises(TaskCancelledError):
        ftqueue.get(ref, timeout=30)
    # The task swallowed it and ran on while the heartbeat still found the request: once.
    assert lines(path).count("interrupted") == (0 if force else 1)


# The supervisor's view of its workers lags behind them by what they wrote and it has not
# read yet. Here it is held back on purpose: while `hide` exists its loop does not watch its
# workers' pipes, while `hold` exists it relays no cancel.
STALE_VIEW = """
import os, ftqueue.relays, ftqueue.supervisor
HIDE, HOLD = os.environ["T_HIDE"], os.environ["T_HOLD"]
_select = ftqueue.supervisor.select.select
class _Select:
    def select(self, r, w, x, t=None):
        if os.path.exists(HIDE):
            r = [fd for fd in r if fd not in self.workers()]
        return _Select.real(r, w, x, t)
_sel = _Select()
_Select.real = staticmethod(_select)
_sup_init = ftqueue.supervisor.Supervisor.__init__
def _init(self, *a, **k):
    _sup_init(self, *a, **k)
    _sel.workers = lambda: set(self.workers)
ftqueue.supervisor.Supervisor.__init__ = _init
ftqueue.supervisor.select = _sel
_deliver = ftqueue.relays.Relays.deliver_cancels
def _held(self, handles):
    if not os.path.exists(HOLD):
        _deliver(self, handles)
ftqueue.relays.Relays.deliver_cancels = _held
"""


@ftqueue.remote(max_retries=0)
def until_released(path, release):
    note(path, "x-start")
    while not os.path.exists(release):
        time.sleep(0.01)
    return "x"


@ftqueue.remote(max_retries=3)
def next_in_that_process(path):
    note(path, f"z-start:{os.getpid()}")
    time.sleep(1.5)
    note(path, "z-end")
    return "z"


def test_force_cancel_never_kills_the_task_its_worker_runs_next(driver, redis_url, tmp_path):
    """A force cancel relayed while the supervisor still believes the worker runs the
    cancelled task — the worker finished it meanwhile and started the next one — kills
    nothing: only that (task, attempt) may die of it."""
    from conftest import NodeProcess, child_env

    hide, hold, release = (str(tmp_path / n) for n in ("hide", "hold", "release"))
    path = str(tmp_path / "log")
    node = NodeProcess(redis_url, 1, "--lease-timeout", "5",
                       env=child_env(T_HIDE=hide, T_HOLD=hold), prelude=STALE_VIEW)
    try:
        node.wait_workers(1)
        x = until_released.remote(path, release)
        wait_until(lambda: "x-start" in lines(path), 30, "task x to start")
        wait_until(lambda: final_row(x.hex())["state"] == "RUNNING", 10, "x RUNNING")
        time.sleep(0.3)                 # the supervisor has heard that x started
        for flag in (hide, hold):
            open(flag, "w").close()
        ftqueue.cancel(x, force=True)   # recorded at once; its relay is held
        z = next_in_that_process.remote(path)
        open(release, "w").close()      # x's body ends; the same worker goes on with z
        wait_until(lambda: any(s.startswith("z-start") for s in lines(path)), 30, "z to start")
        os.unlink(hold)                 # the kill for x is relayed; its view is stale
        time.sleep(0.5)
        os.unlink(hide)
        with pytest.raises(TaskCancelledError):
            ftqueue.get(x, timeout=10)
        assert ftqueue.get(z, timeout=20) == "z"
        assert [s for s in lines(path) if s.startswith("z-start")] == \
            [f"z-start:{node.workers()[0].pid}"], lines(path)
        assert [r["error_type"] for r in ftqueue.state.get_task(z.hex())] == [""], \
            ftqueue.state.get_task(z.hex())
        assert "Traceback" not in node.output(), node.output()
    finally:
        node.stop()

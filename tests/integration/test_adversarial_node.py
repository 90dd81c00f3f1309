"""The node side, tried as an adversary would: tasks that fork, close descriptors, block
signals, or race their own end; a supervisor whose Redis stalls. Real redis-server, real
processes and signals; executions are counted, not only results."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

import psutil
import pytest
from conftest import NodeProcess, mark, runs, wait_until

import ftqueue
import ftqueue.state
from ftqueue.exceptions import TaskCancelledError, WorkerCrashedError


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


@ftqueue.remote(max_retries=0)
def spawn_then_hang(children, started):
    child = subprocess.Popen(["sleep", "60"])
    with open(children, "a") as f:
        f.write(f"{child.pid}\n")
    open(started, "w").close()
    time.sleep(60)


def gone(pid: int) -> bool:
    try:
        return psutil.Process(pid).status() == psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return True


def test_killing_a_worker_for_a_force_cancel_kills_its_tasks_children(driver, start_node,
                                                                      tmp_path):
    """Bad input 29: a force-cancelled task's child process went on running (and writing)
    after its worker was SIGKILLed; killing the attempt now ends the worker's descendants."""
    start_node(1)
    children, started = tmp_path / "children", tmp_path / "started"
    try:
        ref = spawn_then_hang.remote(str(children), str(started))
        wait_until(started.exists, 30, "the task to start its child")
        ftqueue.cancel(ref, force=True)
        with pytest.raises(TaskCancelledError):
            ftqueue.get(ref, timeout=20)
        (pid,) = (int(p) for p in runs(children))
        wait_until(lambda: gone(pid), 5, "the cancelled task's child to end")
        assert ftqueue.get(quick.remote(7), timeout=20) == 7
    finally:
        kill_pids(children)


# -- a frozen Redis must not hold the supervisor's loop: deaths, Ctrl-C ------------------------



def test_frozen_redis_does_not_hold_the_supervisor(own_redis):
    node = NodeProcess(own_redis.address, 1, "--lease-timeout", "3")
    try:
        node.wait_workers(1)
        wait_until(lambda: "serving queues" in node.output(), 30, "the node to start")
        os.kill(own_redis.process.pid, signal.SIGSTOP)
        wait_until(lambda: "Redis unreachable or not serving" in node.output(), 30,
                   "the node to notice the frozen Redis")
        worker = node.workers()[0]
        worker.kill()
        # A dead worker is replaced at once, not after a socket timeout per duty.
        wait_until(lambda: worker.pid not in {p.pid for p in node.workers()} and node.workers(),
                   8, "a replacement worker while Redis is frozen")
        t0 = time.monotonic()
        node.signal_group(signal.SIGINT)
        wait_until(lambda: "stopping:" in node.output(), 8, "the first Ctrl-C to be heard")
        node.signal_group(signal.SIGINT)
        node.process.wait(30)
        assert time.monotonic() - t0 < 8, node.output()
    finally:
        os.kill(own_redis.process.pid, signal.SIGCONT)
        node.stop()


# -- a task that blocks or replaces the worker's signals must not deafen it for later tasks -----

@ftqueue.remote(max_retries=0)
def deafen(path):
    mark(path)
    signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGUSR1, signal.SIGTERM})
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    signal.signal(signal.SIGUSR1, signal.SIG_IGN)
    return os.getpid()


@ftqueue.remote(max_retries=0)
def wait_for_flag(path, flag):
    mark(path)
    deadline = time.monotonic() + 120
    while not os.path.exists(flag) and time.monotonic() < deadline:
        time.sleep(0.01)
    return os.getpid()


def test_a_task_cannot_deafen_its_worker_to_cancels_and_stops(driver, start_node, tmp_path):
    node = start_node(1, "--lease-timeout", "3", "--grace-period", "60")
    path, flag = tmp_path / "runs", tmp_path / "flag"
    try:
        pid = ftqueue.get(deafen.remote(str(path)), timeout=30)
        ref = wait_for_flag.remote(str(path), str(flag))
        wait_until(lambda: len(runs(path)) == 2, 30, "the next task to start")
        assert runs(path)[1] == str(pid), "not the same worker"
        ftqueue.cancel(ref)
        with pytest.raises(TaskCancelledError):
            ftqueue.get(ref, timeout=15)       # interrupted, not left to run its 120 s
        # A graceful stop reaches the worker: it exits between tasks, long before the grace.
        node.signal_group(signal.SIGTERM)
        node.process.wait(20)
    finally:
        flag.write_text("go")


# -- a cancel that reaches the node before its worker said it holds the task --------------------

def test_cancel_relayed_before_the_worker_says_it_holds_the_task_still_reaches_it(redis_url):
    from ftqueue import payload
    from ftqueue.settings import NodeSettings
    from ftqueue.supervisor import Supervisor
    from ftqueue.workerpool import WorkerHandle

    supervisor = Supervisor(NodeSettings(address=redis_url, lease_timeout_s=3))
    store = supervisor.store
    task_id = "c0" * 16
    bound = payload.execution_fields("fn", 0, None, False, 0)
    blob, _ = payload.pack_args([], {}, False, "f", task_id, bound)
    store.submit([(task_id, "default", blob, [], {"name": "f", "func": "f", "fn": "fn",
                                                  "job_id": "00000001", "max_retries": "0"})])
    # A stand-in worker process: the supervisor reads its control pipe, writes its inbox.
    control_r, control_w = os.pipe()
    inbox_r, inbox_w = os.pipe()
    os.set_blocking(control_r, False)
    os.set_blocking(inbox_r, False)
    process = subprocess.Popen([sys.executable, "-c", "import signal, time; signal.signal("
                                "signal.SIGUSR1, signal.SIG_IGN); print('ready', flush=True); "
                                "time.sleep(60)"], stdout=subprocess.PIPE)
    handle = WorkerHandle("w1", process, control_r, inbox_w)
    supervisor.workers[control_r] = handle
    try:
        assert process.stdout is not None and process.stdout.readline() == b"ready\n"
        # The worker claims (Redis says it runs the task) and the cancel is relayed to the
        # node before the worker's `H`/`S` lines are read.
        (claimed,) = store.claim(supervisor.node_id, "w1", ["default"], 1, 8, 3000)
        assert store.cancel(task_id, False, False) == [(task_id, "requested")]
        supervisor._poll_cancels()
        os.write(control_w, f"H {task_id}\nS {task_id} {claimed.fence} - 0 f\n".encode())
        wait_until(lambda: supervisor.step(0.05) or handle.running == task_id, 10,
                   "the supervisor to hear the worker")
        got = wait_until(lambda: supervisor.step(0.05) or _read(inbox_r), 5,
                         "the cancel to be relayed to the worker")
        assert got == f"C {task_id}\n".encode()
    finally:
        for h in [handle, *supervisor.workers.values()]:
            h.process.kill()
            h.process.wait()
        handle.close_pipes()
        for fd in (control_w, inbox_r):
            os.close(fd)
        assert process.stdout is not None
        process.stdout.close()
        supervisor.cancel_listener.stop()
        store.redis.close()


def _read(fd: int) -> bytes:
    try:
        return os.read(fd, 4096)
    except BlockingIOError:
        return b""


# -- a worker leaving on purpose is not held by a thread its task left running ---------------

@ftqueue.remote(max_retries=0, max_calls=1)
def leave_a_thread(path):
    import threading

    mark(path)
    threading.Thread(target=time.sleep, args=(120,)).start()    # not a daemon
    return os.getpid()


def test_a_recycled_worker_exits_although_its_task_left_a_thread_running(driver, start_node,
                                                                         tmp_path):
    start_node(1, "--lease-timeout", "3")
    path = tmp_path / "runs"
    first = ftqueue.get(leave_a_thread.remote(str(path)), timeout=30)
    # max_calls=1: the next call runs in a new process, so the first one must really exit.
    second = ftqueue.get(leave_a_thread.remote(str(path)), timeout=20)
    assert first != second
    wait_until(lambda: not psutil.pid_exists(first), 10, "the recycled worker to exit")
    assert len(runs(path)) == 2

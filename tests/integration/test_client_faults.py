"""The driver under faults (issue 11 items 5, 6, 7, 14): Redis restarted empty, frozen, down
or full, and Ctrl-C in the middle of `.remote()`. Each test runs a redis-server of its own
(frozen with SIGSTOP, always resumed and stopped in `finally`), real nodes and real drivers."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import tempfile
import threading
import time

import psutil
import pytest
import redis
from conftest import NodeProcess, child_env, wait_until

import ftqueue
from ftqueue.client import futures
from ftqueue.embedded import RedisServer
from ftqueue.exceptions import FtqueueError, GetTimeoutError
from ftqueue.spec import ObjectRef, new_id


def runs(path, name) -> int:
    try:
        with open(path) as f:
            return f.read().split().count(name)
    except FileNotFoundError:
        return 0


@ftqueue.remote
def make(path, name, value):
    with open(path, "a") as f:
        f.write(name + "\n")
    return value


@ftqueue.remote
def plus(path, name, x, y=1):
    with open(path, "a") as f:
        f.write(name + "\n")
    return x + y


@ftqueue.remote
def echo(x):
    return x


@ftqueue.remote
def slow(seconds):
    time.sleep(seconds)
    return seconds


@ftqueue.remote
def first_used_while_redis_is_down(x):
    return x * 10


@ftqueue.remote
def first_used_while_redis_is_full(x):
    return x


@pytest.fixture
def own_redis(tmp_path):
    servers: list[RedisServer] = []

    def start(appendonly: bool = False) -> RedisServer:
        server = RedisServer.start(unix_socket=True, directory=str(tmp_path / "redis"),
                                   appendonly=appendonly)
        servers.append(server)
        return server

    yield start
    for server in servers:
        if server.process.poll() is None:
            os.kill(server.process.pid, signal.SIGCONT)
        server.kill()


@pytest.fixture
def nodes():
    started: list[NodeProcess] = []

    def start(address: str, *args: str) -> NodeProcess:
        node = NodeProcess(address, 1, "--lease-timeout", "30", *args)
        started.append(node)
        return node

    yield start
    for node in started:
        node.stop()


def freeze(server: RedisServer) -> None:
    os.kill(server.process.pid, signal.SIGSTOP)


def thaw(server: RedisServer) -> None:
    os.kill(server.process.pid, signal.SIGCONT)


# -- item 5: a Redis that restarts empty -------------------------------------------------------

def test_redis_restarted_empty_is_given_the_lineage_of_what_the_driver_waits_for(
        own_redis, nodes, tmp_path):
    server = own_redis()
    nodes(server.address)
    path = tmp_path / "runs"
    ftqueue.init(address=server.address)
    try:
        f = make.remote(path, "f", 1)
        assert ftqueue.get(f, timeout=60) == 1
        g = plus.options(queue="later").remote(path, "g", f)   # nobody serves "later" yet
        ftqueue.flush_submissions()
        server.restart(empty=True)                              # f's result is gone too
        nodes(server.address, "--queues", "later")
        assert ftqueue.get(g, timeout=60) == 2
        assert (runs(path, "f"), runs(path, "g")) == (2, 1)
    finally:
        ftqueue.shutdown()


# -- item 6: Ctrl-C in the middle of .remote() -------------------------------------------------

DRIVER = """
import signal, sys, ftqueue

signal.signal(signal.SIGINT, signal.default_int_handler)   # even if started with it ignored

@ftqueue.remote
def f(x):
    return x

ftqueue.init(address=sys.argv[1])
assert ftqueue.get(f.remote(1), timeout=60) == 1
print("ready", flush=True)
sys.stdin.readline()
print("submitting", flush=True)
try:
    f.options(name="interrupted").remote(2)
    print("returned", flush=True)
except KeyboardInterrupt:
    print("interrupted", flush=True)
ref = f.remote(3)
print("value", ftqueue.get(ref, timeout=60), flush=True)
assert ref.hex() and ftqueue.wait([ref], timeout=10)[0] == [ref]
rows = ftqueue.state.list_tasks(filters=[("name", "=", "interrupted")], detail=True)
print("interrupted task", [r["state"] for r in rows], flush=True)
ftqueue.shutdown()
print("done", flush=True)
"""


class Driver:
    """A driver script in its own process group, talked to line by line."""

    def __init__(self, code: str, *args: str) -> None:
        with tempfile.NamedTemporaryFile("w", suffix=".py", delete=False) as f:
            f.write(code)
        self.path = f.name
        self.process = subprocess.Popen(
            [sys.executable, self.path, *args], stdin=subprocess.PIPE,
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=child_env(),
            start_new_session=True)

    def expect(self, prefix: str) -> str:
        assert self.process.stdout is not None
        line = self.process.stdout.readline()
        assert line.startswith(prefix), (line, self.stderr())
        return line.strip()

    def send(self, line: str) -> None:
        assert self.process.stdin is not None
        self.process.stdin.write(line + "\n")
        self.process.stdin.flush()

    def stderr(self) -> str:
        if self.process.poll() is None:
            return "(still running)"
        assert self.process.stderr is not None
        return self.process.stderr.read()

    def stop(self) -> None:
        try:
            os.killpg(self.process.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        self.process.wait()
        os.unlink(self.path)


def blocked(pid: int) -> bool:
    return psutil.Process(pid).status() == psutil.STATUS_SLEEPING


def test_ctrl_c_in_remote_during_a_redis_stall_leaves_the_driver_usable(own_redis, nodes):
    server = own_redis()
    nodes(server.address)
    driver = Driver(DRIVER, server.address)
    try:
        driver.expect("ready")
        freeze(server)
        driver.send("go")
        driver.expect("submitting")
        wait_until(lambda: blocked(driver.process.pid), 5, "the driver to block in .remote()")
        os.kill(driver.process.pid, signal.SIGINT)
        driver.expect("interrupted")
        thaw(server)
        assert driver.expect("value") == "value 3"
        # It was queued before the interrupt: it was submitted, and it ran.
        assert driver.expect("interrupted task") == "interrupted task ['FINISHED']"
        driver.expect("done")
        assert driver.process.wait(30) == 0, driver.stderr()
    finally:
        thaw(server)
        driver.stop()


# -- item 7: deadlines while Redis is frozen ---------------------------------------------------

def test_timeouts_hold_while_redis_is_frozen(own_redis, nodes):
    server = own_redis()
    nodes(server.address)
    ftqueue.init(address=server.address)
    try:
        assert ftqueue.get(echo.remote(1), timeout=60) == 1
        running = slow.remote(60)
        ftqueue.flush_submissions()
        freeze(server)

        started = time.monotonic()
        with pytest.raises(GetTimeoutError):
            ftqueue.get(running, timeout=2)
        assert time.monotonic() - started < 3.5

        started = time.monotonic()
        assert ftqueue.wait([running], timeout=1) == ([], [running])
        assert time.monotonic() - started < 2.5

        started = time.monotonic()            # a ref from elsewhere: asks Redis
        with pytest.raises(GetTimeoutError):
            ftqueue.get(ObjectRef(new_id()), timeout=1)
        assert time.monotonic() - started < 2.5

        started = time.monotonic()
        queued = echo.remote(2)               # waits in the process
        with pytest.raises(GetTimeoutError):
            ftqueue.get(queued, timeout=1)
        assert time.monotonic() - started < 4.5

        started = time.monotonic()
        ftqueue.shutdown()
        assert time.monotonic() - started < 6
    finally:
        thaw(server)
        ftqueue.shutdown()



def test_a_future_outlives_a_redis_stall_while_it_reads_the_result(own_redis, nodes,
                                                                    monkeypatch, tmp_path):
    """`await ref` / `ref.future()`: a stall of Redis just as the resolver read a finished
    result (too big to ride in the notice) failed the future with the resolver's own
    internal DeadlinePassed, though the task had succeeded; a getter waits the stall out."""
    monkeypatch.setattr(futures, "READ_DEADLINE_S", 0.5)
    server = own_redis()
    nodes(server.address)
    ftqueue.init(address=server.address)
    try:
        store = ftqueue.api._ensure_client().store
        outcomes = store.outcomes
        stalled = []

        def stall_once(ids):
            if not stalled:
                stalled.append(ids)
                freeze(server)
                threading.Timer(2.0, thaw, (server,)).start()
            return outcomes(ids)

        ref = make.remote(str(tmp_path / "runs"), "big", "x" * 100_000)
        assert ftqueue.wait([ref], timeout=60)[0] == [ref]
        monkeypatch.setattr(store, "outcomes", stall_once)
        assert ref.future().result(timeout=30) == "x" * 100_000
        assert stalled and runs(tmp_path / "runs", "big") == 1
    finally:
        thaw(server)
        ftqueue.shutdown()


EXITING_DRIVER = """
import signal, sys, ftqueue

signal.signal(signal.SIGINT, signal.default_int_handler)   # even if started with it ignored

@ftqueue.remote
def f(x):
    return x

ftqueue.init(address=sys.argv[1])
assert ftqueue.get(f.remote(1), timeout=60) == 1
print("ready", flush=True)
sys.stdin.readline()
refs = [f.remote(i) for i in range(20)]
print("exiting", flush=True)
"""


def test_interpreter_exit_does_not_hang_while_redis_is_frozen(own_redis, nodes):
    server = own_redis()
    nodes(server.address)
    driver = Driver(EXITING_DRIVER, server.address)
    try:
        driver.expect("ready")
        freeze(server)
        driver.send("go")
        driver.expect("exiting")
        started = time.monotonic()
        try:
            driver.process.wait(15)
        except subprocess.TimeoutExpired:
            pytest.fail("the driver did not exit within 15 s of a frozen Redis")
        assert time.monotonic() - started < 10
    finally:
        thaw(server)
        driver.stop()


# -- item 14: Redis down or full at .remote() --------------------------------------------------

def test_first_use_of_a_function_while_redis_is_down_waits_in_the_process(own_redis, nodes):
    server = own_redis(appendonly=True)
    nodes(server.address)
    ftqueue.init(address=server.address)
    try:
        assert ftqueue.get(echo.remote(1), timeout=60) == 1
        server.kill()
        started = time.monotonic()
        ref = first_used_while_redis_is_down.remote(4)     # no redis.* error: it waits here
        assert time.monotonic() - started < 3
        server.restart()
        assert ftqueue.get(ref, timeout=60) == 40
    finally:
        ftqueue.shutdown()


def test_a_full_redis_refuses_submissions_with_a_clear_error(own_redis, nodes):
    server = own_redis()
    ftqueue.init(address=server.address)
    admin = redis.Redis.from_url(server.address)
    try:
        ftqueue.flush_submissions()
        echo.remote(0)                                   # its function is now stored
        ftqueue.flush_submissions()
        admin.config_set("maxmemory", 1)                 # noeviction: every write refused
        refs = [echo.remote(1), first_used_while_redis_is_full.remote(1)]
        for ref in refs:
            with pytest.raises(FtqueueError, match="OOM|maxmemory") as info:
                ftqueue.get(ref, timeout=30)
            assert not isinstance(info.value, redis.RedisError)
        admin.config_set("maxmemory", 0)
        nodes(server.address)
        assert ftqueue.get(echo.remote(2), timeout=60) == 2
    finally:
        admin.config_set("maxmemory", 0)
        admin.close()
        ftqueue.shutdown()


# -- issue 12 item 8: the package's face ---------------------------------------------------------

def test_state_is_usable_after_a_bare_import(redis_url):
    result = subprocess.run(
        [sys.executable, "-c", "import ftqueue; print(ftqueue.state.list_tasks())"],
        capture_output=True, text=True, timeout=60, check=False,
        env=child_env(FTQUEUE_ADDRESS=redis_url))
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "[]"

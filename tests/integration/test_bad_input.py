"""The bad-input catalogue: one case per row. In every case: a clear error, the worker node
keeps serving other tasks, nothing else is lost."""

from __future__ import annotations

import os
import pickle
import signal
import subprocess
import sys
import threading
import time

import psutil
import pytest
import redis
from conftest import NodeProcess, child_env, wait_until

import ftqueue
import ftqueue.state
from ftqueue.exceptions import (
    FtqueueConnectionError,
    GetTimeoutError,
    PayloadTooLargeError,
    SerializationError,
    TaskCancelledError,
    TaskError,
    UnserializableException,
    WorkerCrashedError,
)


@pytest.fixture(scope="module")
def node(redis_server):
    """One node for the whole catalogue: each case also checks it still serves."""
    client = redis.Redis.from_url(redis_server.address)
    client.flushall()
    node = NodeProcess(redis_server.address, 2, "--lease-timeout", "1", "--grace-period", "1",
                       env=child_env(FTQUEUE_MAX_PAYLOAD_BYTES=str(2 * 2**20)))
    os.environ["FTQUEUE_MAX_PAYLOAD_BYTES"] = str(2 * 2**20)
    ftqueue.init(address=redis_server.address)
    try:
        yield node
    finally:
        ftqueue.shutdown()
        os.environ.pop("FTQUEUE_MAX_PAYLOAD_BYTES", None)
        node.stop()


@pytest.fixture
def raw(redis_server):
    client = redis.Redis.from_url(redis_server.address)
    yield client
    client.close()


@ftqueue.remote
def echo(x):
    return x


def still_serves() -> None:
    assert ftqueue.get(echo.remote("alive"), timeout=30) == "alive"


def task_count(raw) -> int:
    return raw.zcard("ftq:index:tasks")


def fails_at_submit(raw, exc_type, call) -> BaseException:
    before = task_count(raw)
    with pytest.raises(exc_type) as info:
        call()
    ftqueue.flush_submissions()
    assert task_count(raw) == before, "a failed submission wrote to Redis"
    assert len(str(info.value).splitlines()) == 1
    return info.value


# 1-4: what cannot be (or barely can be) pickled, at submission

def test_01_unpicklable_function(node, raw):
    lock = threading.Lock()

    @ftqueue.remote
    def closes_over_lock():
        return lock.locked()

    err = fails_at_submit(raw, SerializationError, closes_over_lock.remote)
    assert "Could not serialize the function closes_over_lock" in str(err)
    still_serves()


def test_02_unpicklable_argument(node, raw):
    err = fails_at_submit(raw, TypeError, lambda: echo.remote(threading.Lock()))
    assert "Could not serialize the arguments for a task echo" in str(err)


def test_03_generator_argument(node, raw):
    fails_at_submit(raw, SerializationError, lambda: echo.remote(x for x in range(3)))


def test_04_deep_recursion_in_arguments(node, raw):
    deep: list = []
    for _ in range(100_000):
        deep = [deep]
    fails_at_submit(raw, SerializationError, lambda: echo.remote(deep))
    still_serves()


def test_05_cyclic_argument_round_trips(node):
    cyclic: list = [1]
    cyclic.append(cyclic)
    back = ftqueue.get(echo.remote(cyclic), timeout=30)
    assert back[0] == 1 and back[1] is back


# 6-9: sizes

def test_06_oversized_argument_writes_nothing(node, raw):
    err = fails_at_submit(raw, PayloadTooLargeError, lambda: echo.remote(b"x" * 3 * 2**20))
    assert isinstance(err, ValueError) and "FTQUEUE_MAX_PAYLOAD_BYTES" in str(err)


def test_07_oversized_result_fails_the_task_not_redis(node, raw):
    @ftqueue.remote(max_retries=2, retry_exceptions=True)
    def big():
        return b"x" * 3 * 2**20

    ref = big.remote()
    with pytest.raises(TaskError) as info:
        ftqueue.get(ref, timeout=30)
    assert isinstance(info.value.cause, PayloadTooLargeError)
    assert len(ftqueue.state.get_task(ref.hex())) == 1     # deterministic: not retried
    assert raw.strlen(f"ftq:result:{ref.hex()}") < 2**20


def test_08_payload_just_below_the_limit_works(node):
    assert len(ftqueue.get(echo.remote(b"x" * (2**20)), timeout=30)) == 2**20


def test_09_unpicklable_result(node):
    @ftqueue.remote
    def returns_generator():
        return (x for x in range(3))

    with pytest.raises(TaskError, match="Could not serialize the task's return value"):
        ftqueue.get(returns_generator.remote(), timeout=30)


# 10-11: exceptions that do not travel

class HoldsLock(Exception):
    def __init__(self):
        super().__init__("holding a lock")
        self.lock = threading.Lock()


class NeedsTwoArgs(Exception):
    def __init__(self, a, b):
        super().__init__(f"{a}/{b}")


def test_10_unpicklable_exception(node):
    @ftqueue.remote
    def raise_it():
        raise HoldsLock()

    with pytest.raises(TaskError) as info:
        ftqueue.get(raise_it.remote(), timeout=30)
    assert isinstance(info.value.cause, UnserializableException)
    assert "holding a lock" in str(info.value) and "HoldsLock" in info.value.cause.type_name


def test_11_exception_that_fails_to_unpickle(node):
    @ftqueue.remote
    def raise_it():
        raise NeedsTwoArgs("x", "y")

    with pytest.raises(TaskError, match="x/y"):
        ftqueue.get(raise_it.remote(), timeout=30)


# 12-13: failed and cancelled arguments

def test_12_argument_from_a_failed_task(node):
    @ftqueue.remote
    def fails():
        raise ValueError("upstream")

    with pytest.raises(ValueError, match="upstream") as info:
        ftqueue.get(echo.remote(fails.remote()), timeout=30)
    assert "could not be computed" in str(info.value)


def test_13_argument_from_a_cancelled_task(node):
    @ftqueue.remote
    def slow():
        time.sleep(30)

    upstream = slow.options(queue="nobody-serves-this").remote()
    ftqueue.cancel(upstream)
    with pytest.raises(TaskError) as info:
        ftqueue.get(echo.remote(upstream), timeout=30)
    assert isinstance(info.value.cause, TaskCancelledError)


# 14-16: garbage in Redis

def test_14_garbage_pushed_onto_the_queue(node, raw, redis_server):
    from ftqueue.embedded import find_redis_server

    redis_cli = os.path.join(os.path.dirname(find_redis_server()), "redis-cli")
    socket_path = redis_server.address[len("unix://"):]
    for args in (["LPUSH", "ftq:queue:default", "not-a-task", "*", "0" * 32, "\xff\xfe"],
                 ["LPUSH", "ftq:bell:default", "1"]):
        subprocess.run([redis_cli, "-s", socket_path, *args], check=True, capture_output=True)
    still_serves()
    assert node.process.poll() is None


def test_15_task_record_with_missing_fields(node, raw):
    ref = echo.options(queue="held").remote(1)
    ftqueue.flush_submissions()
    raw.hdel(f"ftq:task:{ref.hex()}", "fn", "func")
    raw.hset(f"ftq:task:{ref.hex()}", "queue", "default")
    raw.lrem("ftq:queue:held", 0, ref.hex())
    raw.rpush("ftq:queue:default", ref.hex())
    raw.lpush("ftq:bell:default", b"1")
    with pytest.raises(TaskError):
        ftqueue.get(ref, timeout=30)
    still_serves()


def test_16_garbage_arguments_blob(node, raw):
    ref = echo.options(queue="held2").remote(1)
    ftqueue.flush_submissions()
    raw.set(f"ftq:args:{ref.hex()}", b"\x80\x05garbage")
    raw.hset(f"ftq:task:{ref.hex()}", "queue", "default")
    raw.lrem("ftq:queue:held2", 0, ref.hex())
    raw.rpush("ftq:queue:default", ref.hex())
    raw.lpush("ftq:bell:default", b"1")
    with pytest.raises(TaskError, match="Could not deserialize the task arguments"):
        ftqueue.get(ref, timeout=30)
    assert len(ftqueue.state.get_task(ref.hex())) == 1        # not retried
    still_serves()


def test_17_function_from_another_python(node, raw):
    ref = echo.options(queue="held3").remote(1)
    ftqueue.flush_submissions()
    digest = raw.hget(f"ftq:task:{ref.hex()}", "fn").decode()
    raw.set(f"ftq:fn:{'f' * 40}", pickle.dumps({"versions": "Python 3.99.0, cloudpickle 9.9",
                                               "code": b"\x80\x05not loadable"}))
    raw.hset(f"ftq:task:{ref.hex()}", mapping={"fn": "f" * 40, "queue": "default"})
    # A record pointing at another function is refused unless its (here unsigned) envelope
    # says the same: write both, as a driver on that other Python would have.
    from ftqueue import payload

    bound = payload.execution_fields("f" * 40, 0, None, False, 3)
    blob, _ = payload.pack_args([1], {}, False, "echo", ref.hex(), bound)
    raw.set(f"ftq:args:{ref.hex()}", blob)
    raw.lrem("ftq:queue:held3", 0, ref.hex())
    raw.rpush("ftq:queue:default", ref.hex())
    raw.lpush("ftq:bell:default", b"1")
    with pytest.raises(TaskError) as info:
        ftqueue.get(ref, timeout=30)
    assert "Python 3.99.0, cloudpickle 9.9" in str(info.value)
    assert "Python 3." in str(info.value).split("this worker runs")[1]
    assert len(ftqueue.state.get_task(ref.hex())) == 1       # no retry storm
    assert digest
    still_serves()


# 18-24: tasks that misbehave

def test_18_sys_exit(node):
    @ftqueue.remote(max_retries=1)
    def leaves():
        sys.exit(3)

    with pytest.raises(WorkerCrashedError):
        ftqueue.get(leaves.remote(), timeout=30)
    still_serves()


def test_19_raises_keyboard_interrupt(node):
    @ftqueue.remote(max_retries=3, retry_exceptions=True)
    def interrupts():
        raise KeyboardInterrupt

    ref = interrupts.remote()
    with pytest.raises(TaskCancelledError):
        ftqueue.get(ref, timeout=30)
    assert len(ftqueue.state.get_task(ref.hex())) == 1
    still_serves()


def test_20_raises_system_exit_directly(node):
    @ftqueue.remote(max_retries=0)
    def exits():
        raise SystemExit("bye")

    with pytest.raises(WorkerCrashedError):
        ftqueue.get(exits.remote(), timeout=30)
    still_serves()


def test_21_segfault(node):
    @ftqueue.remote(max_retries=0)
    def segfault():
        import ctypes
        ctypes.string_at(0)

    with pytest.raises(WorkerCrashedError, match="SIGSEGV"):
        ftqueue.get(segfault.remote(), timeout=30)
    still_serves()


def test_22_forks_a_child_that_outlives_it(node):
    @ftqueue.remote
    def forks():
        return subprocess.Popen(["sleep", "60"]).pid

    pid = ftqueue.get(forks.remote(), timeout=30)
    still_serves()
    assert psutil.pid_exists(pid)
    # It is in the node's process group: stopping the node (container) ends it too.
    assert os.getpgid(pid) == os.getpgid(node.pid)


def test_23_ignores_sigterm(redis_server, tmp_path):
    node = NodeProcess(redis_server.address, 1, "--grace-period", "1", "--queues", "stubborn")
    marker = tmp_path / "started"
    try:
        @ftqueue.remote(max_retries=0, queue="stubborn")
        def stubborn(path):
            signal.signal(signal.SIGTERM, signal.SIG_IGN)
            open(path, "w").close()
            time.sleep(60)

        ref = stubborn.remote(str(marker))
        wait_until(marker.exists, 30, "the stubborn task to start")
        worker = node.workers()[0]
        started = time.monotonic()
        node.process.send_signal(signal.SIGTERM)
        assert node.process.wait(30) == 0 and time.monotonic() - started < 15
        assert not worker.is_running() or worker.status() == psutil.STATUS_ZOMBIE
        rows = ftqueue.state.get_task(ref.hex())
        assert "retry not charged" in rows[0]["error_message"]
        assert rows[-1]["state"] == "PENDING_NODE_ASSIGNMENT"   # back in its queue
        ftqueue.cancel(ref)
    finally:
        node.stop()


def test_24_holds_the_gil_in_c_without_losing_its_lease(node):
    @ftqueue.remote(max_retries=0)
    def busy():
        return sum(range(2 * 10**8))     # seconds in C with the GIL held; lease is 1 s

    ref = busy.remote()
    assert ftqueue.get(ref, timeout=120) == sum(range(2 * 10**8))
    assert [r["state"] for r in ftqueue.state.get_task(ref.hex())] == ["FINISHED"]


# 25-27: names and queues

def test_25_names_with_newlines_or_globs(node):
    with pytest.raises(ValueError):
        echo.options(name="two\nlines")
    with pytest.raises(ValueError):
        echo.options(queue="q*")

    def weird(x):
        return x

    weird.__name__ = "we\nird*[x]"
    ref = ftqueue.remote(weird).remote(9)
    assert ftqueue.get(ref, timeout=30) == 9
    (row,) = ftqueue.state.get_task(ref.hex())
    assert "\n" not in row["func_or_class_name"]


def test_26_queue_nobody_serves(node, raw):
    ref = echo.options(queue="nobody-home").remote(1)
    with pytest.raises(GetTimeoutError):
        ftqueue.get(ref, timeout=0.5)
    assert raw.llen("ftq:queue:nobody-home") == 1
    assert ftqueue.state.get_task(ref.hex())[-1]["state"] == "PENDING_NODE_ASSIGNMENT"


# 27-30: the outside world

def test_27_unreachable_redis():
    result = subprocess.run([sys.executable, "-c", """
import ftqueue
try:
    ftqueue.init(address="redis://127.0.0.1:1")
except ConnectionError as e:
    print(type(e).__name__, e)
"""], capture_output=True, text=True, env=child_env(), timeout=60)
    assert result.stdout.startswith("FtqueueConnectionError cannot reach Redis")
    assert issubclass(FtqueueConnectionError, ConnectionError)


def test_28_invalid_address():
    result = subprocess.run([sys.executable, "-c", """
import ftqueue
try:
    ftqueue.init(address="http://nope")
except ConnectionError as e:
    print(type(e).__name__, e)
print(ftqueue.is_initialized())
"""], capture_output=True, text=True, env=child_env(), timeout=60)
    # A subclass of FtqueueConnectionError that no wait can mend.
    assert result.stdout.startswith("InvalidAddressError invalid Redis address")
    assert result.stdout.split()[-1] == "False"


def test_28_a_node_given_an_invalid_address_fails_at_once():
    # A node waits for a Redis that is not up yet (FTQUEUE_STARTUP_WAIT_S), not for a typo.
    result = subprocess.run([sys.executable, "-m", "ftqueue", "worker", "--address",
                             "redis://127.0.0.1:notaport"], capture_output=True, text=True,
                            env=child_env(FTQUEUE_STARTUP_WAIT_S="300"), timeout=60)
    assert result.returncode == 1 and "Traceback" not in result.stderr
    assert "invalid Redis address" in result.stderr.strip().splitlines()[-1]


@pytest.mark.parametrize("args, code", [
    (["frobnicate"], 2),
    (["list", "tasks", "--limit", "zero"], 2),
    (["worker", "--num-workers", "-3"], 2),
    (["worker", "--max-memory-per-worker", "lots"], 2),
    (["list", "tasks", "-f", "state=", "--address", "redis://127.0.0.1:1"], 1),
    (["cancel", "../../etc", "--address", "redis://127.0.0.1:1"], 1),
])
def test_29_cli_given_nonsense(args, code):
    proc = subprocess.run([sys.executable, "-m", "ftqueue", *args], capture_output=True,
                          text=True, env=child_env(), timeout=60)
    assert proc.returncode == code, proc.stderr
    assert "Traceback" not in proc.stderr and proc.stderr.strip()


def test_30_put_too_large(node, raw):
    with pytest.raises(PayloadTooLargeError):
        ftqueue.put(b"x" * 3 * 2**20)

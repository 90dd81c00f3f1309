"""The Ray-style API against a real Redis and a real `ftqueue worker` node."""

from __future__ import annotations

import os
import signal
import threading
import time

import pytest
import redis
from conftest import child_env, run_script, wait_until

import ftqueue
from ftqueue.exceptions import (
    GetTimeoutError,
    ObjectLostError,
    SerializationError,
    TaskError,
    UnserializableException,
)


@ftqueue.remote
def double(x):
    return x * 2


@ftqueue.remote
def add(a, b=0):
    return a + b


@ftqueue.remote
def fail(message="the real error"):
    raise ValueError(message)


@ftqueue.remote
def echo(x):
    return x


@ftqueue.remote
def slow(seconds, value=None):
    time.sleep(seconds)
    return value


@ftqueue.remote
def whoami():
    ctx = ftqueue.get_runtime_context()
    return os.getpid(), ctx.task_id, ctx.attempt_number, ctx.job_id


class CustomError(Exception):
    pass


class Unpicklable(Exception):
    def __reduce__(self):
        raise TypeError("this exception refuses to pickle")


class BadUnpickle(Exception):
    def __init__(self, a, b):  # pickles as cls(*args) with one arg: fails to unpickle
        super().__init__(f"{a}-{b}")


def test_single_and_list_get(cluster):
    assert ftqueue.get(double.remote(21)) == 42
    assert ftqueue.get([add.remote(i, b=1) for i in range(20)]) == list(range(1, 21))
    assert ftqueue.get([]) == []


def test_options_override_name_and_queue_per_call(cluster, rclient):
    ref = double.options(name="renamed").remote(1)
    assert ftqueue.get(ref) == 2
    assert rclient.hget(f"ftq:task:{ref.hex()}", "name") == "renamed"
    assert rclient.hget(f"ftq:task:{ref.hex()}", "func") == "double"


def test_application_error_is_task_error_and_original_class(cluster):
    with pytest.raises(ValueError) as info:
        ftqueue.get(fail.remote())
    err = info.value
    assert isinstance(err, TaskError) and isinstance(err, ftqueue.exceptions.RayTaskError)
    assert isinstance(err.cause, ValueError) and str(err.cause) == "the real error"
    text = str(err)
    lines = text.splitlines()
    assert lines[0].startswith("ftqueue::fail() (pid=") and ", ip=" in lines[0]
    assert 'raise ValueError(message)' in text and "test_api.py" in text
    assert lines[-1] == "ValueError: the real error"


def test_custom_exception_class_survives(cluster):
    @ftqueue.remote
    def raise_custom():
        raise CustomError("custom")

    with pytest.raises(CustomError):
        ftqueue.get(raise_custom.remote())


def test_unpicklable_exception_reaches_caller_as_text(cluster):
    @ftqueue.remote
    def raise_unpicklable():
        raise Unpicklable("cannot travel")

    with pytest.raises(TaskError) as info:
        ftqueue.get(raise_unpicklable.remote())
    assert isinstance(info.value.cause, UnserializableException)
    assert "Unpicklable" in info.value.cause.type_name
    assert "cannot travel" in str(info.value)


def test_exception_that_fails_to_unpickle(cluster):
    @ftqueue.remote
    def raise_bad():
        raise BadUnpickle("x", "y")

    with pytest.raises(TaskError) as info:
        ftqueue.get(raise_bad.remote())
    assert isinstance(info.value.cause, UnserializableException)
    assert "x-y" in str(info.value)


def test_unpicklable_argument_fails_at_remote_and_writes_nothing(cluster, rclient):
    before = set(rclient.scan_iter("ftq:task:*"))
    with pytest.raises(TypeError) as info:
        double.remote(threading.Lock())
    assert isinstance(info.value, SerializationError)
    assert "Could not serialize the arguments" in str(info.value)
    ftqueue.flush_submissions()
    assert set(rclient.scan_iter("ftq:task:*")) == before


def test_unpicklable_result_fails_the_task_clearly(cluster):
    @ftqueue.remote
    def returns_lock():
        return threading.Lock()

    with pytest.raises(TaskError) as info:
        ftqueue.get(returns_lock.remote())
    assert "Could not serialize the task's return value" in str(info.value)


def test_dependency_values_and_failure_chain(cluster):
    assert ftqueue.get(add.remote(double.remote(1), b=double.remote(2))) == 6
    with pytest.raises(ValueError) as info:
        ftqueue.get(echo.remote(fail.remote()))
    text = str(info.value)
    assert text.splitlines()[0].startswith("ftqueue::echo()")
    assert "At least one of the input arguments for this task could not be computed:" in text
    assert "ftqueue::fail()" in text and text.endswith("ValueError: the real error")


def test_dependent_waits_without_a_worker(cluster, rclient):
    blocker = slow.remote(1.0, 5)
    dependent = double.remote(blocker)
    ftqueue.flush_submissions()
    assert rclient.hget(f"ftq:task:{dependent.hex()}", "state") == "PENDING_ARGS_AVAIL"
    assert ftqueue.get(dependent) == 10


def test_put_and_get_and_as_argument(cluster):
    ref = ftqueue.put({"a": [1, 2]})
    assert ftqueue.get(ref) == {"a": [1, 2]}
    assert ftqueue.get(echo.remote(ref)) == {"a": [1, 2]}
    with pytest.raises(TypeError):
        ftqueue.put(ref)


def test_nested_refs_are_passed_as_refs(cluster):
    inner = ftqueue.put(7)

    @ftqueue.remote
    def unwrap(box):
        return ftqueue.get(box[0])

    assert ftqueue.get(unwrap.remote([inner])) == 7


def test_get_timeout(cluster):
    ref = slow.remote(3)
    with pytest.raises(GetTimeoutError) as info:
        ftqueue.get(ref, timeout=0.2)
    assert isinstance(info.value, TimeoutError)


def test_wait(cluster):
    fast = [double.remote(i) for i in range(3)]
    long = slow.remote(5)
    ready, not_ready = ftqueue.wait(fast + [long], num_returns=3, timeout=10)
    assert ready == fast and not_ready == [long]
    ready, not_ready = ftqueue.wait([long], timeout=0.1)
    assert ready == [] and not_ready == [long]
    with pytest.raises(ValueError):
        ftqueue.wait(fast, num_returns=5)


def test_wait_on_no_refs_and_a_negative_timeout_as_ray(cluster):
    """Ray: `wait([])` is `([], [])` (a `while refs: ... = wait(refs)` loop may pass it),
    and a negative timeout is a ValueError, not a timeout of 0."""
    assert ftqueue.wait([]) == ([], [])
    with pytest.raises(ValueError, match="nonnegative"):
        ftqueue.wait([double.remote(1)], timeout=-1)


def test_unknown_option_rejected_at_decoration():
    with pytest.raises(ValueError):
        ftqueue.remote(max_retires=2)
    with pytest.raises(ValueError):
        double.options(foo=1)
    with pytest.raises(ValueError):
        ftqueue.remote(max_retries=-2)
    with pytest.raises(ValueError):
        ftqueue.remote(retry_exceptions=["nope"])


def test_direct_call_is_refused():
    with pytest.raises(TypeError, match="double.remote"):
        double(1)


def test_runtime_context_and_job_id(cluster, rclient):
    pid, task_id, attempt, job_id = ftqueue.get(ref := whoami.remote())
    assert task_id == ref.hex() and attempt == 0
    assert job_id == ftqueue.get_runtime_context().job_id
    assert rclient.hget(f"ftq:task:{task_id}", "job_id") == job_id


def test_nested_tasks_record_parent_and_do_not_deadlock_one_worker(driver, start_node, rclient):
    start_node(1)

    @ftqueue.remote
    def parent(n):
        return sum(ftqueue.get([double.remote(i) for i in range(n)]))

    ref = parent.remote(4)
    assert ftqueue.get(ref, timeout=60) == 12
    children = [tid.split(":")[-1] for tid in rclient.scan_iter("ftq:task:*")
                if rclient.hget(tid, "parent_task_id") == ref.hex()]
    assert len(children) == 4
    job = rclient.hget(f"ftq:task:{ref.hex()}", "job_id")
    assert all(rclient.hget(f"ftq:task:{c}", "job_id") == job for c in children)


def test_refs_cross_processes(redis_url, start_node):
    """One process submits, a separate node runs it, a third process gets it by id."""
    start_node(2)
    submit = run_script(f"""
import ftqueue
ftqueue.init(address={redis_url!r})
print(ftqueue.remote_function("operator:mul").remote(6, 7).hex())
""")
    assert submit.returncode == 0, submit.stderr
    task_id = submit.stdout.strip()
    fetch = run_script(f"""
import ftqueue
ftqueue.init(address={redis_url!r})
print(ftqueue.get(ftqueue.ObjectRef.from_hex({task_id!r}), timeout=60))
""")
    assert fetch.returncode == 0, fetch.stderr
    assert fetch.stdout.strip() == "42"


def test_remote_function_import_failure_is_clear(cluster):
    ref = ftqueue.remote_function("no_such_module_xyz:func").remote()
    with pytest.raises(TaskError) as info:
        ftqueue.get(ref, timeout=30)
    assert "could not import 'no_such_module_xyz:func'" in str(info.value)
    with pytest.raises(ValueError):
        ftqueue.remote_function("not a path")


def test_object_ref_hex_roundtrip_and_pickle():
    import pickle

    ref = ftqueue.ObjectRef("ab" * 16)
    assert ftqueue.ObjectRef.from_hex(ref.hex()) == ref
    assert pickle.loads(pickle.dumps(ref)) == ref
    for bad in ("not a ref", "", "x" * 129, "t#", "t#01", "#1", "t#1#2", "t#-1"):
        with pytest.raises(ValueError):
            ftqueue.ObjectRef.from_hex(bad)
    assert ftqueue.ObjectRef("my-task:1").task_id() == "my-task:1"
    assert ftqueue.ObjectRef("my-task:1#2").task_id() == "my-task:1"
    assert ftqueue.ObjectRef.from_hex("order-42").hex() == "order-42"   # a task_id= id


def test_init_twice_and_ignore_reinit(redis_url):
    ftqueue.init(address=redis_url)
    try:
        with pytest.raises(RuntimeError, match="ignore_reinit_error"):
            ftqueue.init(address=redis_url)
        info = ftqueue.init(address=redis_url, ignore_reinit_error=True)
        assert info.address == redis_url and ftqueue.is_initialized()
    finally:
        ftqueue.shutdown()
    assert not ftqueue.is_initialized()


def test_unreachable_address_is_one_clear_error():
    with pytest.raises(ConnectionError, match="cannot reach Redis"):
        ftqueue.init(address="redis://127.0.0.1:1")
    assert not ftqueue.is_initialized()


def test_embedded_default_runs_and_leaves_nothing_behind():
    result = run_script("""
import os, psutil
import ftqueue as ray

@ray.remote
def f(x):
    return x + 1

print(ray.get(f.remote(1)))   # implicit init: no address, no FTQUEUE_ADDRESS
me = psutil.Process()
print(len(me.children(recursive=True)) > 0)
ray.shutdown()
print(len(psutil.Process().children(recursive=True)))
""", env=child_env())
    assert result.returncode == 0, result.stderr
    assert result.stdout.split() == ["2", "True", "0"]


def test_embedded_cluster_dies_with_its_driver():
    result = run_script("""
import os, ftqueue
ftqueue.init(num_workers=1)
import psutil
print(" ".join(str(p.pid) for p in psutil.Process().children(recursive=True)), flush=True)
os._exit(0)   # no shutdown, no atexit
""")
    assert result.returncode == 0, result.stderr
    import psutil

    pids = [int(p) for p in result.stdout.split()]
    assert pids
    wait_until(lambda: not any(psutil.pid_exists(p) and psutil.Process(p).status() != "zombie"
                               for p in pids), 15, "the embedded cluster to exit with its driver")


def test_redis_keys_are_plain_text(cluster, rclient):
    ref = double.remote(2)
    ftqueue.get(ref)
    record = rclient.hgetall(f"ftq:task:{ref.hex()}")
    assert record["state"] == "FINISHED" and record["func"] == "double"
    assert record["attempt"] == "0" and record["node_id"] and record["worker_id"]
    raw = redis.Redis.from_url(rclient.connection_pool.connection_kwargs.get("path") and
                               f"unix://{rclient.connection_pool.connection_kwargs['path']}")
    assert raw.get(f"ftq:result:{ref.hex()}").startswith(b"V")
    raw.close()


def test_lost_put_object_raises_object_lost(cluster, rclient):
    ref = ftqueue.put(1)
    rclient.delete(f"ftq:result:{ref.hex()}")
    with pytest.raises(ObjectLostError):
        ftqueue.get(ref)


def test_forked_child_submits_without_waiting(redis_url, start_node):
    """A web server that forks after init (gunicorn --preload) must not strand submissions
    in a buffer whose sending thread did not survive the fork."""
    start_node(1)
    result = run_script(f"""
import os, time, ftqueue

@ftqueue.remote
def f(x):
    return x * 2

ftqueue.init(address={redis_url!r})
assert ftqueue.get(f.remote(1)) == 2
read, write = os.pipe()
pid = os.fork()
if pid == 0:
    ref = f.remote(21)                    # fire and forget: no get, no flush
    os.write(write, ref._id.encode())     # (hex() would flush: read the id directly)
    time.sleep(2)
    os._exit(0)
task_id = os.read(read, 100).decode()
os.waitpid(pid, 0)
print(ftqueue.get(ftqueue.ObjectRef.from_hex(task_id), timeout=10))
""")
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "42"


def test_a_multiprocessing_child_sends_its_whole_burst_before_it_exits(redis_url, start_node,
                                                                      tmp_path):
    """A multiprocessing (fork) child ends with os._exit after its finalizers, never running
    atexit: the tail of a burst of `.remote()` calls it made was dropped without a word."""
    start_node(2)
    runs_file = tmp_path / "runs"
    result = run_script(f"""
import multiprocessing, ftqueue

@ftqueue.remote
def f(i):
    with open({str(runs_file)!r}, "a") as fh:
        fh.write(f"{{i}}\\n")

def child():
    for i in range(200):
        f.remote(i)

ftqueue.init(address={redis_url!r})
ftqueue.get(f.remote(-1))
p = multiprocessing.get_context("fork").Process(target=child)
p.start()
p.join()
print(p.exitcode)
""")
    assert result.returncode == 0, result.stderr
    wait_until(lambda: len(runs_file.read_text().split()) >= 201, 15,
               "the child's 200 tasks to run")


def test_sigterm_to_a_driver_sends_its_burst_before_it_ends(redis_url, start_node, tmp_path):
    """`docker stop`, systemd and Kubernetes end a driver with SIGTERM, whose default action
    skips atexit: the tail of a burst was dropped without a word. As Ray's driver does, a
    driver's SIGTERM exits through SystemExit, so shutdown sends what is queued."""
    start_node(2)
    runs_file = tmp_path / "runs"
    result = run_script(f"""
import os, signal, time, ftqueue

@ftqueue.remote
def f(i):
    with open({str(runs_file)!r}, "a") as fh:
        fh.write(f"{{i}}\\n")

ftqueue.init(address={redis_url!r})
ftqueue.get(f.remote(-1))
for i in range(300):
    f.remote(i)
os.kill(os.getpid(), signal.SIGTERM)
time.sleep(30)
""")
    wait_until(lambda: len(runs_file.read_text().split()) >= 301, 15,
               "the driver's 300 tasks to run")
    assert result.returncode == signal.SIGTERM, result.stderr   # as Ray's: sys.exit(signum)

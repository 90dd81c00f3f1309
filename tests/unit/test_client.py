"""The client's parts on fakeredis: lineage, deadline-bounded calls, interrupts at every line
of the submit path, and a Redis that lost its data. No sleeps."""

from __future__ import annotations

import ast
import asyncio
import linecache
import os
import sys
import threading
import time

import fakeredis
import pytest
import redis

import ftqueue
from ftqueue import payload
from ftqueue.client import Client, submit_queue
from ftqueue.client.calls import BoundedCalls, DeadlinePassed
from ftqueue.client.lineage import LineageCache
from ftqueue.client.records import Submission
from ftqueue.context import TaskContext, current_task, set_current_task
from ftqueue.exceptions import FtqueueConnectionError, FtqueueError
from ftqueue.remote_function import bind_runtime
from ftqueue.store import Store

FTQUEUE_DIR = os.path.dirname(ftqueue.__file__)


def spec(task_id: str, *deps: str, size: int = 10) -> Submission:
    return Submission(task_id, "default", b"x" * size, deps, {}, None)


# -- lineage -----------------------------------------------------------------------------------

def test_closure_is_dependencies_first_each_once_only_what_is_held():
    lineage = LineageCache(1 << 20)
    lineage.add([spec("a"), spec("b", "a"), spec("c", "a", "b"), spec("d", "c", "gone")])
    assert [s.task_id for s in lineage.closure(["d"])] == ["a", "b", "c", "d"]
    assert [s.task_id for s in lineage.closure(["b", "c"])] == ["a", "b", "c"]
    assert lineage.closure(["gone"]) == []


def test_lineage_keeps_the_newest_within_its_budget():
    lineage = LineageCache(25)
    lineage.add([spec("a"), spec("b"), spec("c")])
    assert "a" not in lineage and "b" in lineage and "c" in lineage


# -- bounded calls -----------------------------------------------------------------------------

def test_a_call_to_a_frozen_redis_is_abandoned_at_the_deadline():
    calls = BoundedCalls()
    thaw = threading.Event()
    started = time.monotonic()
    with pytest.raises(DeadlinePassed):
        calls.run(thaw.wait, started + 0.2)
    assert time.monotonic() - started < 1.5
    thaw.set()
    assert calls.run(lambda: 42, time.monotonic() + 10) == 42   # the helper is free again


def test_transient_errors_are_retried_and_others_become_ftqueue_errors():
    calls = BoundedCalls()
    attempts = []

    def flaky():
        attempts.append(1)
        if len(attempts) < 3:
            raise redis.ConnectionError("connection refused")
        return "ok"

    assert calls.run(flaky, time.monotonic() + 30) == "ok" and len(attempts) == 3
    with pytest.raises(FtqueueConnectionError):
        calls.run(lambda: (_ for _ in ()).throw(redis.ConnectionError("down")), None,
                  retry=False)
    with pytest.raises(FtqueueError, match="NOPERM") as info:
        calls.run(lambda: (_ for _ in ()).throw(redis.ResponseError("NOPERM no")), None)
    assert not isinstance(info.value, redis.RedisError)
    with pytest.raises(ZeroDivisionError):     # a bug is not dressed up as a Redis error
        calls.run(lambda: 1 // 0, time.monotonic() + 5)


# -- the client on fakeredis -------------------------------------------------------------------

@pytest.fixture
def server():
    return fakeredis.FakeServer()


@pytest.fixture
def client(server):
    client = Client("fake://", store=Store(fakeredis.FakeRedis(server=server), "ftq"))
    try:
        bind_runtime(lambda: client)
        yield client
    finally:
        bind_runtime(ftqueue.api._ensure_client)
        client.close()


@ftqueue.remote
def f(x):
    return x


def tasks_named(client, name: str) -> int:
    return sum(1 for key in client.store.redis.scan_iter("ftq:task:*")
               if client.store.redis.hget(key, "name") == name.encode())


def interrupt_at_line(k: int):
    """A tracer that raises KeyboardInterrupt at the k-th line ftqueue runs in this thread,
    as a Ctrl-C or a worker's cancel interrupt would."""
    count = 0

    def tracer(frame, event, arg):
        nonlocal count
        if not frame.f_code.co_filename.startswith(FTQUEUE_DIR):
            return None
        # Python reports a with-statement's line again where it calls __exit__, a point a
        # real signal cannot reach (CPython checks for them after calls, not before).
        line = linecache.getline(frame.f_code.co_filename, frame.f_lineno).strip()
        if event == "line" and not line.startswith("with "):
            count += 1
            if count == k:
                raise KeyboardInterrupt(f"{frame.f_code.co_filename}:{frame.f_lineno}")
        return tracer

    return tracer


@pytest.mark.parametrize("burst_gap_s", [-1.0, 1e9], ids=["lone", "burst"])
def test_an_interrupt_at_any_line_of_remote_leaves_the_client_usable(client, monkeypatch,
                                                                       burst_gap_s):
    monkeypatch.setattr(submit_queue, "BURST_GAP_S", burst_gap_s)
    previous = sys.gettrace()
    k = 0
    while True:
        k += 1
        name = f"t{k}"
        sys.settrace(interrupt_at_line(k))
        try:
            f.options(name=name).remote(k)
            interrupted = False
        except KeyboardInterrupt:
            interrupted = True
        finally:
            sys.settrace(previous)
        # Never wedged: what was queued is sent, and nothing is half-sent.
        assert client.flush(time.monotonic() + 10), f"flush stuck after interrupt {k}"
        assert not client.has_unflushed() and not client.queue._sending
        assert tasks_named(client, name) in (0, 1)
        if not interrupted:
            assert tasks_named(client, name) == 1
            break
    assert k > 20, "the submit path was not traced"
    ref = f.remote(0)
    assert client.wait([ref], timeout=0) == ([], [ref])
    started = time.monotonic()
    client.close()
    assert time.monotonic() - started < 3


def finish(store: Store, value) -> str:
    """Run one queued task as a worker would (claim, commit)."""
    (task,) = store.claim("n1", "w1", ["default"], 1, 8, 30_000)
    store.commit([(task.task_id, task.fence, "ok", payload.pack_value(value, task.task_id),
                   False, "")])
    return task.task_id


def test_redis_that_lost_its_data_gets_our_waiting_tasks_with_their_lineage(client):
    first = f.remote(1)
    assert client.flush(time.monotonic() + 10)
    assert finish(client.store, 1) == first._id
    assert client.get(first, timeout=10) == 1            # done and forgotten by the router
    second = f.options(queue="later").remote(first)      # waits for a queue nobody serves
    assert client.flush(time.monotonic() + 10)
    client.store.redis.flushall()                        # Redis restarted empty
    client.queue.request_epoch_check()
    assert client.flush(time.monotonic() + 10)
    redis_ = client.store.redis
    deadline = time.monotonic() + 10
    while redis_.hget(f"ftq:task:{second._id}", "state") is None:
        assert time.monotonic() < deadline, "the resubmission"
        client.flush(deadline)
    # The dependency is back first, and the dependent waits for it instead of failing.
    assert redis_.hget(f"ftq:task:{first._id}", "state") == b"PENDING_NODE_ASSIGNMENT"
    assert redis_.hget(f"ftq:task:{second._id}", "state") == b"PENDING_ARGS_AVAIL"
    assert client.redis_reset
    fn = redis_.hget(f"ftq:task:{first._id}", "fn").decode()
    assert client.store.load_function(fn) is not None    # its function is stored again


def test_a_function_exported_while_lost_data_is_resubmitted(client, monkeypatch):
    """Issue 11 item 12: the function table used to be iterated while another thread added
    to it (RuntimeError: dictionary changed size during iteration)."""
    ref = f.remote(1)
    assert client.flush(time.monotonic() + 10)
    client.store.redis.flushall()
    store_function = client.store.store_function
    exported = []

    def store_and_export_another(digest, blob):
        if not exported:   # another thread's first use of a function, at the worst moment
            exported.append(client.export_function(b"other", "other-digest"))
        return store_function(digest, blob)

    monkeypatch.setattr(client.store, "store_function", store_and_export_another)
    client.queue.request_epoch_check()
    assert client.flush(time.monotonic() + 10)
    deadline = time.monotonic() + 10
    while not client.store.redis.exists(f"ftq:task:{ref._id}"):
        assert time.monotonic() < deadline, "the resubmission"
        client.flush(deadline)
    assert exported and client.lineage.has_function("other-digest")


def test_a_refused_submission_is_what_get_raises(client, monkeypatch):
    def full(tasks):
        raise redis.exceptions.OutOfMemoryError(
            "command not allowed when used memory > 'maxmemory'.")

    monkeypatch.setattr(client.store, "submit", full)
    ref = f.remote(1)
    with pytest.raises(FtqueueError, match="maxmemory") as info:
        client.get(ref, timeout=10)
    assert not isinstance(info.value, redis.RedisError)
    assert client.wait([ref], timeout=10) == ([ref], [])   # final, as far as wait goes


# -- the current task --------------------------------------------------------------------------

def test_current_task_is_per_context_and_seen_by_the_tasks_threads():
    ctx = TaskContext("t1", 0, "job", "node", "worker", "f")
    seen = []
    try:
        set_current_task(ctx)
        thread = threading.Thread(target=lambda: seen.append(current_task()))
        thread.start()
        thread.join()

        async def other():
            set_current_task(TaskContext("t2", 0, "job", "node", "worker", "g"))
            return current_task()

        async def both():
            inner = await asyncio.create_task(other())
            return inner, current_task()

        inner, outer = asyncio.run(both())
    finally:
        set_current_task(None)
    assert seen == [ctx]
    assert inner.task_id == "t2" and outer.task_id == "t1"
    assert current_task() is None


def test_no_lazy_upward_imports_in_the_client_modules():
    paths = [os.path.join(FTQUEUE_DIR, "remote_function.py"),
             *(os.path.join(FTQUEUE_DIR, "client", n)
               for n in os.listdir(os.path.join(FTQUEUE_DIR, "client")) if n.endswith(".py"))]
    for path in paths:
        with open(path) as f_:
            tree = ast.parse(f_.read())
        for fn in (n for n in ast.walk(tree) if isinstance(n, ast.FunctionDef)):
            imports = [n for n in ast.walk(fn) if isinstance(n, (ast.Import, ast.ImportFrom))]
            assert not imports, f"{path}: import inside {fn.name}()"

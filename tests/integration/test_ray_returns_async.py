"""Ray parity against a real Redis and real worker processes: num_returns, generator tasks,
awaitable refs and futures, `async def` tasks, runtime_env and the argument check."""

from __future__ import annotations

import asyncio
import os
import signal
import threading
import time

import pytest
import redis
from conftest import mark, runs, wait_for_file, wait_until

import ftqueue
from ftqueue.exceptions import TaskCancelledError, TaskError, TaskTimeoutError
from ftqueue.generators import ObjectRefGenerator


@ftqueue.remote(num_returns=3)
def three(path):
    mark(path)
    return "a", "b", "c"


@ftqueue.remote(num_returns=2)
def wrong_count():
    return 1, 2, 3


@ftqueue.remote
def join(*parts):
    return "".join(parts)


@ftqueue.remote(max_retries=1)
def counting(n, path, release):
    """Yields 0..n-1; the first attempt yields two values, then waits for `release`."""
    attempt = mark(path)
    for i in range(n):
        if i == 2 and attempt == 0:
            wait_for_file(release)
        yield i * 10


@ftqueue.remote(max_retries=0)
def failing_gen():
    yield 1
    raise ValueError("broke after one")


@ftqueue.remote
async def async_double(x):
    await asyncio.sleep(0.01)
    return 2 * x


@ftqueue.remote
async def async_gen(n):
    for i in range(n):
        await asyncio.sleep(0)
        yield i


@ftqueue.remote
async def async_sleeper(path, seconds):
    mark(path)
    try:
        await asyncio.sleep(seconds)
    except asyncio.CancelledError:
        with open(f"{path}.cancelled", "w") as f:
            f.write("CancelledError")
        raise
    return "slept"


@ftqueue.remote(max_retries=2, retry_exceptions=True)
async def async_flaky(path):
    if mark(path) < 2:
        raise RuntimeError("not yet")
    return "third time"


@ftqueue.remote(runtime_env={"env_vars": {"FTQ_TEST_VAR": "set"}})
def env_var():
    return os.environ.get("FTQ_TEST_VAR")


@ftqueue.remote
def plain_env_var():
    return os.environ.get("FTQ_TEST_VAR")


@ftqueue.remote
def add(a, b):
    return a + b


@ftqueue.remote
def slow_add(a, b, seconds):
    time.sleep(seconds)
    return a + b


def test_num_returns_gives_one_ref_per_value_usable_as_arguments(cluster, tmp_path):
    refs = three.remote(tmp_path / "runs")
    assert isinstance(refs, list) and len(refs) == 3
    assert ftqueue.get(refs) == ["a", "b", "c"]
    assert ftqueue.get(refs[1]) == "b"
    assert ftqueue.get(join.remote(refs[2], refs[0])) == "ca"
    ready, _ = ftqueue.wait(refs, num_returns=3, timeout=10)
    assert len(ready) == 3
    assert len(runs(tmp_path / "runs")) == 1


def test_num_returns_wrong_count_fails_every_ref(cluster):
    refs = wrong_count.remote()
    for ref in refs:
        with pytest.raises(TaskError, match="returned 3 objects, but num_returns=2"):
            ftqueue.get(ref, timeout=30)


def test_a_lost_value_of_several_is_rebuilt_by_running_its_task_again(cluster, redis_url,
                                                                      tmp_path):
    refs = three.remote(tmp_path / "runs")
    assert ftqueue.get(refs[0], timeout=30) == "a"
    r = redis.Redis.from_url(redis_url)
    assert r.delete(f"ftq:result:{refs[1].hex()}") == 1
    r.close()
    assert ftqueue.get(refs[1], timeout=30) == "b"
    assert len(runs(tmp_path / "runs")) == 2


def test_generator_streams_each_value_before_the_task_ends(cluster, tmp_path):
    release = tmp_path / "release"
    gen = counting.remote(4, tmp_path / "runs", release)
    assert isinstance(gen, ObjectRefGenerator)
    first, second = next(gen), next(gen)
    assert ftqueue.get([first, second], timeout=30) == [0, 10]
    # The task is still blocked: the values came while it ran.
    assert ftqueue.wait([gen.completed()], timeout=0.2)[0] == []
    release.touch()
    assert [ftqueue.get(r, timeout=30) for r in gen] == [20, 30]
    assert ftqueue.get(gen.completed(), timeout=30) == 4


def test_a_retried_generator_never_hands_a_value_twice(cluster, tmp_path):
    """The first attempt's worker is SIGKILLed after two values; the retry yields all four
    again, and the consumer sees each exactly once, in order."""
    release = tmp_path / "release"
    path = tmp_path / "runs"
    gen = counting.remote(4, path, release)
    got = [ftqueue.get(next(gen), timeout=30), ftqueue.get(next(gen), timeout=30)]
    pid = int(runs(path)[0])
    release.touch()   # too late for that attempt: its worker dies first
    os.kill(pid, signal.SIGKILL)
    got += [ftqueue.get(r, timeout=60) for r in gen]
    assert got == [0, 10, 20, 30]
    assert len(runs(path)) == 2


def test_a_failing_generator_gives_its_values_then_its_error(cluster):
    refs = list(failing_gen.remote())
    assert len(refs) == 2
    assert ftqueue.get(refs[0], timeout=30) == 1
    with pytest.raises(TaskError, match="broke after one"):
        ftqueue.get(refs[1], timeout=30)


def test_refs_are_awaitable_with_no_thread_per_ref(cluster):
    async def main():
        before = threading.active_count()
        refs = [slow_add.remote(i, i, 0.01) for i in range(200)]
        waiting = asyncio.ensure_future(asyncio.gather(*refs))
        await asyncio.sleep(0.3)
        during = threading.active_count()
        values = await waiting
        single = await add.remote(2, 3)
        with pytest.raises(asyncio.TimeoutError):
            await asyncio.wait_for(slow_add.remote(1, 1, 5), 0.2)
        within = await asyncio.wait_for(add.remote(1, 1), 30)
        streamed = [await r async for r in async_gen.remote(3)]
        return before, during, values, single, within, streamed

    before, during, values, single, within, streamed = asyncio.run(main())
    assert values == [2 * i for i in range(200)]
    assert (single, within, streamed) == (5, 2, [0, 1, 2])
    assert during - before <= 2, (before, during)    # the resolver thread, not 200 threads


def test_ref_future_is_a_concurrent_future(cluster):
    future = add.remote(20, 22).future()
    assert future.result(timeout=30) == 42
    failed = wrong_count.remote()[0].future()
    with pytest.raises(TaskError):
        failed.result(timeout=30)


def test_async_def_tasks_run_retry_and_time_out(cluster, tmp_path):
    assert ftqueue.get(async_double.remote(21), timeout=30) == 42
    assert ftqueue.get(async_flaky.remote(tmp_path / "flaky"), timeout=30) == "third time"
    assert len(runs(tmp_path / "flaky")) == 3
    with pytest.raises(TaskTimeoutError):
        ftqueue.get(async_sleeper.options(timeout_s=1, max_retries=0)
                    .remote(tmp_path / "t", 30), timeout=30)


def test_cancel_delivers_cancelled_error_inside_an_async_task(cluster, tmp_path):
    path = tmp_path / "runs"
    ref = async_sleeper.remote(path, 60)
    wait_until(lambda: runs(path), 30, "the task to start")
    ftqueue.cancel(ref)
    with pytest.raises(TaskCancelledError):
        ftqueue.get(ref, timeout=30)
    wait_until(lambda: os.path.exists(f"{path}.cancelled"), 10, "CancelledError inside")
    assert ftqueue.get(async_double.remote(1), timeout=30) == 2   # the worker goes on


def test_runtime_env_vars_are_set_for_that_task_only(cluster):
    assert ftqueue.get(env_var.remote(), timeout=30) == "set"
    assert ftqueue.get(plain_env_var.remote(), timeout=30) is None
    assert ftqueue.get(plain_env_var.options(
        runtime_env={"env_vars": {"FTQ_TEST_VAR": "per call"}}).remote(), timeout=30) \
        == "per call"
    with pytest.raises(ValueError, match="'conda'"):
        plain_env_var.options(runtime_env={"conda": "env"})


def test_arguments_are_checked_at_remote_and_nothing_is_submitted(driver, redis_url):
    r = redis.Redis.from_url(redis_url)
    with pytest.raises(TypeError, match="missing a required argument: 'b'"):
        add.remote(1)
    with pytest.raises(TypeError, match="unexpected keyword argument 'c'"):
        add.remote(1, 2, c=3)
    ftqueue.flush_submissions(10)
    assert r.zcard("ftq:index:tasks") == 0
    r.close()

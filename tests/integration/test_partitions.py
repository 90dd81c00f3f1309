"""A partitioned namespace (FTQUEUE_PARTITIONS=3) on one real redis-server: the same keys and
scripts as on a Redis Cluster (tests/integration/test_cluster.py runs them there), faster.
Tasks spread over the partitions; dependencies across partitions, nested tasks, recursive
cancel, lineage rebuild and kills keep every result right, every execution counted."""

from __future__ import annotations

import os
import signal
import time

import pytest
import redis
from conftest import NodeProcess, child_env, mark, run_script, runs, wait_until

import ftqueue
from ftqueue.exceptions import TaskCancelledError, TaskError
from ftqueue.partitions import partition_of, tags
from ftqueue.store import Store, connect
from ftqueue.store.store import PartitionsMismatch

P = 3


@pytest.fixture
def partitioned(redis_url, monkeypatch):
    monkeypatch.setenv("FTQUEUE_PARTITIONS", str(P))
    nodes: list[NodeProcess] = []

    def start(num_workers: int = 2, *args: str) -> NodeProcess:
        node = NodeProcess(redis_url, num_workers, "--lease-timeout", "3", *args,
                           env=child_env(FTQUEUE_PARTITIONS=str(P)))
        nodes.append(node)
        return node

    ftqueue.init(address=redis_url)
    try:
        yield start
    finally:
        ftqueue.shutdown()
        for node in nodes:
            node.stop()


@ftqueue.remote
def add(path, x, y):
    mark(path)
    return x + y


@ftqueue.remote
def square(i):
    return i * i


@ftqueue.remote
def fan_out(n):
    return sum(ftqueue.get([square.remote(i) for i in range(n)]))


@ftqueue.remote
def boom():
    raise ValueError("boom")


@ftqueue.remote
def sleeper(seconds, path="/dev/null"):
    mark(path)
    time.sleep(seconds)
    return seconds


@ftqueue.remote
def parent_of_two(path, task_ids=()):
    children = [sleeper.options(task_id=t).remote(60, path) for t in task_ids]
    children += [sleeper.remote(60, path) for _ in range(2)]
    return ftqueue.get(children)


def test_tasks_spread_over_partitions_and_dependencies_cross_them(partitioned, tmp_path,
                                                                   redis_url):
    partitioned(2)
    path = tmp_path / "runs"
    leaves = [add.remote(str(path), i, 0) for i in range(30)]
    assert len({partition_of(r.hex(), P) for r in leaves}) == P
    # A reduce over leaves of every partition: its first dependency decides where it lives,
    # the others reach it through the outbox.
    pairs = [add.remote(str(path), leaves[i], leaves[i + 1]) for i in range(0, 30, 2)]
    total = add.remote(str(path), pairs[0], pairs[-1])
    assert ftqueue.get(pairs) == [2 * i + 1 for i in range(0, 30, 2)]
    assert ftqueue.get(total) == 1 + 57
    assert len(runs(path)) == 30 + 15 + 1
    # Every key of the namespace is in the layout of one of its partitions, or its own.
    client = redis.Redis.from_url(redis_url)
    prefixes = {"{" + t + "}" for t in tags("ftq", P)} | {"ftq"}
    assert {k.decode().split(":")[0] for k in client.scan_iter()} <= prefixes
    client.close()


def test_a_failed_dependency_in_another_partition_fails_its_dependent(partitioned):
    partitioned(2)
    bad = boom.remote()
    dependents = [add.remote("/dev/null", bad, i) for i in range(6)]
    assert len({partition_of(d.hex(), P) for d in [bad, *dependents]}) >= 1
    for ref in dependents:
        with pytest.raises(TaskError, match="could not be computed"):
            ftqueue.get(ref, timeout=30)


def test_nested_tasks_and_recursive_cancel(partitioned, tmp_path, redis_url):
    partitioned(2)
    assert ftqueue.get(fan_out.remote(12), timeout=60) == sum(i * i for i in range(12))
    path = tmp_path / "runs"
    # Two children with ids of their own (task_id=): at least one lives in another
    # partition than the parent, and the recursive cancel must find it there too.
    named = [f"child-{i}" for i in range(6)]
    parent = parent_of_two.remote(str(path), named)
    store = Store(connect(redis_url))
    assert {store.part_of(t) for t in named} - {store.part_of(parent.hex())}
    wait_until(lambda: len(runs(path)) >= 1, 30, "a child running")
    ftqueue.cancel(parent, recursive=True)
    with pytest.raises(TaskCancelledError):
        ftqueue.get(parent, timeout=30)
    for ref in [ftqueue.ObjectRef.from_hex(t) for t in named]:
        with pytest.raises(TaskCancelledError):
            ftqueue.get(ref, timeout=30)


def test_worker_sigkill_retries_in_its_partition(partitioned, tmp_path):
    node = partitioned(2)
    path = tmp_path / "runs"
    refs = [add.remote(str(path), i, 1) for i in range(10)]
    ftqueue.get(refs, timeout=60)
    started = tmp_path / "started"
    long = [sleeper.remote(1.5, str(started)) for _ in range(2)]
    wait_until(lambda: len(runs(started)) == 2, 30, "both running")
    os.kill(node.workers()[0].pid, signal.SIGKILL)
    assert ftqueue.get(long, timeout=60) == [1.5, 1.5]


def test_a_process_with_other_partitions_is_refused(partitioned, redis_url):
    partitioned(1)
    with pytest.raises(PartitionsMismatch, match="has 3 partition"):
        Store(connect(redis_url), partitions=4).ping()
    driver = run_script(f"import ftqueue\nftqueue.init(address={redis_url!r})",
                        env=child_env(FTQUEUE_PARTITIONS="4"))
    assert driver.returncode == 1
    assert driver.stderr.strip().splitlines()[-1].startswith(
        "ftqueue.store.store.PartitionsMismatch: namespace 'ftq' has 3 partition(s)")


@ftqueue.remote(max_concurrency=1, limit_key="one-at-a-time")
def exclusive(path, i):
    mark(path)
    with open(f"{path}.held", "a") as f:
        f.write(f"+{i}\n")
    time.sleep(0.05)
    with open(f"{path}.held", "a") as f:
        f.write(f"-{i}\n")
    return i


def test_lineage_rebuilds_a_result_lost_in_another_partition(partitioned, tmp_path, redis_url):
    partitioned(2)
    path = tmp_path / "runs"
    store = Store(connect(redis_url))
    first = add.remote(str(path), 1, 1)
    ftqueue.get(first)
    # A dependent that lives in another partition than its argument.
    while True:
        other = add.remote(str(path), 0, 0)
        if store.part_of(other.hex()) != store.part_of(first.hex()):
            break
    ftqueue.get(other)
    client = redis.Redis.from_url(redis_url)
    assert client.delete(store.keys_for(first.hex()).result(first.hex())) == 1
    # `other` is first: the dependent lives with it, and `first` is lost elsewhere.
    assert ftqueue.get(add.remote(str(path), other, first), timeout=60) == 2
    assert ftqueue.get(first, timeout=60) == 2
    client.close()


def test_a_limit_holds_across_partitions(partitioned, tmp_path):
    partitioned(2)
    path = tmp_path / "runs"
    assert ftqueue.get([exclusive.remote(str(path), i) for i in range(8)], timeout=60) == \
        list(range(8))
    with open(f"{path}.held") as f:
        lines = f.read().split()
    # Never two at once: every start is followed by its own end.
    assert all(lines[i][1:] == lines[i + 1][1:] and lines[i][0] == "+"
               for i in range(0, len(lines), 2)), lines


def test_node_sigkill_retries_elsewhere(partitioned, tmp_path):
    doomed = partitioned(2, "--lease-timeout", "2")
    doomed.wait_workers(2)
    started = tmp_path / "started"
    refs = [sleeper.remote(1.0, str(started)) for _ in range(2)]
    wait_until(lambda: len(runs(started)) == 2, 30, "both running on the first node")
    partitioned(2, "--lease-timeout", "2")
    doomed.signal_group(signal.SIGKILL)
    assert ftqueue.get(refs, timeout=60) == [1.0, 1.0]
    assert len(runs(started)) == 4


def test_what_a_partitioned_namespace_cannot_do_yet_is_refused(partitioned, redis_url):
    partitioned(1)
    with pytest.raises(ValueError, match="needs more than one CPU"):
        square.options(num_cpus=2).remote(1)
    with pytest.raises(ValueError, match="cannot have a limit_key"):
        square.options(task_id="x", limit_key="k", max_concurrency=1).remote(1)
    with pytest.raises(ValueError, match="cannot have its own id"):
        square.options(task_id="y", num_gpus=1).remote(1)
    with pytest.raises(ValueError, match="cannot have its own id"):
        ftqueue.schedule("gpu-beat", square.options(num_gpus=1), 1, every_s=60)
    assert ftqueue.list_schedules() == []
    node = NodeProcess(redis_url, 2, "--num-cpus", "1", env=child_env(FTQUEUE_PARTITIONS="3"))
    try:
        assert node.process.wait(60) == 1
        assert "a node runs at most one worker per CPU" in node.output()
        assert "Traceback" not in node.output()
    finally:
        node.stop()


@ftqueue.remote(num_returns=2)
def pair(x):
    return x, x + 1


@ftqueue.remote
def count_up(n):
    yield from range(n)


@ftqueue.remote(max_retries=0)
def beat(path):
    with open(path, "a") as f:
        f.write(f"{ftqueue.get_runtime_context().get_task_id()}\n")


@ftqueue.remote(max_retries=0)
def fails_until(path):
    if not os.path.exists(path):
        raise RuntimeError("not yet")
    return "ok"


def test_returns_puts_delays_requeue_purge_and_schedules(partitioned, tmp_path):
    partitioned(2)
    a, b = pair.remote(10)
    put = ftqueue.put(5)
    # Values of a task, and a put object, as arguments in other partitions.
    assert ftqueue.get([add.remote("/dev/null", b, put), add.remote("/dev/null", put, a)],
                       timeout=60) == [16, 15]
    assert list(ftqueue.get(list(count_up.remote(4)), timeout=60)) == [0, 1, 2, 3]
    started = time.monotonic()
    assert ftqueue.get(square.options(delay_s=0.5).remote(3), timeout=60) == 9
    assert time.monotonic() - started >= 0.5
    flag = tmp_path / "flag"
    ref = fails_until.remote(str(flag))
    with pytest.raises(TaskError):
        ftqueue.get(ref, timeout=60)
    flag.write_text("")
    ftqueue.requeue(ref)
    assert ftqueue.get(ref, timeout=60) == "ok"
    held = [square.options(queue="nobody").remote(i) for i in range(9)]
    assert ftqueue.purge("nobody") == 9
    for r in held:
        with pytest.raises(TaskCancelledError):
            ftqueue.get(r, timeout=10)
    path = str(tmp_path / "beats")
    ftqueue.schedule("beat", beat, path, every_s=1)
    wait_until(lambda: len(runs(path)) >= 2, 30, "two ticks")
    assert ftqueue.unschedule("beat") is True and ftqueue.list_schedules() == []


@ftqueue.remote(num_gpus=0.5)
def on_half_a_gpu(path, i):
    with open(path, "a") as f:
        f.write(f"+{i} {os.environ.get('CUDA_VISIBLE_DEVICES')}\n")
    time.sleep(0.2)
    with open(path, "a") as f:
        f.write(f"-{i}\n")
    return i


def test_resources_are_counted_in_one_partition(partitioned, tmp_path, redis_url):
    """Tasks asking for a GPU share live in the resource partition, where the node counts
    its GPU: with 4 workers and one GPU, never more than two halves at once."""
    partitioned(4, "--num-gpus", "1")
    path = tmp_path / "gpu"
    refs = [on_half_a_gpu.remote(str(path), i) for i in range(8)]
    store = Store(connect(redis_url))
    assert {store.part_of(r.hex()) for r in refs} == {0}
    assert ftqueue.get(refs, timeout=60) == list(range(8))
    now = peak = 0
    for line in path.read_text().split("\n"):
        if line.startswith("+"):
            now += 1
            peak = max(peak, now)
            assert line.endswith(" 0"), line
        elif line.startswith("-"):
            now -= 1
    assert peak <= 2

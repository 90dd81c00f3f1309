"""The steps that cross partitions (ftqueue/store/crossing.py) and the partitioned paths of
the store, on fakeredis and the real server: mirrors, the outbox, children in other
partitions, placement, a partition that fails alone."""

from __future__ import annotations

import itertools
from collections.abc import Iterator
from types import SimpleNamespace
from typing import Any

import fakeredis
import pytest
import redis
from storekit import LEASE_MS, FakeClock

from ftqueue.client import records
from ftqueue.heartbeat import NodeRecord
from ftqueue.partitions import partition_of
from ftqueue.resources import UNIT
from ftqueue.settings import NodeSettings
from ftqueue.spec import ObjectRef, ResolvedOptions, new_put_id, validate_options
from ftqueue.store import Store, crossing
from ftqueue.store.store import PartitionsMismatch

P = 3


@pytest.fixture(params=["fakeredis", "redis-server"])
def env(request: pytest.FixtureRequest) -> Iterator[tuple[Store, FakeClock, Any]]:
    if request.param == "fakeredis":
        client = fakeredis.FakeRedis()
    else:
        server = request.getfixturevalue("redis_server")
        client = redis.Redis.from_url(server.address)
        client.flushall()
    clock = FakeClock()
    store = Store(client, "ftq", clock_ms=clock, partitions=P)
    NodeRecord(store, "n1", NodeSettings(address="unused", num_workers=4,
                                         resources=(("CPU", 4 * UNIT),)),
               3_600_000).register()
    yield store, clock, client
    client.close()


def ids_in(part: int, n: int, prefix: str) -> list[str]:
    found = (f"{prefix}{i:03d}" for i in itertools.count())
    return list(itertools.islice((i for i in found if partition_of(i, P) == part), n))


def submit(store: Store, task_id: str, deps: tuple[str, ...] = (), **extra: str) -> None:
    fields = {"name": "f", "func": "f", "fn": "digest", "job_id": "00000001",
              "max_retries": "0", "notify": "ftq:done:me", **extra}
    store.submit([(task_id, "default", b"args", list(deps), fields)])


def state(store: Store, task_id: str, field: str = "state") -> str | None:
    return store.task_fields([task_id], field)[0][0]


def run_to_end(store: Store, task_id: str) -> None:
    """Claim tasks until `task_id` is claimed, and commit it."""
    for n in range(20):
        for task in store.claim("n1", f"w{n}", ["default"], 1, 8, LEASE_MS):
            store.commit([(task.task_id, task.fence, "ok", b"V", False, "")])
            if task.task_id == task_id:
                return
    raise AssertionError(f"{task_id} was never claimed")


def test_a_recursive_cancel_cancels_the_child_not_its_mirror(env):
    store, _, client = env
    (parent,) = ids_in(1, 1, "p")
    (far,) = ids_in(0, 1, "c")        # a child in another partition (a GPU task, task_id=)
    (near,) = ids_in(1, 1, "e")       # a child beside the parent, waiting for `far`
    submit(store, parent)
    submit(store, far, parent_task_id=parent)
    submit(store, near, (far,), parent_task_id=parent)
    mirror = store.parts[1].task(far)
    assert client.hget(mirror, "mirror") == b"1"
    outcomes = dict(store.cancel(parent, force=False, recursive=True))
    assert outcomes[far] == "cancelled" and outcomes[near] == "cancelled"
    assert state(store, far) == "FAILED"
    assert store.task_fields([far], "error_type")[0][0] == "TASK_CANCELLED"
    assert client.zscore(store.parts[1].failed_index, far) is None    # the mirror untouched
    # No children set was made on the mirror of a parent that lives elsewhere.
    (other_parent,) = ids_in(2, 1, "q")
    (waiter, child) = ids_in(0, 2, "w")
    submit(store, other_parent)
    submit(store, waiter, (other_parent,))          # a mirror of other_parent in partition 0
    submit(store, child, parent_task_id=other_parent)
    assert not client.exists(store.parts[0].children(other_parent))
    assert client.smembers(store.parts[2].children(other_parent)) == {child.encode()}


def test_a_dependency_in_another_partition_releases_its_dependent(env):
    store, _, client = env
    (dep,) = ids_in(0, 1, "d")
    (waiter,) = ids_in(2, 1, "w")
    submit(store, dep)
    submit(store, waiter, (dep,), lineage_ttl_s="0")
    assert state(store, waiter) == "PENDING_ARGS_AVAIL"
    assert client.zcard(store.parts[2].mirrors) == 1
    run_to_end(store, dep)
    assert state(store, waiter) == "PENDING_NODE_ASSIGNMENT"
    mirror = store.parts[2].task(dep)
    assert client.hget(mirror, "state") == b"FAILED" and client.ttl(mirror) == -1  # kept
    assert client.zcard(store.parts[2].mirrors) == 0 and client.llen(store.parts[0].outbox) == 0


def test_an_end_the_committer_failed_to_apply_is_applied_by_a_sweep(env, monkeypatch):
    store, _, client = env
    (dep,) = ids_in(0, 1, "d")
    (waiter,) = ids_in(1, 1, "w")
    submit(store, dep)
    submit(store, waiter, (dep,))
    real = crossing.mirror

    def broken(*args: Any) -> None:
        raise redis.ConnectionError("the other primary is away")

    monkeypatch.setattr(crossing, "mirror", broken)
    run_to_end(store, dep)             # the commit itself is done, and says so
    assert state(store, dep) == "FINISHED" and state(store, waiter) == "PENDING_ARGS_AVAIL"
    assert client.llen(store.parts[0].outbox) == 1
    monkeypatch.setattr(crossing, "mirror", real)
    store.sweep(LEASE_MS)
    assert state(store, waiter) == "PENDING_NODE_ASSIGNMENT"
    assert client.llen(store.parts[0].outbox) == 0


def test_a_mirror_pending_long_is_linked_again(env):
    store, clock, client = env
    (dep,) = ids_in(0, 1, "d")
    (waiter,) = ids_in(1, 1, "w")
    submit(store, dep)
    submit(store, waiter, (dep,))
    client.delete(store.parts[0].dependents(dep))       # the link lost (with its data)
    clock.advance(crossing.RELINK_AFTER_MS / 1000 + 1)
    store.sweep(LEASE_MS)
    assert client.smembers(store.parts[0].dependents(dep)) == {b"@1"}
    run_to_end(store, dep)
    assert state(store, waiter) == "PENDING_NODE_ASSIGNMENT"
    # A dependency gone (its partition lost its data) ends its mirror only once it stayed
    # gone a while, leaving its submitter time to submit it again: the waiter then runs,
    # and finds it gone.
    (gone,) = ids_in(2, 1, "g")
    (waiter2,) = ids_in(1, 1, "x")
    submit(store, gone)
    submit(store, waiter2, (gone,))
    client.delete(store.parts[2].task(gone), store.parts[2].dependents(gone))
    clock.advance(crossing.RELINK_AFTER_MS / 1000 + 1)
    store.sweep(LEASE_MS)
    assert state(store, waiter2) == "PENDING_ARGS_AVAIL"
    clock.advance(crossing.MISSING_GRACE_MS / 1000)
    store.sweep(LEASE_MS)
    assert state(store, waiter2) == "PENDING_NODE_ASSIGNMENT"


def test_one_partition_failing_does_not_stop_the_heartbeat_of_the_others(env, monkeypatch):
    store, clock, client = env
    real = store._heartbeat_in
    renewed: list[int] = []

    def flaky(part: int, *args: Any) -> Any:
        if part == 0:
            raise redis.ConnectionError("partition 0's primary is away")
        renewed.append(part)
        return real(part, *args)

    monkeypatch.setattr(store, "_heartbeat_in", flaky)
    with pytest.raises(redis.ConnectionError):
        store.heartbeat("n1", LEASE_MS)
    assert renewed == [1, 2]


def test_placement_by_limit_key_then_parent_and_never_by_a_put(monkeypatch):
    monkeypatch.setattr(records, "_check_partitioned", lambda options: None)
    limited = ResolvedOptions.resolve(validate_options({"limit_key": "api",
                                                        "max_concurrency": 1}))
    plain = ResolvedOptions.resolve(validate_options({}))
    parent = SimpleNamespace(task_id="parent-x")   # not in the limit key's partition
    for _ in range(20):
        assert partition_of(records._new_task_id(P, parent, limited, (), {}), P) == \
            partition_of("api", P)
        assert partition_of(records._new_task_id(P, parent, plain, (), {}), P) == \
            partition_of("parent-x", P)
    put = ObjectRef(new_put_id())
    spread = {partition_of(records._new_task_id(P, None, plain, (put,), {}), P)
              for _ in range(60)}
    assert spread == set(range(P))


def test_a_put_argument_is_not_linked(env):
    store, _, client = env
    put = new_put_id()
    store.put(put, b"V")
    waiter = next(t for t in ids_in(0, 5, "w") + ids_in(1, 5, "w")
                  if partition_of(t, P) != partition_of(put, P))
    submit(store, waiter, (put,))
    assert state(store, waiter) == "PENDING_NODE_ASSIGNMENT"
    assert not client.exists(store.keys_for(waiter).task(put))


def test_a_namespace_in_use_with_one_partition_is_not_split(env):
    _, _, client = env
    client.flushall()
    single = Store(client, "solo", partitions=1)
    single.ensure_epoch()
    client.delete(single.keys.partitions)       # as a namespace from before partitions
    with pytest.raises(PartitionsMismatch, match="in use with one partition"):
        Store(client, "solo", partitions=3).ping()


def test_the_count_of_partitions_is_written_again_after_redis_lost_it(env):
    store, _, client = env
    client.delete(store.keys.partitions)
    store.ensure_epoch()
    assert client.get(store.keys.partitions) == b"3"


def test_an_idle_worker_hears_the_bell_of_every_partition(env):
    """A bell rung in a partition is rung at the namespace's own prefix too, where idle
    workers wait on one slot (a blocking pop cannot span slots on a cluster)."""
    store, _, client = env
    for part in (2, 1):
        (task_id,) = ids_in(part, 1, f"b{part}")
        submit(store, task_id)
        assert client.llen(store.keys.bell("default")) == 1
        store.wait_for_bell(["default", "@n1"], 0.1)
        assert client.llen(store.keys.bell("default")) == 0
        run_to_end(store, task_id)
    # The bells left when a claim found nothing anywhere are spent: the next claim clears
    # them before it looks (and keeps one rung after, for the next wait).
    assert store.claim("n1", "w9", ["default"], 1, 8, LEASE_MS) == []
    client.lpush(store.keys.bell("default"), "1")
    assert store.claim("n1", "w9", ["default"], 1, 8, LEASE_MS) == []
    assert client.llen(store.keys.bell("default")) == 0


def test_an_end_that_one_partition_cannot_take_now_waits_for_the_sweep_there_only(
        env, monkeypatch):
    store, _, client = env
    (dep,) = ids_in(0, 1, "d")
    waits = {part: ids_in(part, 1, f"w{part}")[0] for part in (1, 2)}
    submit(store, dep)
    for task_id in waits.values():
        submit(store, task_id, (dep,))
    real = crossing.mirror

    def partition_2_down(store_: Store, part: int, triples: Any) -> None:
        if part == 2:
            raise redis.ConnectionError("partition 2's primary is down")
        real(store_, part, triples)

    monkeypatch.setattr(crossing, "mirror", partition_2_down)
    run_to_end(store, dep)      # done, and says so: partition 1 takes the end at once
    assert state(store, waits[1]) == "PENDING_NODE_ASSIGNMENT"
    assert state(store, waits[2]) == "PENDING_ARGS_AVAIL"
    assert client.lrange(store.parts[0].outbox, 0, -1) == [f"2 {dep}".encode()]
    with pytest.raises(redis.ConnectionError):
        store.sweep(LEASE_MS)
    monkeypatch.setattr(crossing, "mirror", real)
    store.sweep(LEASE_MS)
    assert state(store, waits[2]) == "PENDING_NODE_ASSIGNMENT"
    assert client.llen(store.parts[0].outbox) == 0

"""No key that nothing ever deletes or expires: after its tasks end and their TTLs pass, the
store leaves only the permanent, bounded keys of docs/redis-layout.md (on fakeredis and the
real server)."""

from __future__ import annotations

import storekit
from storekit import claim

from ftqueue.store.scripts import FORGET_AFTER_MS, FORGET_BATCH

env = storekit.env

FIELDS = {"name": "f", "func": "f", "fn": "digest", "job_id": "00000001", "max_retries": "0",
          "notify": "ftq:done:me", "result_ttl_s": "100", "lineage_ttl_s": "200"}


def submit_kept(store, task_id, deps=(), parent="", queue="default"):
    store.submit([(task_id, queue, b"args", list(deps),
                   dict(FIELDS, parent_task_id=parent))])


def test_a_dependent_gone_before_its_dependency_ends_is_not_made_again(env):
    """A task cancelled while it waits for its arguments stays among its dependency's
    dependents; when its record has expired (lineage TTL) before the dependency ends, the
    dependency's end must not write a record of it (one field, `deps`, and no TTL)."""
    store, _clock, client = env
    submit_kept(store, "dep1")
    submit_kept(store, "waits1", deps=["dep1"])
    assert store.cancel("waits1", False, True) == [("waits1", "cancelled")]
    client.delete("ftq:task:waits1")              # its lineage TTL passed
    (task,) = claim(store)
    store.commit([(task.task_id, task.fence, "ok", b"V", False, "")])
    assert not client.exists("ftq:task:waits1")
    assert not client.exists("ftq:dependents:dep1")


def test_a_child_of_an_ended_or_gone_parent_leaves_no_set_that_never_expires(env):
    """A task submitted from an attempt that lost its task (force-cancelled, or retried
    elsewhere and ended there) names a parent that has ended, or whose record has expired:
    its children set must expire with the parent's record, or not be made."""
    store, _clock, client = env
    submit_kept(store, "parent1")
    (task,) = claim(store)
    store.commit([(task.task_id, task.fence, "ok", b"V", False, "")])
    submit_kept(store, "child1", queue="kids", parent="parent1")
    assert 0 < client.ttl("ftq:children:parent1") <= 200
    submit_kept(store, "child2", queue="kids", parent="gone1")
    assert not client.exists("ftq:children:gone1") and not client.exists("ftq:task:gone1")
    # A running parent's set is expired by its end, as before.
    submit_kept(store, "parent2")
    (task,) = claim(store)
    submit_kept(store, "child3", queue="kids", parent="parent2")
    assert client.ttl("ftq:children:parent2") == -1
    store.commit([(task.task_id, task.fence, "ok", b"V", False, "")])
    assert 0 < client.ttl("ftq:children:parent2") <= 200
    assert store.cancel("parent2", False, True) == [("parent2", "final"),
                                                    ("child3", "cancelled")]


def test_forgetting_reaches_expired_workers_behind_many_long_lived_ones(env):
    """The workers index forgets a worker an hour after its record expired, a batch per
    housekeeping sweep. The oldest entries are the longest-lived workers, alive, their
    records kept: a batch that always starts from the oldest never reaches a gone worker
    behind FORGET_BATCH live ones, and the index grows with every recycled worker."""
    store, clock, client = env
    hour_ago = clock.now_ms - 2 * FORGET_AFTER_MS
    live = {f"live{i:03d}": hour_ago + i for i in range(FORGET_BATCH + 50)}
    client.zadd("ftq:workers", live)
    for worker in live:
        client.hset(f"ftq:worker:{worker}", "state", "ALIVE")
    client.zadd("ftq:workers", {"gone1": hour_ago + 500})     # its record expired
    client.zadd("ftq:index:nodes", {f"n{i:03d}": hour_ago + i for i in range(FORGET_BATCH)})
    for i in range(FORGET_BATCH):
        client.hset(f"ftq:node:n{i:03d}", "state", "ALIVE")
    client.zadd("ftq:index:nodes", {"gone_node": hour_ago + 500})
    for _ in range(20):                  # sweeps, a few seconds apart (jittered)
        clock.advance(4.7)
        store.sweep(storekit.LEASE_MS, index_ttl_ms=FORGET_AFTER_MS * 24)
    assert client.zscore("ftq:workers", "gone1") is None
    assert client.zscore("ftq:index:nodes", "gone_node") is None
    assert client.zcard("ftq:workers") == len(live)
    assert client.zcard("ftq:index:nodes") == FORGET_BATCH


def test_a_gone_nodes_bell_goes_with_it(env):
    """A release rings the bell of the node whose workers wait for room; when the node dies
    (or leaves) before its workers take the ring, the bell stays: one list per dead node."""
    store, clock, client = env
    for node in ("n1", "n2"):
        store.renew(node, storekit.LEASE_MS)
        client.lpush(f"ftq:bell:@{node}", "1")
    store.deregister("n1")
    assert not client.exists("ftq:bell:@n1")
    storekit.serve(store, clock, storekit.LEASE_MS / 1000 + 1)
    assert store.sweep(storekit.LEASE_MS)[1] == ["n2"]              # declared dead
    assert not client.exists("ftq:bell:@n2")

"""The read-only views (ftqueue/state.py) of a partitioned namespace (FTQUEUE_PARTITIONS=3):
the tasks, counters, queues and node usage of every partition, shown as one namespace's (on
fakeredis and the real server)."""

from __future__ import annotations

import itertools
import os
import subprocess
from collections.abc import Iterator
from typing import Any

import fakeredis
import pytest
import redis
from storekit import LEASE_MS, FakeClock

from ftqueue import heartbeat
from ftqueue.heartbeat import NodeRecord
from ftqueue.metrics import ClusterCollector
from ftqueue.partitions import partition_of
from ftqueue.resources import UNIT
from ftqueue.settings import NodeSettings
from ftqueue.state import StateReader
from ftqueue.store import Store
from ftqueue.workerpool import WorkerHandle

P = 3
PER_PART = 4
CPUS = 4


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
    NodeRecord(store, "n1", NodeSettings(address="unused", num_workers=CPUS,
                                         resources=(("CPU", CPUS * UNIT),)),
               3_600_000).register()
    yield store, clock, client
    client.close()


def ids_in(part: int, n: int, prefix: str = "t") -> list[str]:
    found = (f"{prefix}{i:03d}" for i in itertools.count())
    return list(itertools.islice((i for i in found if partition_of(i, P) == part), n))


def submit(store: Store, task_id: str, queue: str = "default", deps: tuple[str, ...] = (),
           **extra: str) -> None:
    fields = {"name": "f", "func": "f", "fn": "digest", "job_id": "00000001",
              "max_retries": "0", "notify": "ftq:done:me", **extra}
    store.submit([(task_id, queue, b"args", list(deps), fields)])


def fill(store: Store, clock: FakeClock) -> list[str]:
    """PER_PART tasks in each partition, created in turn, the last three in one millisecond
    (ordered by id among themselves); the ids, newest first."""
    per_part = [ids_in(k, PER_PART) for k in range(P)]
    made = []
    for n, task_id in enumerate(t for row in zip(*per_part) for t in row):
        if n <= P * PER_PART - 3:
            clock.advance(1)
        submit(store, task_id)
        made.append((clock.now_ms, task_id))
    return [task_id for _, task_id in sorted(made, reverse=True)]


def claim_one_per_partition(store: Store) -> dict[int, Any]:
    """A task of each partition, claimed (each claim starts at the next partition)."""
    claimed = {}
    for n in range(P):
        (task,) = store.claim("n1", f"w{n}", ["default"], 1, 8, LEASE_MS)
        claimed[partition_of(task.task_id, P)] = task
    assert sorted(claimed) == list(range(P))
    return claimed


def ids(rows: list[dict[str, Any]]) -> list[str]:
    return [r["task_id"] for r in rows]


def test_list_tasks_merges_the_partitions_newest_first(env):
    store, clock, _client = env
    newest = fill(store, clock)
    assert {partition_of(i, P) for i in newest[:3]} == set(range(P))   # the tied burst
    reader = StateReader(store)
    assert ids(reader.list_tasks()) == newest
    for limit in (1, 3, 5, len(newest)):
        assert ids(reader.list_tasks(limit=limit)) == newest[:limit]
    (row,) = reader.list_tasks(limit=1, detail=True)
    assert row["queue"] == "default" and row["state"] == "PENDING_NODE_ASSIGNMENT"
    assert reader.count_tasks() == len(newest)


def test_pages_follow_one_another_across_the_partitions(env):
    store, clock, _client = env
    newest = fill(store, clock)
    reader = StateReader(store)
    for filters, limit, scan_max in (([], 2, 5000), ([], 5, 5000),
                                     ([("queue", "=", "default")], 50, 4)):
        shown, cursor = [], ""
        for _ in range(len(newest) + 1):
            page = reader.page_tasks(filters, limit=limit, cursor=cursor, scan_max=scan_max)
            shown += ids(page.rows)
            cursor = page.cursor
            if not cursor:
                break
        assert shown == newest, (filters, limit)


def test_filters_outcomes_summary_and_counters_cover_every_partition(env):
    store, clock, _client = env
    newest = fill(store, clock)
    claimed = claim_one_per_partition(store)
    ok, bad, running = claimed[1], claimed[2], claimed[0]
    assert store.commit([(ok.task_id, ok.fence, "ok", b"V", False, "")]) == ["finished"]
    assert store.commit([(bad.task_id, bad.fence, "err", b"E", False, "boom")]) == ["failed"]
    reader = StateReader(store)

    def listed(*filters: tuple[str, str, str]) -> list[str]:
        return ids(reader.list_tasks(list(filters)))

    assert listed(("state", "=", "FAILED")) == [bad.task_id]
    assert listed(("state", "=", "FINISHED")) == [ok.task_id]
    assert listed(("state", "=", "RUNNING")) == [running.task_id]
    pending = [i for i in newest if i not in (ok.task_id, bad.task_id, running.task_id)]
    assert listed(("state", "=", "PENDING_NODE_ASSIGNMENT")) == pending
    assert listed(("state", "!=", "PENDING_NODE_ASSIGNMENT")) == [i for i in newest
                                                                 if i not in pending]
    assert listed(("task_id", "=", bad.task_id)) == [bad.task_id]
    assert ids(reader.get_task(ok.task_id)) == [ok.task_id]
    assert reader.get_task(ok.task_id)[0]["state"] == "FINISHED"
    assert reader.summarize_tasks() == {"f": {"FINISHED": 1, "FAILED": 1, "RUNNING": 1,
                                              "PENDING": len(pending)}}
    assert reader.running() == 1
    status = reader.status()
    assert status["running"] == 1
    assert status["queues"] == {"default": len(pending)}
    assert status["recent_finished"] == 1
    assert sum(status["recent_failures"].values()) == 1
    throughput = reader.throughput()
    assert (sum(throughput["finished"]), sum(throughput["failed"])) == (1, 1)
    assert reader.task_detail(bad.task_id)["state"] == "FAILED"


def test_a_node_has_free_what_no_partition_holds(env):
    store, clock, _client = env
    fill(store, clock)
    reader = StateReader(store)
    claimed = claim_one_per_partition(store)
    (node,) = reader.list_nodes()
    assert node["resources_total"] == {"CPU": CPUS}
    assert node["resources_free"] == {"CPU": CPUS - P}
    assert reader.status()["resources_free"] == {"CPU": CPUS - P}
    for task in (claimed[1], claimed[2]):
        store.commit([(task.task_id, task.fence, "ok", b"V", False, "")])
    (node,) = reader.list_nodes()
    assert node["resources_free"] == {"CPU": CPUS - 1}


def test_workers_are_listed_from_the_first_partition(env, monkeypatch):
    store, _clock, _client = env
    record = NodeRecord(store, "n1", NodeSettings(address="unused"), 3_600_000)
    monkeypatch.setattr(heartbeat.time, "monotonic", lambda: 1000.0)
    handle = WorkerHandle("w1", subprocess.Popen(["true"]), -1)
    handle.process.wait()
    handle.process.pid = os.getpid()
    record.publish_workers([handle])
    reader = StateReader(store)
    assert [(w["worker_id"], w["node_id"], w["state"]) for w in reader.list_workers()] == [
        ("w1", "n1", "ALIVE")]
    assert reader.count_workers() == 1


class NodeView:
    view = (0, 0)


def test_queues_are_summed_over_the_partitions(env):
    store, clock, _client = env
    for part in reversed(range(P)):        # the oldest in the last partition
        for task_id in ids_in(part, 2, prefix="o"):
            clock.advance(1)
            submit(store, task_id, queue="other")
        submit(store, ids_in(part, 1, prefix="d")[0], queue="other", delay_ms="60000")
        submit(store, ids_in(part, 1, prefix="g")[0], queue="other", shape="GPU=1")
    reader = StateReader(store)
    assert reader.queue_depths() == {"other": 3 * P}
    assert reader.slot_depths() == {("other", "CPU=1"): 2 * P, ("other", "GPU=1"): P}
    assert reader.delayed_counts() == {"other": P}
    (row,) = reader.queue_stats()
    assert (row["queue"], row["depth"]) == ("other", 3 * P)
    assert row["oldest_task_id"] == ids_in(P - 1, 1, prefix="o")[0]
    assert reader.unserved_queues() == ["other"]
    NodeRecord(store, "n2", NodeSettings(address="unused", queues=("other",),
                                         resources=(("CPU", UNIT),)), 3_600_000).register()
    assert reader.infeasible() == [{"queue": "other", "shape": "GPU=1", "tasks": P,
                                    "missing": {"GPU": 1}}]
    families = {f.name: f for f in ClusterCollector(reader, NodeView()).collect()}
    assert [s.value for s in families["ftqueue_queue_depth"].samples] == [3 * P]
    assert [s.value for s in families["ftqueue_delayed_tasks"].samples] == [P]
    assert [s.value for s in families["ftqueue_running_tasks"].samples] == [0]


def test_a_mirror_is_never_shown_as_a_task(env):
    store, clock, client = env
    dep = ids_in(2, 1, prefix="dep")[0]
    waiting = ids_in(1, 1, prefix="w")[0]
    submit(store, dep)
    clock.advance(1)
    submit(store, waiting, deps=(dep,))
    assert client.hget(store.parts[1].task(dep), "mirror") == b"1"
    reader = StateReader(store)
    assert ids(reader.list_tasks()) == [waiting, dep]
    assert [r["state"] for r in reader.get_task(dep)] == ["PENDING_NODE_ASSIGNMENT"]
    assert ids(reader.list_tasks([("task_id", "=", dep)])) == [dep]
    detail = reader.task_detail(dep)
    assert detail["dependents"] == [waiting]
    assert reader.task_detail(waiting)["dependencies"] == [dep]

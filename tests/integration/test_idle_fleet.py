"""An idle node's cost to Redis (issue "a lean engine at scale"): the duties every node shares
are spaced out as the fleet grows, and an idle node polls nothing that only matters while it
holds a task. Counted with MONITOR on a Redis of the test's own, a real node process."""

from __future__ import annotations

import time
from collections import Counter

import redis
from conftest import NodeProcess, wait_until

import ftqueue


def watch(client: redis.Redis, seconds: float) -> Counter[str]:
    """Commands seen in `seconds`, by command and key kind: 'LPOP cancel', 'HSET worker'…"""
    seen: Counter[str] = Counter()
    with client.monitor() as monitor:
        end = time.monotonic() + seconds
        for event in monitor.listen():
            if time.monotonic() > end:
                break
            parts = event["command"].split()
            kind = parts[1].split(":")[1] if len(parts) > 1 and parts[1].count(":") else ""
            seen[f"{parts[0].upper()} {kind}".strip()] += 1
    return seen


def test_an_idle_node_polls_no_cancels_and_writes_no_worker_records(own_redis):
    client = redis.Redis.from_url(own_redis.address)
    node = NodeProcess(own_redis.address, 2)
    try:
        wait_until(lambda: client.zcard("ftq:workers") == 2, 30, "both workers registered")
        time.sleep(1.5)
        seen = watch(client, 3.0)
        assert seen["LPOP cancel"] == seen["BLPOP cancel"] == 0, seen
        assert seen["HSET worker"] == 0, seen
        # Its workers' tasks submit nothing: no client, no listener polling a notice list.
        assert seen["BLPOP done"] == seen["LPOP done"] == 0, seen
        assert seen["ZADD nodes"] >= 2, seen            # it still heartbeats
    finally:
        node.stop()
        client.close()


@ftqueue.remote
def nap(seconds):
    time.sleep(seconds)


def test_a_node_waits_on_its_cancel_list_only_while_it_holds_a_task(own_redis):
    client = redis.Redis.from_url(own_redis.address)
    node = NodeProcess(own_redis.address, 1)
    ftqueue.init(address=own_redis.address)
    try:
        ref = nap.remote(4.0)
        wait_until(lambda: client.zcard("ftq:leases") == 1, 30, "the task to start")
        holding = watch(client, 2.0)
        ftqueue.get(ref, timeout=30)
        time.sleep(2.5)           # the listener's last wait (1 s) ends, and it stops
        idle = watch(client, 2.0)
        assert holding["BLPOP cancel"] >= 1, holding
        assert idle["BLPOP cancel"] == idle["LPOP cancel"] == 0, idle
    finally:
        ftqueue.shutdown()
        node.stop()
        client.close()


def test_sweeps_are_spaced_out_as_the_fleet_grows(own_redis):
    client = redis.Redis.from_url(own_redis.address)
    node = NodeProcess(own_redis.address, 1)
    try:
        wait_until(lambda: client.zcard("ftq:workers") == 1, 30, "the worker registered")
        alone = watch(client, 4.0)["ZRANGEBYSCORE leases"]
        # 49 more live nodes (their heartbeats fresh for the lease, 30 s): each node sweeps
        # every 5 s instead of every 1 s, so the fleet's sweeps stay near ten a second.
        served = int(client.hget("ftq:clock", "served_ms") or 0)
        client.zadd("ftq:nodes", {f"other{i}": served for i in range(49)})
        time.sleep(2.5)            # the node's next renewal sees 50, its next sweep waits
        spaced = watch(client, 4.0)["ZRANGEBYSCORE leases"]
        assert alone >= 2 and spaced <= 1, (alone, spaced)
    finally:
        node.stop()
        client.close()

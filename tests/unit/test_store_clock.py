"""The served clock: a Redis that stops serving (frozen, restarting, busy) ages no lease and
kills no node; a node that stays silent while Redis serves others is declared dead, also
when only drivers sweep. On fakeredis and the real server, with a fake clock."""

from __future__ import annotations

import math

import storekit
from storekit import claim, serve, state, submit

from ftqueue.store.scripts import SERVED_GAP_MAX_MS

env = storekit.env

LEASE_MS = 3000
RENEW_INTERVAL_S = 0.75          # a node renews every min(1 s, lease / 4)
FREEZE_S = 8
DRIVER_SWEEP_INTERVAL_S = 2.0


def claim_one(store, node="n1"):
    (task,) = store.claim(node, "w1", ["default"], 1, 8, LEASE_MS)
    return task


def test_a_redis_stall_longer_than_the_lease_expires_no_lease_and_kills_no_node(env):
    store, clock, client = env
    submit(store, "a1", max_retries=0)
    task = claim_one(store)
    clock.advance(RENEW_INTERVAL_S)
    store.renew("n1", LEASE_MS, running=["a1"], held=["a1"])
    clock.advance(RENEW_INTERVAL_S)      # the next renewal is due when Redis freezes
    clock.advance(FREEZE_S)              # frozen: nobody is served
    # Another node's sweep is the first command Redis runs after the thaw.
    assert store.sweep(LEASE_MS) == ([], [])
    store.renew("n1", LEASE_MS, running=["a1"], held=["a1"])
    assert state(client, "a1") == "RUNNING"
    assert store.commit([("a1", task.fence, "ok", b"V", False, "")]) == ["finished"]
    assert client.hget("ftq:node:n1", "state") == b"ALIVE"


def test_a_gap_counts_at_most_the_cap(env):
    store, clock, _client = env
    store.renew("n1", LEASE_MS)
    before = store.served_now_ms()
    clock.advance(FREEZE_S)
    assert store.served_now_ms() == before + SERVED_GAP_MAX_MS
    store.sweep(LEASE_MS)
    clock.advance(0.5)
    assert store.served_now_ms() == before + SERVED_GAP_MAX_MS + 500


def test_a_node_silent_while_others_are_served_is_dead_and_its_task_retried(env):
    store, clock, client = env
    submit(store, "a1", max_retries=1)
    claim_one(store)
    store.renew("n1", LEASE_MS, running=["a1"], held=["a1"])
    serve(store, clock, LEASE_MS / 1000 + 1)
    assert store.sweep(LEASE_MS) == ([("a1", "retried")], ["n1"])
    assert client.hget("ftq:node:n1", "state") == b"DEAD"


def test_with_only_drivers_sweeping_a_dead_nodes_lease_expires_in_bounded_time(env):
    store, clock, _client = env
    submit(store, "a1", max_retries=1)
    claim_one(store)
    store.renew("n1", LEASE_MS, held=["a1"])   # ... and the node dies
    # Each sweep two seconds apart is credited the cap: served time runs at half speed.
    bound = math.ceil(LEASE_MS / SERVED_GAP_MAX_MS) + 1
    for sweeps in range(1, bound + 1):
        clock.advance(DRIVER_SWEEP_INTERVAL_S)
        swept, _ = store.sweep(LEASE_MS)
        if swept:
            break
    assert swept == [("a1", "retried")] and sweeps <= bound


def test_with_nothing_at_stake_the_clock_catches_up(env):
    store, clock, client = env
    store.sweep(LEASE_MS)
    clock.advance(3600)                  # an idle hour: no lease, no live node
    assert store.served_now_ms() == clock.now_ms
    store.sweep(LEASE_MS)
    assert int(client.hget("ftq:clock", "served_ms")) == clock.now_ms


def test_a_redis_that_lost_everything_starts_the_clock_again(env):
    store, clock, client = env
    store.renew("n1", LEASE_MS)
    clock.advance(FREEZE_S)
    store.renew("n1", LEASE_MS)
    assert store.served_now_ms() < clock.now_ms
    client.flushall()
    assert store.served_now_ms() == clock.now_ms
    store.renew("n1", LEASE_MS)
    assert store.node_heartbeat_age_ms("n1") == 0


def test_redis_time_going_back_never_moves_served_time_back(env):
    store, clock, _client = env
    store.renew("n1", LEASE_MS)
    before = store.served_now_ms()
    clock.advance(-5)                    # a failover to a host whose clock is behind
    store.renew("n1", LEASE_MS)
    assert store.served_now_ms() == before
    clock.advance(0.5)
    assert store.served_now_ms() == before + 500


def test_claim_reads_the_clock_without_advancing_it(env):
    store, clock, client = env
    store.renew("n1", LEASE_MS)
    last = client.hget("ftq:clock", "last_ms")
    clock.advance(FREEZE_S)
    submit(store, "a1")
    claim(store)
    assert client.hget("ftq:clock", "last_ms") == last
    served = store.served_now_ms()
    assert client.zscore("ftq:leases", "a1") == served + storekit.LEASE_MS


def test_heartbeat_age_is_served_time(env):
    store, clock, _client = env
    assert store.node_heartbeat_age_ms("n1") is None
    store.renew("n1", LEASE_MS)
    clock.advance(FREEZE_S)
    assert store.node_heartbeat_age_ms("n1") == SERVED_GAP_MAX_MS

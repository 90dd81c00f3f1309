"""The store's atomic steps, logically, with a fake clock: on fakeredis (with Lua) and on the
real server, which is the reference for Lua."""

from __future__ import annotations

import storekit
from storekit import LEASE_MS, attempts, claim, field, serve, state, submit

env = storekit.env


def test_submit_claim_commit(env):
    store, clock, client = env
    assert submit(store, "a1") == 1
    assert submit(store, "a1") == 0  # idempotent
    assert state(client, "a1") == "PENDING_NODE_ASSIGNMENT"
    (task,) = claim(store)
    # Fences count up from the creation time, so a task created again never reuses one.
    fence = str(int(client.hget("ftq:task:a1", "created_ms")) + 1)
    assert (task.task_id, task.fence, task.attempt, task.args_blob) == ("a1", fence, 0, b"args")
    assert state(client, "a1") == "RUNNING"
    assert client.zscore("ftq:leases", "a1") == clock.now_ms + LEASE_MS
    assert store.commit([("a1", task.fence, "ok", b"Vresult", False, "")]) == ["finished"]
    assert state(client, "a1") == "FINISHED"
    assert client.get("ftq:result:a1") == b"Vresult"
    assert client.zscore("ftq:leases", "a1") is None
    assert client.lrange("ftq:done:me", 0, -1) == [b"a1\nVresult"]  # small results ride along
    assert attempts(client, "a1") == []  # the final attempt lives in the task hash
    assert (field(client, "a1", "attempt"), field(client, "a1", "node_id")) == ("0", "n1")


def test_commit_with_stale_fence_is_rejected_and_counted(env):
    store, _clock, client = env
    submit(store, "a1")
    (_task,) = claim(store)
    assert store.commit([("a1", "999", "ok", b"Vx", False, "")]) == ["fenced"]
    assert state(client, "a1") == "RUNNING"
    assert client.hget("ftq:stats", "fenced") == b"1"


def test_expired_lease_is_retried_then_late_commit_fenced(env):
    store, clock, client = env
    submit(store, "a1", max_retries=1)
    (task,) = claim(store)
    serve(store, clock, LEASE_MS / 1000 - 1)
    assert store.sweep(LEASE_MS) == ([], [])
    serve(store, clock, 2)
    swept, _ = store.sweep(LEASE_MS)
    assert swept == [("a1", "retried")]
    assert (state(client, "a1"), field(client, "a1", "attempt"), field(client, "a1", "retries")) \
        == ("PENDING_NODE_ASSIGNMENT", "1", "1")
    assert attempts(client, "a1")[0]["error_type"] == "NODE_DIED"
    assert store.commit([("a1", task.fence, "ok", b"Vlate", False, "")]) == ["fenced"]
    (again,) = claim(store, worker="w2")
    assert again.fence != task.fence and again.attempt == 1
    serve(store, clock, LEASE_MS / 1000 + 1)
    assert store.sweep(LEASE_MS)[0] == [("a1", "failed")]
    assert (state(client, "a1"), field(client, "a1", "error_type")) == ("FAILED", "NODE_DIED")
    assert client.lrange("ftq:done:me", 0, -1) == [b"a1"]


def test_renewal_keeps_held_leases_alive(env):
    store, clock, client = env
    submit(store, "a1")
    submit(store, "a2")
    claim(store)
    claim(store)
    for _ in range(4):
        serve(store, clock, 20)
        store.renew("n1", LEASE_MS, running=["a1"], held=["a1"])
        swept = store.sweep(LEASE_MS)[0]
        if swept:
            break
    # a2 is not held by any worker (e.g. its commit was lost with Redis): it expires.
    assert swept == [("a2", "retried")]
    assert state(client, "a1") == "RUNNING"


def test_renewal_marks_reported_tasks_running(env):
    store, _clock, client = env
    for i in range(16):
        submit(store, f"t{i}")
    _first, second = claim(store, n=8)
    assert state(client, second.task_id) == "SUBMITTED_TO_WORKER"
    store.renew("n1", LEASE_MS, running=[second.task_id], held=[second.task_id])
    assert state(client, second.task_id) == "RUNNING"


def test_node_without_heartbeat_is_marked_dead(env):
    store, clock, client = env
    store.renew("n1", LEASE_MS)
    serve(store, clock, LEASE_MS / 1000 + 1)
    assert store.sweep(LEASE_MS)[1] == ["n1"]
    assert client.hget("ftq:node:n1", "state") == b"DEAD"
    assert client.ttl("ftq:node:n1") > 0              # a dead node's record is forgotten
    store.renew("n1", LEASE_MS)                        # unless it comes back
    assert client.hget("ftq:node:n1", "state") == b"ALIVE"
    assert client.ttl("ftq:node:n1") == -1


def test_worker_lost_charges_the_running_task_only(env):
    store, _clock, client = env
    for i in range(16):
        submit(store, f"t{i}")
    claimed = claim(store, n=8)
    assert len(claimed) == 2  # 16 queued / divisor 8
    running, prefetched = claimed
    assert state(client, prefetched.task_id) == "SUBMITTED_TO_WORKER"
    out = dict(store.worker_lost("n1", "w1", running.task_id, "WORKER_DIED", "SIGKILL", True))
    assert out == {running.task_id: "retried", prefetched.task_id: "released"}
    assert field(client, running.task_id, "retries") == "1"
    assert (field(client, prefetched.task_id, "attempt"),
            field(client, prefetched.task_id, "retries")) == ("0", "0")
    assert attempts(client, prefetched.task_id) == []


def test_worker_stopped_on_purpose_costs_no_retry(env):
    store, _clock, client = env
    submit(store, "a1", max_retries=0)
    claim(store)
    assert store.worker_lost("n1", "w1", "a1", "WORKER_DIED", "shutdown", False) == [
        ("a1", "requeued")]
    assert (state(client, "a1"), field(client, "a1", "attempt"), field(client, "a1", "retries")) \
        == ("PENDING_NODE_ASSIGNMENT", "1", "0")


def test_worker_crash_with_no_budget_fails(env):
    store, _clock, client = env
    submit(store, "a1", max_retries=0)
    claim(store)
    assert store.worker_lost("n1", "w1", "a1", "WORKER_DIED", "exit 1", True) == [("a1", "failed")]
    assert (state(client, "a1"), field(client, "a1", "error_type")) == ("FAILED", "WORKER_DIED")


def test_infinite_budget(env):
    store, _clock, client = env
    submit(store, "a1", max_retries=-1)
    for i in range(10):
        claim(store)
        assert store.worker_lost("n1", "w1", "a1", "WORKER_DIED", "x", True) == [("a1", "retried")]
    assert field(client, "a1", "retries") == "10"


def test_application_error_retry_uses_budget(env):
    store, _clock, client = env
    submit(store, "a1", max_retries=1)
    (t,) = claim(store)
    assert store.commit([("a1", t.fence, "err", b"Eerr", True, "ValueError: x")]) == ["retried"]
    (t,) = claim(store)
    assert store.commit([("a1", t.fence, "err", b"Eerr", True, "ValueError: x")]) == ["failed"]
    assert (state(client, "a1"), field(client, "a1", "error_type")) == \
        ("FAILED", "TASK_EXECUTION_EXCEPTION")
    assert client.get("ftq:result:a1") == b"Eerr"
    assert [a["error_type"] for a in attempts(client, "a1")] == ["TASK_EXECUTION_EXCEPTION"]


def test_dependencies_hold_a_task_until_ready(env):
    store, _clock, client = env
    submit(store, "a1")
    submit(store, "b1", deps=["a1"])
    assert state(client, "b1") == "PENDING_ARGS_AVAIL"
    assert client.lrange("ftq:queue:default", 0, -1) == [b"a1"]
    (t,) = claim(store)
    store.commit([("a1", t.fence, "err", b"E", False, "boom")])  # failure releases it too
    assert state(client, "b1") == "PENDING_NODE_ASSIGNMENT"
    assert client.lrange("ftq:queue:default", 0, -1) == [b"b1"]
    submit(store, "c1", deps=["a1"])   # dependency already final
    assert state(client, "c1") == "PENDING_NODE_ASSIGNMENT"


def test_claim_skips_tasks_no_longer_queued(env):
    store, _clock, client = env
    submit(store, "a1")
    submit(store, "a2")
    client.hset("ftq:task:a1", "state", "FAILED")   # e.g. cancelled while queued
    (t,) = claim(store)
    assert t.task_id == "a2"
    assert claim(store) == []


def test_bells_ring_on_submit_and_clear_when_empty(env):
    store, _clock, client = env
    submit(store, "a1")
    assert client.llen("ftq:bell:default") == 1
    claim(store)
    assert claim(store) == []
    assert client.llen("ftq:bell:default") == 0


def test_watch_registers_waiters_and_they_are_notified(env):
    store, _clock, client = env
    submit(store, "a1")
    store.put("p1", b"V1")
    assert store.watch("ftq:done:other", ["a1", "p1", "zz"]) == ["pending", "ready", "missing"]
    assert store.watch("ftq:done:me", ["a1"]) == ["pending"]   # the submitter is not added twice
    (t,) = claim(store)
    store.commit([("a1", t.fence, "ok", b"V", False, "")])
    assert client.lrange("ftq:done:other", 0, -1) == [b"a1"]
    assert client.lrange("ftq:done:me", 0, -1) == [b"a1\nV"]
    assert store.watch("ftq:done:other", ["a1"]) == ["ready"]


def test_retries_go_to_the_front_of_the_queue(env):
    store, _clock, _client = env
    submit(store, "a1")
    submit(store, "a2")
    (_t,) = claim(store)
    store.worker_lost("n1", "w1", "a1", "WORKER_DIED", "x", True)
    assert claim(store)[0].task_id == "a1"


def test_a_task_that_failed_again_retries_behind_the_queue(env):
    """T17: a poison pill with many retries went back to the front after every crash, so
    every worker that freed up took it and died: one max_retries=-1 segfaulting task made
    200 healthy 20 ms tasks on a 2-worker node take 548 s instead of 2 s."""
    store, _clock, _client = env
    submit(store, "a1", max_retries=-1)
    submit(store, "a2")
    claim(store)
    store.worker_lost("n1", "w1", "a1", "WORKER_DIED", "x", True)
    assert claim(store)[0].task_id == "a1"          # first retry: front
    store.worker_lost("n1", "w1", "a1", "WORKER_DIED", "x", True)
    assert [claim(store)[0].task_id, claim(store)[0].task_id] == ["a2", "a1"]


def test_claim_returns_max_retries(env):
    store, _clock, _client = env
    submit(store, "a1", max_retries=5)
    submit(store, "a2", max_retries=-1)
    assert claim(store)[0].max_retries == 5
    assert claim(store)[0].max_retries == -1


def test_commit_marks_the_next_task_running_only_for_the_worker_holding_it(env):
    store, clock, client = env
    # w1 prefetches [t2, t1], freezes past its lease; both are swept and w2 claims them as
    # [t2 running, t1 prefetched].
    for task_id in ["t2", "t1"] + [f"f{i:02}" for i in range(14)]:
        submit(store, task_id)
    first, prefetched = claim(store, n=2, worker="w1")
    assert (first.task_id, prefetched.task_id) == ("t2", "t1")
    serve(store, clock, LEASE_MS / 1000 + 1)
    store.sweep(LEASE_MS)
    assert [t.task_id for t in claim(store, n=2, worker="w2", node="n2")] == ["t2", "t1"]
    # w1 comes back, commits t2 (fenced) and says it starts t1 next: t1 is not w1's.
    assert store.commit([("t2", first.fence, "ok", b"V", False, "")], "t1",
                        worker_id="w1", next_fence=prefetched.fence) == ["fenced"]
    assert (state(client, "t1"), field(client, "t1", "worker_id")) == \
        ("SUBMITTED_TO_WORKER", "w2")
    # The holder's own commit marks it, and only with its token.
    store.commit([], "t1", worker_id="w2", next_fence=prefetched.fence)
    assert state(client, "t1") == "SUBMITTED_TO_WORKER"
    store.commit([], "t1", worker_id="w2", next_fence=field(client, "t1", "fence"))
    assert state(client, "t1") == "RUNNING"


def test_commit_tells_a_worker_whether_it_still_holds_the_task_it_starts_next(env):
    store, clock, client = env
    # w1 prefetches [t2, t1] and freezes past its lease; both are swept, w2 claims them.
    for task_id in ["t2", "t1"] + [f"f{i:02}" for i in range(14)]:
        submit(store, task_id)
    first, prefetched = claim(store, n=2, worker="w1")
    assert store.commit([], "t1", worker_id="w1", next_fence=prefetched.fence) == []
    assert store.next_task_held                    # before the freeze: still w1's
    serve(store, clock, LEASE_MS / 1000 + 1)
    store.sweep(LEASE_MS)
    claim(store, n=2, worker="w2", node="n2")
    # Back, w1 commits t2 and is about to start t1 (same attempt number as w2's run).
    store.commit([("t2", first.fence, "ok", b"V", False, "")], "t1", worker_id="w1",
                 next_fence=prefetched.fence)
    assert not store.next_task_held               # so it must not start t1


def _cpu_free(client, node="n1"):
    return int(client.hget(f"ftq:node_free:{node}", "CPU"))


def test_a_task_started_next_takes_over_the_room_of_the_one_that_ended(env):
    store, clock, client = env
    client.hset("ftq:node_free:n1", mapping={"CPU": 20_000})    # 2 CPUs
    for i in range(24):
        submit(store, f"t{i:02}")
    rows = claim(store, n=3)
    assert len(rows) == 3 and _cpu_free(client) == 10_000       # the first holds a CPU
    for i, row in enumerate(rows):
        nxt = rows[i + 1] if i + 1 < len(rows) else None
        store.commit([(row.task_id, row.fence, "ok", b"V", False, "")],
                     nxt.task_id if nxt else "", worker_id="w1",
                     next_fence=nxt.fence if nxt else "")
        if nxt:
            assert store.next_task_held
            assert (state(client, nxt.task_id), field(client, nxt.task_id, "held")) == \
                ("RUNNING", "n1")
            assert _cpu_free(client) == 10_000                  # handed over, still one held
        assert field(client, row.task_id, "held") is None
    assert _cpu_free(client) == 20_000                          # all given back


def test_no_hand_over_on_a_node_running_over_its_cpus(env):
    store, clock, client = env
    client.hset("ftq:node_free:n1", mapping={"CPU": 10_000})    # 1 CPU
    for i in range(16):
        submit(store, f"t{i:02}")
    first, prefetched = claim(store, n=2)
    client.hset("ftq:node_free:n1", "CPU", -10_000)             # over by one (lend take-back)
    store.commit([(first.task_id, first.fence, "ok", b"V", False, "")], prefetched.task_id,
                 worker_id="w1", next_fence=prefetched.fence)
    # The end gives its CPU back (-1 + 1 = 0): no room for the next, which goes back unstarted.
    assert not store.next_task_held
    assert state(client, prefetched.task_id) == "PENDING_NODE_ASSIGNMENT"
    assert _cpu_free(client) == 0

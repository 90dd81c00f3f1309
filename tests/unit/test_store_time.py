"""Time and flow control in the store, with a fake clock: strict queue priority, queue depths,
retry backoff, delayed tasks. On fakeredis (with Lua) and on the real server."""

from __future__ import annotations

import storekit
from storekit import claim, serve, state, submit

from ftqueue.state import StateReader

env = storekit.env


def test_strict_priority_prefetches_from_the_first_queue_only(env):
    store, _clock, _client = env
    for i in range(16):
        submit(store, f"h{i}", queue="high")
        submit(store, f"d{i}", queue="default")
    taken: list[str] = []
    while True:
        got = claim(store, n=4, queues=("high", "default"))
        if not got:
            break
        ids = [t.task_id for t in got]
        # A claim never mixes queues, and takes from default only once high is empty.
        assert len({i[0] for i in ids}) == 1, ids
        if ids[0].startswith("d"):
            assert len(ids) == 1   # no prefetch below the first queue
        taken += ids
    assert [t[0] for t in taken] == ["h"] * 16 + ["d"] * 16


def test_a_cancelled_queued_task_leaves_the_queue_depth(env):
    store, _clock, client = env
    submit(store, "a1")
    submit(store, "a2")
    assert StateReader(store).queue_depths() == {"default": 2}
    assert store.cancel("a1", False, True) == [("a1", "cancelled")]
    assert StateReader(store).queue_depths() == {"default": 1}
    assert state(client, "a1") == "FAILED"
    assert [t.task_id for t in claim(store)] == ["a2"]


def submit_with(store, task_id: str, deps=(), queue: str = "default", **extra: str) -> int:
    fields = {"name": "f", "func": "f", "fn": "digest", "job_id": "00000001",
              "parent_task_id": "", "max_retries": "5", "notify": "ftq:done:me", **extra}
    return store.submit([(task_id, queue, b"args", list(deps), fields)])


def claim_due(store, queues=("default",)):
    return store.claim_due("n1", "w1", list(queues), 1, 8, storekit.LEASE_MS)


def test_a_delayed_task_waits_in_its_delayed_set_and_starts_when_due(env):
    store, clock, client = env
    submit_with(store, "a1", delay_ms="5000")
    assert state(client, "a1") == "DELAYED"
    assert client.llen("ftq:queue:default") == 0
    assert client.zscore("ftq:delayed:default", "a1") == clock.now_ms + 5000
    assert claim_due(store) == ([], 5000)          # the worker sleeps until then
    clock.advance(4.9)
    assert claim_due(store) == ([], 100)
    clock.advance(0.1)
    tasks, due_in = claim_due(store)
    assert [t.task_id for t in tasks] == ["a1"] and due_in is None
    assert state(client, "a1") == "RUNNING"
    assert client.zcard("ftq:delayed:default") == 0


def test_eta_is_absolute_and_a_past_eta_runs_at_once(env):
    store, clock, client = env
    submit_with(store, "later", eta_ms=str(clock.now_ms + 2000))
    submit_with(store, "past", eta_ms=str(clock.now_ms - 2000))
    assert (state(client, "later"), state(client, "past")) == ("DELAYED", "PENDING_NODE_ASSIGNMENT")
    assert [t.task_id for t in claim_due(store)[0]] == ["past"]
    clock.advance(2)
    assert [t.task_id for t in claim_due(store)[0]] == ["later"]


def test_a_new_earliest_delayed_task_wakes_a_sleeping_worker(env):
    store, _clock, client = env
    submit_with(store, "a1", delay_ms="5000")
    claim_due(store)                                # finds nothing: bells cleared
    assert client.llen("ftq:bell:default") == 0
    submit_with(store, "a2", delay_ms="9000")       # not the earliest: no bell
    assert client.llen("ftq:bell:default") == 0
    submit_with(store, "a3", delay_ms="100")        # earliest: wake up and learn it
    assert client.llen("ftq:bell:default") == 1
    assert claim_due(store) == ([], 100)


def test_cancel_and_state_views_while_delayed(env):
    store, _clock, client = env
    submit_with(store, "a1", delay_ms="60000")
    rows = StateReader(store).list_tasks([("state", "=", "DELAYED")])
    assert [r["task_id"] for r in rows] == ["a1"]
    assert store.cancel("a1", False, True) == [("a1", "cancelled")]
    assert (state(client, "a1"), storekit.field(client, "a1", "error_type")) == \
        ("FAILED", "TASK_CANCELLED")
    assert client.zcard("ftq:delayed:default") == 0
    assert client.lrange("ftq:done:me", 0, -1) == [b"a1"]


def test_any_sweep_promotes_due_tasks_of_every_queue(env):
    store, clock, client = env
    submit_with(store, "a1", queue="nobody_claims", delay_ms="1000")
    store.sweep(storekit.LEASE_MS)
    assert state(client, "a1") == "DELAYED"
    clock.advance(1)
    store.sweep(storekit.LEASE_MS)
    assert state(client, "a1") == "PENDING_NODE_ASSIGNMENT"
    assert client.lrange("ftq:queue:nobody_claims", 0, -1) == [b"a1"]


def test_a_delayed_task_whose_arguments_end_early_still_waits(env):
    store, clock, client = env
    submit_with(store, "dep")
    submit_with(store, "a1", deps=["dep"], delay_ms="3000")
    assert state(client, "a1") == "PENDING_ARGS_AVAIL"
    (t,) = claim_due(store)[0]
    store.commit([("dep", t.fence, "ok", b"V", False, "")])
    assert state(client, "a1") == "DELAYED"
    clock.advance(3)
    assert [t.task_id for t in claim_due(store)[0]] == ["a1"]


RETRY = {"retry_delay_ms": "1000", "retry_backoff": "2.0", "retry_max_delay_ms": "3000"}


def test_charged_retries_back_off_exponentially_up_to_the_cap(env):
    store, clock, client = env
    submit_with(store, "a1", **RETRY)
    waits = []
    for n in range(4):
        (t,) = claim_due(store)[0]
        assert t.attempt == n
        if n % 2:
            assert store.commit([("a1", t.fence, "err", b"E", True, "boom")]) == ["retried"]
        else:   # a crash is charged the same way
            assert store.worker_lost("n1", "w1", "a1", "WORKER_DIED", "x", True) == \
                [("a1", "retried")]
        assert state(client, "a1") == "DELAYED"
        wait = int(client.zscore("ftq:delayed:default", "a1")) - clock.now_ms
        waits.append(wait)
        assert claim_due(store) == ([], wait)     # holds no worker while it waits
        clock.advance(wait / 1000)
    for wait, full in zip(waits, [1000, 2000, 3000, 3000]):
        assert full * 0.9 <= wait <= full, waits


def test_uncharged_requeues_and_tasks_without_retry_delay_go_back_at_once(env):
    store, _clock, client = env
    submit_with(store, "a1", **RETRY)
    claim_due(store)
    store.worker_lost("n1", "w1", "a1", "WORKER_DIED", "stopped on purpose", False)
    assert state(client, "a1") == "PENDING_NODE_ASSIGNMENT"
    submit_with(store, "b1")
    (t,) = claim_due(store)[0]      # a1 first (front)
    (t,) = claim_due(store)[0]
    assert t.task_id == "b1"
    store.commit([("b1", t.fence, "err", b"E", True, "boom")])
    assert state(client, "b1") == "PENDING_NODE_ASSIGNMENT"


def test_jitter_spreads_retries_by_at_most_ten_percent(env):
    store, clock, client = env
    for i in range(20):
        submit_with(store, f"t{i}", **RETRY)
        (t,) = claim_due(store)[0]
        store.commit([(t.task_id, t.fence, "err", b"E", True, "boom")])
    waits = {int(s) - clock.now_ms for _, s in client.zrange("ftq:delayed:default", 0, -1,
                                                             withscores=True)}
    assert all(900 <= w <= 1000 for w in waits) and len(waits) > 5, waits


def test_a_second_submit_of_an_id_submits_nothing_and_its_submitter_is_notified(env):
    store, _clock, client = env
    assert submit_with(store, "order-42") == 1
    assert submit_with(store, "order-42", notify="ftq:done:other") == 0
    assert client.llen("ftq:queue:default") == 1
    (t,) = claim_due(store)[0]
    store.commit([("order-42", t.fence, "ok", b"V", False, "")])
    assert client.lrange("ftq:done:other", 0, -1) == [b"order-42"]
    # Submitted again once it ended (its lineage kept): nothing runs, the notice comes now.
    assert submit_with(store, "order-42", notify="ftq:done:third") == 0
    assert client.lrange("ftq:done:third", 0, -1) == [b"order-42"]
    assert claim_due(store) == ([], None)


def test_task_id_option_is_validated():
    import pytest

    import ftqueue

    @ftqueue.remote
    def f() -> None: ...

    put_like = "0123456789abcdef" * 2 + "01234567"
    for bad in ["", "x" * 129, "has space", "a/b", "é", 42, put_like]:
        with pytest.raises(ValueError, match="task_id"):
            f.options(task_id=bad)
    f.options(task_id="Order-42:v1.2_x")
    assert ftqueue.ObjectRef("Order-42:v1.2_x").task_id() == "Order-42:v1.2_x"


def test_time_options_are_validated():
    import pytest

    import ftqueue

    @ftqueue.remote
    def f() -> None: ...

    for bad in [{"retry_delay_s": -1}, {"retry_backoff": 0.5}, {"retry_max_delay_s": "x"},
                {"delay_s": True}, {"eta": "tomorrow"}, {"delay_s": 1, "eta": 5.0}]:
        with pytest.raises(ValueError):
            f.options(**bad)


def test_requeue_runs_a_failed_task_again_with_a_fresh_budget(env):
    store, _clock, client = env
    submit_with(store, "a1", max_retries="0")
    (t,) = claim_due(store)[0]
    assert store.commit([("a1", t.fence, "err", b"Eboom", True, "ValueError: boom")]) == \
        ["failed"]
    assert store.requeue("a1") == "requeued"
    assert (state(client, "a1"), storekit.field(client, "a1", "attempt"),
            storekit.field(client, "a1", "retries")) == ("PENDING_NODE_ASSIGNMENT", "1", "0")
    assert client.get("ftq:result:a1") is None and client.ttl("ftq:task:a1") == -1
    assert [a["error_type"] for a in storekit.attempts(client, "a1")] == \
        ["TASK_EXECUTION_EXCEPTION"]
    assert store.requeue("a1") == "PENDING_NODE_ASSIGNMENT"     # only FAILED tasks
    assert store.requeue("nope") == "missing"
    (t,) = claim_due(store)[0]
    assert t.attempt == 1
    store.commit([("a1", t.fence, "ok", b"V", False, "")])
    assert state(client, "a1") == "FINISHED"
    assert store.requeue("a1") == "FINISHED"


def test_purge_cancels_queued_and_delayed_tasks_in_batches(env):
    store, _clock, client = env
    from ftqueue import dead_letter

    submit_with(store, "run")
    claim_due(store)
    for i in range(5):
        submit_with(store, f"q{i}")
    for i in range(3):
        submit_with(store, f"d{i}", delay_ms="60000")
    submit_with(store, "other", queue="elsewhere")
    dead_letter.PURGE_BATCH, before = 2, dead_letter.PURGE_BATCH
    try:
        assert dead_letter.purge(store, "default") == 8
    finally:
        dead_letter.PURGE_BATCH = before
    for tid in [f"q{i}" for i in range(5)] + [f"d{i}" for i in range(3)]:
        assert (state(client, tid), storekit.field(client, tid, "error_type")) == \
            ("FAILED", "TASK_CANCELLED")
    assert (state(client, "run"), state(client, "other")) == \
        ("RUNNING", "PENDING_NODE_ASSIGNMENT")
    assert client.llen("ftq:queue:default") == 0 and client.zcard("ftq:delayed:default") == 0
    assert len(client.lrange("ftq:done:me", 0, -1)) == 8


def limited(store, task_id: str, key: str = "A", **extra: str) -> int:
    return submit_with(store, task_id, limit_key=key, **extra)


def claim_one(store, worker: str = "w1", n: int = 1) -> list[str]:
    tasks = store.claim("n1", worker, ["default"], n, 1, storekit.LEASE_MS)
    return [t.task_id for t in tasks]


def fence(store, task_id: str) -> str:
    """The fencing token of the task's current claim (fences count up from its creation)."""
    return store.redis.hget(f"ftq:task:{task_id}", "fence").decode()


def running(client, key: str = "A") -> set[str]:
    return {m.decode() for m in client.smembers(f"ftq:limit:running:{key}")}


def test_max_concurrency_holds_tasks_back_without_blocking_the_queue(env):
    store, _clock, client = env
    for i in range(4):
        limited(store, f"a{i}", max_concurrency="2")
    submit_with(store, "b0")
    assert claim_one(store, "w1") == ["a0"]
    assert claim_one(store, "w2", n=4) == ["a1"]     # a limited task is never prefetched
    assert claim_one(store, "w3") == ["b0"]          # a2, a3 held back; b0 not blocked
    assert running(client) == {"a0", "a1"}
    assert client.lrange("ftq:limit:waiting:A", 0, -1) == [b"a3", b"a2"]
    assert StateReader(store).queue_depths() == {"default": 0}
    assert claim_one(store, "w4") == []
    # A commit frees a slot: the oldest held task goes back to its queue's front.
    store.commit([("a0", fence(store, "a0"), "ok", b"V", False, "")])
    assert claim_one(store, "w4") == ["a2"]
    assert claim_one(store, "w5") == []
    # A crashed worker's slot is released with its lease; its retry runs first.
    assert store.worker_lost("n1", "w2", "a1", "WORKER_DIED", "SIGKILL", True) == \
        [("a1", "retried")]
    assert running(client) == {"a2"}
    assert claim_one(store, "w5") == ["a1"]
    assert claim_one(store, "w6") == []
    assert running(client) == {"a2", "a1"}
    store.commit([("a2", fence(store, "a2"), "ok", b"V", False, "")])
    assert claim_one(store, "w6") == ["a3"]


def test_a_task_blocked_in_get_lends_its_slot_and_never_leaks_it(env):
    store, _clock, client = env
    for i in range(3):
        limited(store, f"a{i}", max_concurrency="1")
    assert claim_one(store, "w1") == ["a0"]
    assert claim_one(store, "w2") == []                   # a1, a2 held back
    # a0 waits in get (for a task of its own key): its slot is lent, the oldest held wakes.
    assert store.lend("a0", True) == "lent"
    assert running(client) == set()
    assert claim_one(store, "w2") == ["a1"]
    assert store.lend("a0", False) == "taken back"        # over the limit for a moment
    assert running(client) == {"a0", "a1"}
    store.commit([("a1", fence(store, "a1"), "ok", b"V", False, "")])
    assert claim_one(store, "w2") == []                   # a0 still holds its slot
    # Lent again, then cancelled by force while lent: a late take-back holds nothing.
    assert store.lend("a0", True) == "lent"
    assert claim_one(store, "w2") == ["a2"]
    store.cancel("a0", True, True)
    assert store.lend("a0", False) == "unchanged"
    store.commit([("a2", fence(store, "a2"), "ok", b"V", False, "")])
    assert running(client) == set() and storekit.field(client, "a0", "limit_lent") is None


def test_a_lost_node_releases_its_slots(env):
    store, clock, client = env
    limited(store, "a0", max_concurrency="1")
    limited(store, "a1", max_concurrency="1")
    assert claim_one(store) == ["a0"]
    assert claim_one(store) == []
    serve(store, clock, storekit.LEASE_MS / 1000 + 1)
    assert store.sweep(storekit.LEASE_MS)[0] == [("a0", "retried")]
    assert running(client) == set()
    got = claim_one(store, worker="w2")
    assert got in (["a0"], ["a1"]) and len(running(client)) == 1


def test_cancelling_held_tasks_never_strands_the_rest(env):
    store, _clock, client = env
    for i in range(3):
        limited(store, f"a{i}", max_concurrency="1")
    assert claim_one(store) == ["a0"]
    assert claim_one(store) == []
    store.commit([("a0", fence(store, "a0"), "ok", b"V", False, "")])   # a1 woken into the queue
    assert store.cancel("a1", False, True) == [("a1", "cancelled")]   # a2 woken now
    assert claim_one(store) == ["a2"]
    assert client.llen("ftq:limit:waiting:A") == 0


def test_max_rate_is_a_sliding_window_and_over_rate_tasks_wait_delayed(env):
    store, clock, client = env
    t0 = clock.now_ms
    for i in range(7):
        limited(store, f"a{i}", max_rate="3/s", rate_n="3", rate_ms="1000")
    started = {}
    for _ in range(40):
        while got := claim_one(store):
            started[got[0]] = clock.now_ms - t0
            store.commit([(got[0], fence(store, got[0]), "ok", b"V", False, "")])
        clock.advance(0.1)
    assert sorted(started.values()) == [0, 0, 0, 1000, 1000, 1000, 2000]
    assert client.zcard("ftq:delayed:default") == 0


def test_one_hot_key_cannot_starve_another(env):
    store, _clock, _client = env
    for i in range(250):
        limited(store, f"hot{i}", max_concurrency="1")
    limited(store, "cold", key="B", max_concurrency="1")
    got = []
    for _ in range(4):
        got += claim_one(store)
    assert got == ["hot0", "cold"]


def test_purge_cancels_tasks_held_back_by_a_limit(env):
    store, _clock, client = env
    from ftqueue import dead_letter

    for i in range(3):
        limited(store, f"a{i}", max_concurrency="1")
    limited(store, "x0", queue="other", max_concurrency="1")
    claim_one(store)
    claim_one(store)
    assert dead_letter.purge(store, "default") == 2
    assert state(client, "a1") == state(client, "a2") == "FAILED"
    assert state(client, "x0") == "PENDING_NODE_ASSIGNMENT"


def test_status_shows_delayed_tasks_and_limits(env):
    store, _clock, _client = env
    for i in range(3):
        limited(store, f"a{i}", max_concurrency="1")
    submit_with(store, "later", delay_ms="60000")
    claim_one(store, "w1")
    claim_one(store, "w2")
    status = StateReader(store).status()
    assert status["delayed"] == {"default": 1}
    assert status["limits"] == {"A": {"running": 1, "waiting": 2}}


def test_a_claim_reports_the_reserved_start_of_a_task_it_held_back_by_rate(env):
    store, _clock, _client = env
    limited(store, "a0", max_rate="1/s", rate_n="1", rate_ms="1000")
    limited(store, "a1", max_rate="1/s", rate_n="1", rate_ms="1000")
    assert [t.task_id for t in claim_due(store)[0]] == ["a0"]
    assert claim_due(store) == ([], 1000)    # a1 held back: the worker sleeps until its start


def test_reservations_started_late_do_not_make_a_burst(env):
    store, clock, _client = env
    t0 = clock.now_ms
    for i in range(6):
        limited(store, f"a{i}", max_rate="2/s", rate_n="2", rate_ms="1000")
    started = {}

    def drain():
        while got := claim_one(store):
            started[got[0]] = clock.now_ms - t0
            store.commit([(got[0], fence(store, got[0]), "ok", b"V", False, "")])

    drain()                   # a0, a1 start; a2..a5 reserved at +1 s and +2 s
    clock.advance(2.5)        # every worker was busy meanwhile
    drain()
    clock.advance(1)
    drain()
    assert sorted(started.values()) == [0, 0, 2500, 2500, 3500, 3500]

"""A key of the wrong type is isolated, not fatal: the script drops the id from where it
found it (or moves a list or set it keeps aside), records the key once in ftq:corrupt,
counts it, reports it once to the caller, and serves everything else."""

from __future__ import annotations

from importlib import resources

import pytest
import redis
import storekit
from storekit import LEASE_MS, claim, field, serve, state, submit

from ftqueue.store.scripts import FixedKey, prelude
from ftqueue.store.store import CORRUPT_RECORD

env = storekit.env


def corrupt_count(client):
    return int(client.hget("ftq:stats", "corrupt") or 0)


def test_sweep_drops_a_corrupt_leased_record_and_goes_on(env):
    store, clock, client = env
    submit(store, "a1")
    claim(store)
    client.set("ftq:task:bad", "not a hash")
    client.zadd("ftq:leases", {"bad": 0})
    serve(store, clock, LEASE_MS / 1000 + 1)
    assert store.sweep(LEASE_MS)[0] == [("a1", "retried")]
    assert store.last_corrupt == ["ftq:task:bad"]
    assert client.zscore("ftq:leases", "bad") is None
    assert b"where a record belongs" in client.hget("ftq:corrupt", "ftq:task:bad")
    assert corrupt_count(client) == 1
    client.zadd("ftq:leases", {"bad": 0})        # found again: counted, not reported again
    store.sweep(LEASE_MS)
    assert store.last_corrupt == [] and corrupt_count(client) == 2


def test_a_corrupt_queue_is_moved_aside_and_the_other_queues_are_served(env):
    store, _clock, client = env
    submit(store, "a1")
    client.set("ftq:queue:broken", "not a list")
    (task,) = claim(store, queues=("broken", "default"))
    assert task.task_id == "a1"
    assert store.last_corrupt == ["ftq:queue:broken"]
    assert client.get("ftq:quarantine:ftq:queue:broken") == b"not a list"
    submit(store, "b1", queue="broken")          # the queue works again
    assert claim(store, queues=("broken",))[0].task_id == "b1"


def test_claim_drops_a_queued_id_whose_record_is_corrupt(env):
    store, _clock, client = env
    submit(store, "a1")
    submit(store, "a2")
    client.delete("ftq:task:a1")
    client.set("ftq:task:a1", "garbage")
    assert [t.task_id for t in claim(store)] == ["a2"]
    assert store.last_corrupt == ["ftq:task:a1"]
    assert client.llen("ftq:queue:default") == 0


def test_claim_hands_unreadable_arguments_over_as_none(env):
    store, _clock, client = env
    submit(store, "a1")
    client.delete("ftq:args:a1")
    client.rpush("ftq:args:a1", "x")
    (task,) = claim(store)
    assert task.args_blob == b"" and store.last_corrupt == ["ftq:args:a1"]


def test_renew_and_worker_lost_drop_corrupt_ids_from_the_node(env):
    store, _clock, client = env
    submit(store, "a1")
    claim(store)
    client.set("ftq:task:bad", "x")
    client.sadd("ftq:node_tasks:n1", "bad")
    client.zadd("ftq:leases", {"bad": 10**12})
    assert store.renew("n1", LEASE_MS, running=["a1"], held=["a1", "bad"]) == 1
    assert client.smembers("ftq:node_tasks:n1") == {b"a1"}
    assert client.zscore("ftq:leases", "bad") is None
    client.sadd("ftq:node_tasks:n1", "bad")
    assert store.worker_lost("n1", "w1", "a1", "WORKER_DIED", "x", True) == [("a1", "retried")]
    assert client.smembers("ftq:node_tasks:n1") == set()


def test_commit_to_a_corrupt_record_answers_corrupt_and_commits_the_rest(env):
    store, _clock, client = env
    submit(store, "a1")
    submit(store, "a2")
    t1, = claim(store)
    t2, = claim(store)
    client.delete(f"ftq:task:{t1.task_id}")
    client.set(f"ftq:task:{t1.task_id}", "x")
    assert store.commit([(t1.task_id, t1.fence, "ok", b"V", False, ""),
                         (t2.task_id, t2.fence, "ok", b"V", False, "")]) == \
        ["corrupt", "finished"]
    assert client.zscore("ftq:leases", t1.task_id) is None


def test_a_corrupt_record_reads_as_failed_naming_its_key(env):
    store, _clock, client = env
    client.set("ftq:task:bad", "x")
    assert store.watch("ftq:done:other", ["bad"]) == ["ready"]
    ((record, blob),) = store.outcomes(["bad"])
    assert (record["state"], record["error_type"], blob) == ("FAILED", CORRUPT_RECORD, None)
    assert "ftq:task:bad" in record["error_message"]


def test_cancel_skips_a_corrupt_child_and_cancels_the_others(env):
    store, _clock, client = env
    submit(store, "p1")
    submit(store, "c1", parent="p1")
    client.sadd("ftq:children:p1", "bad")
    client.set("ftq:task:bad", "x")
    assert dict(store.cancel("p1", force=False, recursive=True)) == \
        {"p1": "cancelled", "c1": "cancelled", "bad": "corrupt"}


def test_a_finished_task_releases_its_sound_dependents_past_a_corrupt_one(env):
    store, _clock, client = env
    submit(store, "a1")
    submit(store, "b1", deps=["a1"])
    client.sadd("ftq:dependents:a1", "bad")
    client.set("ftq:task:bad", "x")
    (t,) = claim(store)
    assert store.commit([("a1", t.fence, "ok", b"V", False, "")]) == ["finished"]
    assert state(client, "b1") == "PENDING_NODE_ASSIGNMENT"
    assert store.last_corrupt == ["ftq:task:bad"]


def test_a_corrupt_notification_list_is_moved_aside_and_notified(env):
    store, _clock, client = env
    submit(store, "a1")
    client.set("ftq:done:me", "x")
    (t,) = claim(store)
    assert store.commit([("a1", t.fence, "ok", b"V", False, "")]) == ["finished"]
    assert client.lrange("ftq:done:me", 0, -1) == [b"a1\nV"]
    assert client.get("ftq:quarantine:ftq:done:me") == b"x"


def test_submit_treats_a_corrupt_dependency_as_final(env):
    store, _clock, client = env
    client.set("ftq:task:bad", "x")
    submit(store, "b1", deps=["bad"])
    assert state(client, "b1") == "PENDING_NODE_ASSIGNMENT"
    assert field(client, "b1", "dep_ids") == "bad"


def test_reconstructing_from_a_corrupt_record_has_no_lineage(env):
    store, _clock, client = env
    client.set("ftq:task:bad", "x")
    assert store.reconstruct("bad") == "no_lineage"
    assert store.last_corrupt == ["ftq:task:bad"]


def test_errors_other_than_wrong_type_pass_on_with_their_code(env):
    _store, _clock, client = env
    lib = resources.files("ftqueue.store").joinpath("lua", "lib.lua").read_text()
    fixed = (FixedKey("stats"), FixedKey("corrupt"))
    client.hset("ftq:h", "f", "not a number")
    for call in ("safe('HINCRBY', 'ftq:h', 'f', 1)", "guarded('HINCRBY', 'ftq:h', 'x', 'f', 1)"):
        with pytest.raises(redis.ResponseError) as caught:
            client.eval("\n".join([prelude(fixed), lib, call]), 2, "ftq:stats", "ftq:corrupt",
                        "ftq", "")
        assert "ERR hash value is not an integer" in str(caught.value)
    assert client.hlen("ftq:corrupt") == 0

"""`summary tasks` from the counts the scripts keep: exact per function and state, with no
scan of the tasks (on fakeredis and the real server)."""

from __future__ import annotations

import storekit
from storekit import claim, submit

from ftqueue.state import StateReader

env = storekit.env


def summary(store):
    return StateReader(store).summarize_tasks()


def test_counts_follow_every_transition_without_reading_the_index(env):
    store, _clock, client = env
    for i in range(5):
        submit(store, f"a{i}", max_retries=0)
    submit(store, "a0")                                   # idempotent: not counted again
    (ok,) = claim(store, worker="w1")
    assert summary(store) == {"f": {"RUNNING": 1, "PENDING": 4}}
    (bad,) = claim(store, worker="w2")
    assert summary(store) == {"f": {"RUNNING": 2, "PENDING": 3}}
    store.commit([(ok.task_id, ok.fence, "ok", b"V", False, "")])
    assert store.commit([(bad.task_id, bad.fence, "err", b"E", True, "boom")]) == ["failed"]
    assert summary(store) == {"f": {"FINISHED": 1, "FAILED": 1, "PENDING": 3}}
    # No scan: the index and the records of waiting tasks are not what it reads.
    client.delete("ftq:index:tasks")
    for i in range(2, 5):
        client.delete(f"ftq:task:a{i}")
    assert summary(store) == {"f": {"FINISHED": 1, "FAILED": 1, "PENDING": 3}}


def test_requeue_and_rebuild_take_their_end_back(env):
    store, _clock, client = env
    submit(store, "ok1")
    submit(store, "bad1", max_retries=0)
    for worker in ("w1", "w2"):
        (task,) = claim(store, worker=worker)
        if task.task_id == "ok1":
            store.commit([("ok1", task.fence, "ok", b"V", False, "")])
        else:
            store.commit([("bad1", task.fence, "err", b"E", True, "boom")])
    assert summary(store) == {"f": {"FINISHED": 1, "FAILED": 1}}
    assert store.requeue("bad1") == "requeued"
    assert summary(store) == {"f": {"FINISHED": 1, "PENDING": 1}}
    client.delete("ftq:result:ok1")
    assert store.reconstruct("ok1") == "resubmitted"
    assert summary(store) == {"f": {"PENDING": 2}}
    for worker in ("w1", "w2"):
        (task,) = claim(store, worker=worker)
        store.commit([(task.task_id, task.fence, "ok", b"V", False, "")])
    assert summary(store) == {"f": {"FINISHED": 2}}


def test_a_result_is_stored_with_its_retention_in_one_write(env):
    store, _clock, client = env
    fields = {"name": "f", "func": "f", "fn": "d", "job_id": "1", "max_retries": "0",
              "notify": "ftq:done:me", "result_ttl_s": "100", "lineage_ttl_s": "200"}
    store.submit([("ok1", "default", b"args", [], fields), ("bad1", "default", b"args", [],
                                                           fields)])
    for worker in ("w1", "w2"):
        (task,) = claim(store, worker=worker)
        outcome = "ok" if task.task_id == "ok1" else "err"
        store.commit([(task.task_id, task.fence, outcome, b"V", True, "boom")])
    for task_id in ("ok1", "bad1"):
        assert 90 < client.ttl(f"ftq:result:{task_id}") <= 100
        assert 190 < client.ttl(f"ftq:task:{task_id}") <= 200


def test_a_task_ending_while_the_summary_reads_is_counted_once_and_final(env, monkeypatch):
    """The counts and the leases are one snapshot; a task leased in it that has ended by
    the time its state is read is counted in its final state, never as PENDING."""
    store, _clock, _client = env
    submit(store, "a1")
    submit(store, "a2")
    (task,) = claim(store, worker="w1")
    read_states = store.task_fields

    def commit_first(task_ids, *fields):
        store.commit([(task.task_id, task.fence, "ok", b"V", False, "")])  # ends meanwhile
        return read_states(task_ids, *fields)

    monkeypatch.setattr(store, "task_fields", commit_first)
    assert summary(store) == {"f": {"FINISHED": 1, "PENDING": 1}}
    monkeypatch.setattr(store, "task_fields", read_states)
    assert summary(store) == {"f": {"FINISHED": 1, "PENDING": 1}}

"""A worker in process on fakeredis, no sleeps: what finished is committed before the next
task body starts (DESIGN invariant 8), and the supervisor hears it in that order."""

from __future__ import annotations

import io

import fakeredis
import redis

from ftqueue import payload, protocol
from ftqueue.settings import NodeSettings
from ftqueue.store import Store
from ftqueue.worker import Worker

FN = "digest-of-f"


def submit(store: Store, task_id: str) -> None:
    bound = payload.execution_fields(FN, 0, None, False, 3)
    blob, _ = payload.pack_args([task_id], {}, False, "f", task_id, bound)
    fields = {"name": "f", "func": "f", "fn": FN, "job_id": "00000001", "parent_task_id": "",
              "max_retries": "3", "notify": "ftq:done:me"}
    store.submit([(task_id, "default", blob, [], fields)])


def test_outcome_is_committed_before_the_next_task_starts():
    client = fakeredis.FakeRedis()
    store = Store(client, "ftq")
    ids = [f"{i:032x}" for i in range(16)]
    for task_id in ids:
        submit(store, task_id)
    seen: dict[str, str] = {}

    def f(task_id: str) -> str:
        seen[task_id] = client.hget(f"ftq:task:{ids[0]}", "state").decode()
        return task_id

    control = io.BytesIO()
    worker = Worker(NodeSettings(address="unused"), "n1", "w1", control, store)
    worker.runner.functions._cache[FN] = f
    assert worker.step() is None           # claims [A, B] (16 queued: depth / 8), runs A
    assert len(worker.local) == 1
    assert worker.step() is None           # commits A, then runs B
    assert seen[ids[0]] == "RUNNING"       # A saw itself running
    assert seen[ids[1]] == "FINISHED"      # B started only after A was committed
    lines = control.getvalue().split(b"\n")
    messages = [protocol.decode_worker(line) for line in lines if line]
    order = [type(m).__name__ for m in messages]
    assert order == ["Held", "Started", "Settled", "Started", "Settled"]
    assert messages[2] == protocol.Settled((ids[0],))   # A settled before B started
    assert not worker.local
    assert client.hget(f"ftq:task:{ids[1]}", "state") == b"FINISHED"   # idle next: flushed


def test_a_prefetched_task_taken_over_while_frozen_is_not_started():
    client = fakeredis.FakeRedis()
    store = Store(client, "ftq")
    ids = [f"{i:032x}" for i in range(16)]
    for task_id in ids:
        submit(store, task_id)
    ran: list[str] = []
    worker = Worker(NodeSettings(address="unused"), "n1", "w1", io.BytesIO(), store)
    worker.runner.functions._cache[FN] = ran.append
    worker.step()                                   # claims [A, B], runs A
    # While this worker was frozen, B was swept and claimed by another worker.
    client.hset(f"ftq:task:{ids[1]}", mapping={"worker_id": "w2", "node_id": "n2"})
    assert worker.step() is None
    assert ran == [ids[0]]                          # B was not run a second time here
    assert client.hget(f"ftq:task:{ids[0]}", "state") == b"FINISHED"


def _double(x: str) -> str:
    return x * 2


def test_a_lost_reply_while_loading_the_function_does_not_fail_the_task(monkeypatch):
    """T7: the GET of a task's function ran but its reply was lost (the connection dropped):
    the worker reads it again instead of failing the task for good ("cannot load")."""
    client = fakeredis.FakeRedis()
    store = Store(client, "ftq")
    blob, digest = payload.pack_function(_double, "_double")
    store.store_function(digest, blob)
    bound = payload.execution_fields(digest, 0, None, False, 3)
    task_id = f"{7:032x}"
    args, _ = payload.pack_args(["ab"], {}, False, "_double", task_id, bound)
    store.submit([(task_id, "default", args, [], {
        "name": "_double", "func": "_double", "fn": digest, "job_id": "00000001",
        "parent_task_id": "", "max_retries": "3", "notify": "ftq:done:me"})])
    real_load = store.load_function
    calls = []

    def load_once_lost(fn_ref: str) -> bytes | None:
        calls.append(fn_ref)
        real_load(fn_ref)
        if len(calls) == 1:
            raise redis.ConnectionError("Connection closed by server.")
        return real_load(fn_ref)

    monkeypatch.setattr(store, "load_function", load_once_lost)
    worker = Worker(NodeSettings(address="unused"), "n1", "w1", io.BytesIO(), store)
    worker.step()
    worker.commits.flush()
    assert len(calls) == 2
    assert client.hget(f"ftq:task:{task_id}", "state") == b"FINISHED"
    ok, value = payload.outcome_to_result(task_id, {"state": "FINISHED"},
                                          client.get(f"ftq:result:{task_id}"))
    assert (ok, value) == (True, "abab")

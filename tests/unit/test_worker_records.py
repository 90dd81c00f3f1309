"""A node's records of its workers (`ftqueue list workers`): written when they change, and
whole again at the periodic refresh, so a record Redis lost without losing its epoch (a
failover to a replica that missed the last writes, a restart from an older snapshot) comes
back listed."""

from __future__ import annotations

import os
import subprocess

import storekit

from ftqueue import heartbeat
from ftqueue.heartbeat import NodeRecord
from ftqueue.settings import DEAD_WORKER_TTL_S, NodeSettings
from ftqueue.state import StateReader
from ftqueue.workerpool import WorkerHandle

env = storekit.env


def test_a_lost_worker_record_is_written_whole_again_and_listed(env, monkeypatch):
    store, _clock, client = env
    record = NodeRecord(store, "n1", NodeSettings(address="unused"), 3_600_000)
    record.register()
    now = [1000.0]
    monkeypatch.setattr(heartbeat.time, "monotonic", lambda: now[0])
    handle = WorkerHandle("w1", subprocess.Popen(["true"]), -1)
    handle.process.wait()
    handle.process.pid = os.getpid()   # a live pid, for its memory reading
    record.publish_workers([handle])
    listed = StateReader(store).list_workers()
    assert [(w["worker_id"], w["state"]) for w in listed] == [("w1", "ALIVE")]
    started = client.hget("ftq:worker:w1", "started_ms")

    # Redis lost the record and its index entry, its epoch kept (no re-registration).
    client.delete("ftq:worker:w1")
    client.zrem("ftq:workers", "w1")
    now[0] += heartbeat.WORKER_RECORD_MAX_AGE_S
    record.publish_workers([handle])
    listed = StateReader(store).list_workers()
    assert [(w["worker_id"], w["state"], w["node_id"]) for w in listed] == [("w1", "ALIVE",
                                                                              "n1")]
    assert client.hget("ftq:worker:w1", "started_ms") == started


def test_a_worker_record_expires_when_its_node_stops_writing_it(env, monkeypatch):
    """A node killed outright (SIGKILL, power loss) never marks its workers DEAD: their
    records, written ALIVE, must still go (an hour after the last write, as a dead
    worker's), and the workers index forgets them after that (sweep.lua)."""
    store, _clock, client = env
    record = NodeRecord(store, "n1", NodeSettings(address="unused"), 3_600_000)
    record.register()
    now = [1000.0]
    monkeypatch.setattr(heartbeat.time, "monotonic", lambda: now[0])
    handle = WorkerHandle("w1", subprocess.Popen(["true"]), -1)
    handle.process.wait()
    handle.process.pid = os.getpid()
    record.publish_workers([handle])
    assert 0 < client.ttl("ftq:worker:w1") <= DEAD_WORKER_TTL_S
    now[0] += heartbeat.WORKER_RECORD_MAX_AGE_S     # the periodic rewrite refreshes it
    client.expire("ftq:worker:w1", 10)
    record.publish_workers([handle])
    assert client.ttl("ftq:worker:w1") > DEAD_WORKER_TTL_S - 10

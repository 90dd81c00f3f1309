"""Schedules in the store with a fake clock: ticks fire once each, however many nodes race;
catchup after an outage; replace and remove. On fakeredis (with Lua) and the real server."""

from __future__ import annotations

import pytest
import storekit
from storekit import state

from ftqueue import remote_function, schedules
from ftqueue.client.records import Origin

env = storekit.env
ORIGIN = Origin("00000001", "ftq:done:me", 3600, 3600, 1)
ADD = remote_function("operator:add")


def create(store, name="tick", **kw):
    kw.setdefault("every_s", 60)
    return schedules.create(store, ORIGIN, name, ADD, (1, 2), {}, kw.get("cron"),
                            kw.get("every_s") if kw.get("cron") is None else None,
                            kw.get("queue"), kw.get("catchup", "latest"))


def queued(client, queue="default"):
    return sorted(i.decode() for i in client.lrange(f"ftq:queue:{queue}", 0, -1))


def test_every_tick_fires_once_however_many_nodes_race(env):
    store, clock, client = env
    t0 = clock.now_ms
    shown = create(store)
    assert shown["next_run"] == (t0 + 60_000) / 1000 and shown["every_s"] == 60.0
    assert schedules.fire_due(store) == []
    clock.advance(60)
    # Three nodes read the same due tick; only the first advances it.
    reads = [store.schedules_due(10) for _ in range(3)]
    record = store.schedule_records(["tick"])[0]
    answers = [schedules._fire_one(store, "tick", reads[i][1][0][1], record, reads[i][0])
               for i in range(3)]
    assert answers == ["fired", "raced", "raced"]
    assert queued(client) == [f"sched:tick:{t0 + 60_000}"]
    assert state(client, f"sched:tick:{t0 + 60_000}") == "PENDING_NODE_ASSIGNMENT"
    clock.advance(30)
    assert schedules.fire_due(store) == []
    clock.advance(30)
    assert schedules.fire_due(store) == [("tick", "fired")]
    assert schedules.fire_due(store) == []
    assert len(queued(client)) == 2
    (listed,) = schedules.list_schedules(store)
    assert listed["last_task_id"] == f"sched:tick:{t0 + 120_000}"
    assert listed["next_run"] == (t0 + 180_000) / 1000


@pytest.mark.parametrize("catchup, fired", [("latest", 1), ("none", 0)])
def test_after_an_outage_catchup_runs_the_latest_missed_tick_or_none(env, catchup, fired):
    store, clock, client = env
    t0 = clock.now_ms
    create(store, catchup=catchup)
    clock.advance(60 * 10 + 5)        # ten ticks missed
    schedules.fire_due(store)
    ids = queued(client)
    assert len(ids) == fired
    if fired:
        assert ids == [f"sched:tick:{t0 + 600_000}"]
    assert schedules.list_schedules(store)[0]["next_run"] == (t0 + 660_000) / 1000


def test_cron_ticks_in_utc_and_a_schedule_can_be_replaced_and_removed(env):
    store, clock, client = env
    clock.now_ms = 1_700_000_000_000         # 2023-11-14 22:13:20 UTC
    shown = create(store, cron="*/5 * * * *", queue="cron")
    assert shown["next_run"] == 1_700_000_100 and shown["cron"] == "*/5 * * * *"
    clock.now_ms = 1_700_000_100_000
    assert schedules.fire_due(store) == [("tick", "fired")]
    assert queued(client, "cron") == ["sched:tick:1700000100000"]
    create(store, every_s=3600, queue="cron")       # same name: replaced
    assert [s["every_s"] for s in schedules.list_schedules(store)] == [3600.0]
    assert schedules.remove(store, "tick") is True
    assert schedules.remove(store, "tick") is False
    assert schedules.list_schedules(store) == [] and client.exists("ftq:schedule:tick") == 0


def test_bad_schedules_are_refused_before_anything_is_written(env):
    store, _clock, client = env
    for kw in [{"every_s": 0}, {"every_s": None, "cron": "not cron"},
               {"every_s": 60, "cron": "* * * * *"}, {"catchup": "all"}]:
        with pytest.raises(ValueError):
            schedules.create(store, ORIGIN, "x", ADD, (), {}, kw.get("cron"),
                             kw.get("every_s"), None, kw.get("catchup", "latest"))
    with pytest.raises(ValueError, match="schedule name"):
        create(store, name="has space")
    with pytest.raises(ValueError, match="delay_s"):
        schedules.create(store, ORIGIN, "x", ADD.options(delay_s=5), (), {}, None, 60, None,
                         "latest")
    assert client.keys("ftq:schedule*") == []


def test_a_schedule_whose_arguments_fail_verification_does_not_stop_the_others(env,
                                                                               monkeypatch):
    store, clock, client = env
    monkeypatch.setenv("FTQUEUE_SECRET", "one key")
    create(store, name="good")
    create(store, name="forged")
    client.hset("ftq:schedule:forged", "args", b"rewritten by someone without the key")
    clock.advance(60)
    assert schedules.fire_due(store) == [("good", "fired")]
    assert queued(client) == [f"sched:good:{clock.now_ms}"]

"""The completion router in process, on fakeredis: notices wake getters, deadlines hold,
ids not ours are checked in Redis, outages are survived. Waits are bounded by deadlines;
nothing sleeps."""

from __future__ import annotations

import threading
import time

import fakeredis
import pytest
from conftest import wait_until

from ftqueue.client import completions
from ftqueue.client.completions import CompletionRouter
from ftqueue.store import Store

KEY = "ftq:done:me"


@pytest.fixture
def server():
    return fakeredis.FakeServer()


@pytest.fixture
def store(server):
    return Store(fakeredis.FakeRedis(server=server), "ftq")


class Calls:
    def __init__(self) -> None:
        self.checks: list[list[str]] = []
        self.answer: set[str] = set()
        self.reconnects = 0
        self.ticks = 0

    def check(self, ids):
        self.checks.append(sorted(ids))
        return self.answer & set(ids)


@pytest.fixture
def calls():
    return Calls()


@pytest.fixture
def router(store, calls):
    def reconnect():
        calls.reconnects += 1

    def tick():
        calls.ticks += 1

    return CompletionRouter(store, KEY, on_reconnect=reconnect, on_tick=tick)


def in_thread(fn):
    out: list[object] = []
    thread = threading.Thread(target=lambda: out.append(fn()), daemon=True)
    thread.start()
    return thread, out


def test_a_notice_wakes_the_getter_waiting_for_it(router, store, calls):
    router.expect(["a", "b"])
    thread, out = in_thread(lambda: router.wait(["a", "b"], 2, time.monotonic() + 30,
                                                calls.check))
    store.redis.rpush(KEY, b"a\nVvalue-a", b"b")
    assert router.listen_step(0.1)
    thread.join(10)
    assert out == [{"a", "b"}]
    assert router.inline(["a", "b"]) == {"a": b"Vvalue-a"}   # b's result was not inline
    assert calls.checks == []        # ours: notified, never checked


def test_wait_returns_at_its_deadline_with_what_is_ready(router, calls):
    router.expect(["a", "b"])
    router.deliver([("a", None)])
    started = time.monotonic()
    assert router.wait(["a", "b"], 2, started + 0.2, calls.check) == {"a"}
    assert time.monotonic() - started < 1.5
    assert calls.checks == [["b"]]   # the safety check asked Redis about what was missing


def test_ids_not_ours_are_checked_in_redis(router, calls):
    router.expect(["a"])
    calls.answer = {"x"}
    assert router.wait(["a", "x"], 1, time.monotonic() + 30, calls.check) == {"x"}
    assert calls.checks == [["x"]]


def test_wait_for_some_returns_as_soon_as_enough_are_ready(router, calls):
    router.expect(["a", "b", "c"])
    router.deliver([("b", None)])
    assert router.wait(["a", "b", "c"], 1, None, calls.check) == {"b"}


def test_the_listener_survives_an_outage_and_says_when_redis_is_back(router, store, server,
                                                                     calls):
    server.connected = False
    assert not router.listen_step(0.05)
    assert not router.listen_step(0.05)
    server.connected = True
    store.redis.rpush(KEY, b"a")
    assert router.listen_step(0.05)
    assert calls.reconnects == 1 and router.inline(["a"]) == {}
    assert router.unfinished() == []


def test_periodic_duties_run_only_while_someone_waits(router, store, calls):
    store.redis.rpush(KEY, b"a")
    assert router.listen_step(0.05)
    assert calls.ticks == 0
    router.expect(["b"])
    thread, out = in_thread(lambda: router.wait(["b"], 1, time.monotonic() + 30, calls.check))
    wait_until(router.has_waiters, 10, "the getter to register")
    assert router.listen_step(0.05)          # a wait with nothing arriving
    assert calls.ticks == 1
    store.redis.rpush(KEY, b"b")
    assert router.listen_step(0.05)
    thread.join(10)
    assert out == [{"b"}] and calls.ticks == 1


def test_on_block_is_told_around_a_blocking_wait(router, calls):
    told: list[bool] = []
    router.expect(["a"])
    router.wait(["a"], 1, time.monotonic() + 0.05, calls.check, told.append)
    assert told == [True, False]
    router.deliver([("a", None)])
    router.wait(["a"], 1, None, calls.check, told.append)
    assert told == [True, False]     # ready at once: no block reported


def test_memory_of_finished_ids_is_bounded(router, monkeypatch):
    monkeypatch.setattr(completions, "DONE_MEMORY", 3)
    router.expect(["a", "b", "c", "d"])
    router.deliver([(i, b"V") for i in "abcd"])
    assert router.inline("abcd") == {i: b"V" for i in "bcd"}
    assert router.unfinished() == []          # a forgotten: found final by a check instead


def test_forget_and_unfinished(router):
    router.expect(["a", "b"])
    router.deliver([("a", b"V")])
    assert router.unfinished() == ["b"]
    router.forget(["a", "b"])
    assert router.inline(["a"]) == {} and router.unfinished() == []


def test_an_empty_standing_watch_runs_no_duties(router, calls):
    """The futures' resolver keeps a watch open for the life of the process; while it holds
    no id, nobody waits, so an idle process (a worker, a web app) sweeps nothing."""
    watch = router.open_watch()
    assert router.listen_step(0.05) and calls.ticks == 0
    router.add_to_watch(watch, ["x"])
    assert router.listen_step(0.05) and calls.ticks == 1
    router.deliver([("x", None)])
    assert not watch.pending
    assert router.listen_step(0.05) and calls.ticks == 1

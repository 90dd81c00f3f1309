"""keys.py and the Lua scripts cannot drift: no key name is written by hand in lua/, the
generated `k_<name>` functions build what `Keys` builds, every key a run touches is a `Keys`
key, every namespace-wide key a script touches is declared in its KEYS, and
docs/redis-layout.md lists every key."""

from __future__ import annotations

import os
import re
import threading
from collections.abc import Callable, Iterator
from typing import Any

import pytest
import redis
import storekit
from storekit import FakeClock, claim, serve, submit

from ftqueue.keys import PER_ID, SINGLE, Keys
from ftqueue.store import Store
from ftqueue.store.scripts import load_scripts, prelude

env = storekit.env

LUA_DIR = os.path.join(os.path.dirname(__file__), "..", "..", "ftqueue", "store", "lua")
DOC = os.path.join(os.path.dirname(__file__), "..", "..", "docs", "redis-layout.md")
KEYS = Keys("ftq")


def lua_files() -> list[str]:
    return sorted(name for name in os.listdir(LUA_DIR) if name.endswith(".lua"))


def lua_code(name: str) -> str:
    """The file without its comments (no script has '--' inside a string)."""
    with open(os.path.join(LUA_DIR, name)) as f:
        return "\n".join(line.split("--", 1)[0] for line in f)


@pytest.mark.parametrize("name", lua_files())
def test_no_key_name_is_written_by_hand_in_lua(name):
    code = lua_code(name)
    literals = re.findall(r"'([^'\n]*)'|\"([^\"\n]*)\"", code)
    segments = [*SINGLE.values(), *PER_ID.values()]
    templates = [text for pair in literals for text in pair
                 if any(re.search(rf"(^|:){re.escape(s)}(:|$)", text) and ":" in text
                        for s in segments)]
    assert templates == [], "key templates in Lua: build keys with k_<name>(id)"
    assert not re.search(r"\bP\s*\.\.", code), "the namespace prefix is for k_<name> only"
    assert not re.search(r"KEYS\[\d", code), "fixed keys are read by name (K.<name>)"


@pytest.mark.parametrize("name", [n[:-4] for n in lua_files() if n != "lib.lua"])
def test_every_script_header_is_a_contract(name):
    with open(os.path.join(LUA_DIR, name + ".lua")) as f:
        header = [line for line in f.read().splitlines() if line.startswith("--")]
    text = "\n".join(header)
    assert "-- KEYS[1] " in text and "-- ARGV[1] namespace" in text and "Returns:" in text
    assert load_scripts()[name].fixed_keys, "a script with no fixed KEYS"


@pytest.mark.parametrize("keys", [KEYS, Keys("ftq", hash_tag=True)], ids=["plain", "tagged"])
def test_generated_key_functions_build_what_keys_builds(env, keys):
    _store, _clock, client = env
    names = list(PER_ID)
    body = "return {" + ", ".join(f"k_{n}(ARGV[2])" for n in names) + "}"
    built = client.eval(prelude(()) + "\n" + body, 0, keys.prefix, "some-id")
    assert [b.decode() for b in built] == [getattr(keys, n)("some-id") for n in names]


def test_a_cluster_namespace_is_one_hash_slot_and_a_plain_one_is_unchanged():
    tagged = Keys("ftq", hash_tag=True)
    assert KEYS.task("t1") == "ftq:task:t1" and KEYS.stats == "ftq:stats"
    assert tagged.task("t1") == "{ftq}:task:t1" and tagged.log("t1", 2) == "{ftq}:log:t1:2"
    every = [getattr(tagged, n) for n in SINGLE] + [getattr(tagged, n)("a{b}:c") for n in PER_ID]
    # Redis hashes the text between the first '{' and the next '}': the namespace, always.
    assert {k[k.index("{") + 1:k.index("}")] for k in every} == {"ftq"}
    for name in SINGLE:
        assert tagged.kind(getattr(tagged, name)) == name
    for name in PER_ID:
        assert tagged.kind(getattr(tagged, name)("x:y")) == name
    assert tagged.kind(tagged.log("t1", 2)) == "log"
    assert tagged.kind("ftq:task:1") is None and KEYS.kind("{ftq}:task:1") is None


def test_keys_kind_names_each_key_builder():
    for name in SINGLE:
        assert KEYS.kind(getattr(KEYS, name)) == name
    for name in PER_ID:
        assert KEYS.kind(getattr(KEYS, name)("x:y")) == name
    assert KEYS.kind(KEYS.log("t1", 2)) == "log"
    assert KEYS.kind("ftq:stats:minute:5") == "stats_minute"
    assert KEYS.kind("ftq:nope") is None and KEYS.kind("other:task:1") is None


def test_layout_doc_lists_every_key():
    with open(DOC) as f:
        doc = f.read()
    for segment in SINGLE.values():
        assert f"`ftq:{segment}`" in doc, segment
    for segment in PER_ID.values():
        assert f"`ftq:{segment}:<" in doc, segment


def exercise(store: Store, clock: FakeClock, client: Any) -> None:
    """Every script, through most of its branches, including corrupt records."""
    submit(store, "a1", max_retries=1)
    submit(store, "b1", deps=["a1"], parent="a1")
    submit(store, "c1", parent="a1")
    store.watch("ftq:done:other", ["a1", "b1", "zz"])
    running, *_ = claim(store, n=2)
    store.renew("n1", storekit.LEASE_MS, running=[running.task_id], held=[running.task_id])
    store.commit([(running.task_id, running.fence, "err", b"E", True, "boom")],
                 worker_id="w1")
    again = claim(store)[0]
    store.commit([(again.task_id, again.fence, "ok", b"V", False, "")], "b1",
                 worker_id="w1", next_fence="1")
    store.worker_lost("n1", "w1", "", "WORKER_DIED", "gone", True)
    store.cancel("a1", force=False, recursive=True)
    client.delete("ftq:result:a1")
    store.reconstruct("a1")
    claim(store, worker="w2")
    client.set("ftq:queue:broken", "not a list")
    submit(store, "d1", queue="broken")
    client.set("ftq:task:e1", "not a hash")
    client.zadd("ftq:leases", {"e1": 0})
    serve(store, clock, storekit.LEASE_MS / 1000 + 1)
    store.sweep(storekit.LEASE_MS)
    store.served_now_ms()
    store.node_heartbeat_age_ms("n1")


def test_every_key_left_behind_is_a_keys_key(env):
    store, clock, client = env
    exercise(store, clock, client)
    unknown = [k for k in client.scan_iter() if KEYS.kind(k.decode()) is None]
    assert unknown == []


# -- every key touched, seen by the real server's MONITOR ---------------------------------------

_ARG = re.compile(r'"((?:[^"\\]|\\.)*)"')
_ESCAPE = re.compile(r"\\x([0-9a-fA-F]{2})|\\(.)")


def _unescape(text: str) -> str:
    named = {"n": "\n", "r": "\r", "t": "\t", "a": "\a", "b": "\b"}
    return _ESCAPE.sub(lambda m: chr(int(m[1], 16)) if m[1] else named.get(m[2], m[2]), text)


class Monitor:
    """The commands Redis runs, as (source, args), 'lua' for those a script runs."""

    END = "ftq-monitor-end"

    def __init__(self, address: str) -> None:
        self.client = redis.Redis.from_url(address)
        self.monitor = self.client.monitor().__enter__()
        self.lines: list[tuple[str, list[str]]] = []
        self.thread = threading.Thread(target=self._read, daemon=True)
        self.thread.start()

    def _read(self) -> None:
        while True:
            raw = self.monitor.connection.read_response()
            line = raw.decode(errors="replace") if isinstance(raw, bytes) else str(raw)
            source = line.split("[", 1)[1].split("]", 1)[0].split(" ", 1)[1]
            args = [_unescape(a) for a in _ARG.findall(line.split("] ", 1)[1])]
            args[0] = args[0].lower()
            self.lines.append(("lua" if source == "lua" else "client", args))
            if args[:2] == ["echo", self.END]:
                return

    def stop(self, client: Any) -> None:
        client.echo(self.END)
        self.thread.join(10)
        self.monitor.__exit__()
        self.client.close()


@pytest.fixture
def monitored(redis_server: Any) -> Iterator[tuple[Store, FakeClock, Any, Callable[[], Any]]]:
    client = redis.Redis.from_url(redis_server.address)
    client.flushall()
    monitor = Monitor(redis_server.address)
    store = Store(client, "ftq", clock_ms=FakeClock())

    def stop() -> list[tuple[str, list[str]]]:
        monitor.stop(client)
        return monitor.lines

    try:
        yield store, store.clock_ms, client, stop  # type: ignore[misc]
    finally:
        client.close()


def calls(lines: list[tuple[str, list[str]]]) -> Iterator[tuple[list[str], list[list[str]]]]:
    """(declared KEYS, commands run by the script) per EVALSHA, in order. Redis 6 shows an
    EVALSHA before the commands its script runs, Redis 7 after them."""
    first = {source: i for i, (source, args) in reversed(list(enumerate(lines)))
             if source == "lua" or args[0] == "evalsha"}
    lua_first = first.get("lua", 0) < first.get("client", 0)
    pending: list[list[str]] = []
    declared: list[str] | None = None
    for source, args in lines:
        if source == "client" and args[0] == "evalsha":
            if lua_first:
                yield args[3:3 + int(args[2])], pending
            elif declared is not None:
                yield declared, pending
            declared, pending = args[3:3 + int(args[2])], []
        elif source == "lua":
            pending.append(args)
    if declared is not None and not lua_first:
        yield declared, pending


def test_every_key_a_script_touches_is_a_keys_key_and_declared_if_fixed(monitored):
    store, clock, client, stop = monitored
    exercise(store, clock, client)
    lines = stop()
    checked = 0
    for declared, commands in calls(lines):
        for command in commands:
            if command[0].lower() == "time":
                continue
            for key in client.command_getkeys(*command):
                key = key.decode() if isinstance(key, bytes) else key
                kind = KEYS.kind(key)
                assert kind is not None, (key, command)
                if kind in SINGLE:
                    assert key in declared, (key, command, declared)
                checked += 1
    assert checked > 100, checked


# lib.lua helpers that may end a task (finish needs leases, stats and failed_index): finish
# itself, and whatever queues a task (a task hard-pinned to a node that is gone fails there).
MAY_FINISH = ("finish", "retry", "enqueue", "make_ready", "promote", "wake_limited",
              "release_limit", "release_lease", "requeue_unstarted", "fail_attempt", "unpin",
              "release_dependents", "create")


@pytest.mark.parametrize("name", [n for n in lua_files() if n != "lib.lua"])
def test_every_script_that_may_end_a_task_declares_what_finish_needs(name):
    """claim.lua failed a task hard-pinned to a dead node without the failed index declared:
    the script errored halfway, leaving the task FAILED with no one told."""
    code = lua_code(name)
    if not any(re.search(rf"\b{f}\(", code) for f in MAY_FINISH):
        return
    declared = {k.name for k in load_scripts()[name[:-4]].fixed_keys}
    assert {"leases", "stats", "failed_index"} <= declared, (name, declared)

"""Time and flow control in the store, with a fake clock: strict queue priority, queue depths,
retry backoff, delayed tasks. On fakeredis (with Lua) and on the real server."""

from __future__ import annotations

import storekit
from storekit import claim, state, submit

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

"""The Redis work of a plain task, counted (docs/design.md, "Per-task Redis work"): a guard,
so a change that adds a command to the hot path says so here and in that table."""

from __future__ import annotations

import redis
from storekit import LEASE_MS

from ftqueue.store import Store

N = 50


def commands(client: redis.Redis) -> dict[str, int]:
    return {name.removeprefix("cmdstat_"): int(stat["calls"])
            for name, stat in client.info("commandstats").items()}


def test_a_plain_task_costs_the_commands_of_the_table(redis_server):
    client = redis.Redis.from_url(redis_server.address)
    client.flushall()
    store = Store(client, "ftq")
    fields = {"name": "f", "func": "f", "fn": "d", "job_id": "1", "max_retries": "3",
              "notify": "ftq:done:me", "result_ttl_s": "100", "lineage_ttl_s": "200"}
    store.renew("n1", LEASE_MS)
    store.submit([(f"t{i}", "default", b"args", [], fields) for i in range(N)])
    store.claim("n1", "w1", ["default"], 1, 8, LEASE_MS)      # scripts loaded, one held
    client.config_resetstat()
    held = store.claim("n1", "w2", ["default"], 1, 8, LEASE_MS)
    for i in range(N - 2):
        (task,) = held
        held = store.claim("n1", "w2", ["default"], 1, 8, LEASE_MS)
        store.commit([(task.task_id, task.fence, "ok", b"V", False, "")])
    seen = commands(client)
    seen.pop("config", None)
    commits = N - 2
    # A claim and a commit per task, one script call each (no prefetch): no EXPIRE of the
    # result (stored with its retention), one of the task and one of its arguments (and one
    # of the notification list, when created); no LLEN after taking (what is left is known)
    # and no LTRIM of a bell that is short.
    assert seen["expire"] <= 2 * commits + 2, seen
    assert seen["llen"] <= 2 * (commits + 1) and "ltrim" not in seen, seen
    assert sum(seen.values()) <= 31 * commits, seen

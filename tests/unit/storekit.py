"""Helpers for the store's tests: a fake clock, the same store on fakeredis (with Lua) and on
the real server (the reference for Lua), and short ways to submit, claim and read."""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import fakeredis
import pytest
import redis

from ftqueue.store import Store

LEASE_MS = 30_000
# Steps in which `serve` lets time pass: below the served clock's gap cap (1 s).
SERVE_STEP_S = 0.5
BYSTANDER = "bystander"


class FakeClock:
    def __init__(self) -> None:
        self.now_ms = 1_000_000

    def __call__(self) -> int:
        return self.now_ms

    def advance(self, seconds: float) -> None:
        self.now_ms += int(seconds * 1000)


@pytest.fixture(params=["fakeredis", "redis-server"])
def env(request: pytest.FixtureRequest) -> Iterator[tuple[Store, FakeClock, Any]]:
    if request.param == "fakeredis":
        client = fakeredis.FakeRedis()
    else:
        server = request.getfixturevalue("redis_server")
        client = redis.Redis.from_url(server.address)
        client.flushall()
    clock = FakeClock()
    yield Store(client, "ftq", clock_ms=clock), clock, client
    client.close()


def serve(store: Store, clock: FakeClock, seconds: float, node: str = BYSTANDER) -> None:
    """Let `seconds` pass while Redis serves another node: its heartbeats advance the
    served clock (time with nobody served counts only up to the gap cap)."""
    left = seconds
    while left > 0:
        step = min(SERVE_STEP_S, left)
        clock.advance(step)
        store.renew(node, LEASE_MS)
        left -= step


def submit(store: Store, task_id: str, deps: tuple[str, ...] | list[str] = (),
           max_retries: int = 3, queue: str = "default", parent: str = "") -> int:
    fields = {"name": "f", "func": "f", "fn": "digest", "job_id": "00000001",
              "parent_task_id": parent, "max_retries": str(max_retries), "notify": "ftq:done:me"}
    return store.submit([(task_id, queue, b"args", list(deps), fields)])


def claim(store: Store, n: int = 1, worker: str = "w1", node: str = "n1",
          queues: tuple[str, ...] = ("default",)) -> list[Any]:
    return store.claim(node, worker, list(queues), n, 8, LEASE_MS)


def state(client: Any, task_id: str) -> str:
    return str(client.hget(f"ftq:task:{task_id}", "state").decode())


def field(client: Any, task_id: str, name: str) -> str | None:
    value = client.hget(f"ftq:task:{task_id}", name)
    return value.decode() if value is not None else None


def attempts(client: Any, task_id: str) -> list[dict[str, Any]]:
    return [json.loads(a) for a in client.lrange(f"ftq:attempts:{task_id}", 0, -1)]

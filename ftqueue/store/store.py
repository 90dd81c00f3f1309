"""Typed wrappers around the Lua scripts in lua/: one atomic step per task transition."""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from importlib import resources
from typing import Any, Callable, Iterable, Sequence

import redis

from ..keys import Keys


def wall_clock_ms() -> int:
    return int(time.time() * 1000)


REDIS_CLOCK = None   # scripts read Redis's own TIME

def _load_scripts() -> dict[str, str]:
    lua = resources.files(__package__).joinpath("lua")
    lib = lua.joinpath("lib.lua").read_text()
    return {
        path.name[:-4]: lib + "\n" + path.read_text()
        for path in lua.iterdir()
        if path.name.endswith(".lua") and path.name != "lib.lua"
    }


_SCRIPTS = _load_scripts()


@dataclass(frozen=True)
class Claimed:
    """One task as a worker receives it from a claim."""

    task_id: str
    fence: str
    fn: str
    func_name: str
    attempt: int
    job_id: str
    max_calls: int
    args_blob: bytes
    timeout_s: float | None = None
    retry_timeout: bool = False


def _s(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


class Store:
    """Every read and write ftqueue makes to Redis goes through here."""

    def __init__(self, client: redis.Redis, namespace: str = "ftq",
                 clock_ms: Callable[[], int] | None = REDIS_CLOCK) -> None:
        self.redis = client
        self.keys = Keys(namespace)
        self._script_clock = clock_ms
        self.clock_ms = clock_ms or wall_clock_ms   # for reads that show ages
        self._sha: dict[str, str] = {}

    # -- scripts ---------------------------------------------------------------------------

    def _run(self, name: str, *args: Any) -> Any:
        argv = (self.keys.prefix, self._script_clock() if self._script_clock else "") + args
        sha = self._sha.get(name)
        if sha is not None:
            try:
                return self.redis.evalsha(sha, 0, *argv)
            except redis.exceptions.NoScriptError:
                pass  # Redis restarted or flushed its script cache
        self._sha[name] = self.redis.script_load(_SCRIPTS[name])
        return self.redis.evalsha(self._sha[name], 0, *argv)

    def submit(self, tasks: Sequence[tuple[str, str, bytes, Sequence[str], dict[str, str]]]) -> int:
        """tasks: (task_id, queue, args_blob, dep_ids, fields). Idempotent per task id."""
        argv: list[Any] = [len(tasks)]
        for task_id, queue, blob, deps, fields in tasks:
            argv += [task_id, queue, blob, ",".join(deps), json.dumps(fields)]
        return int(self._run("submit", *argv))

    def claim(self, node_id: str, worker_id: str, queues: Sequence[str], max_n: int,
              batch_divisor: int, lease_timeout_ms: int) -> list[Claimed]:
        rows = self._run("claim", lease_timeout_ms, node_id, worker_id,
                         max_n, batch_divisor, len(queues), *queues)
        return [Claimed(_s(r[0]), _s(r[1]), _s(r[2]), _s(r[3]), int(r[4]), _s(r[5]),
                        int(r[6] or 0), r[7], float(r[8]) if r[8] else None, r[9] == b"1")
                for r in rows]

    def commit(self, outcomes: Sequence[tuple[str, str, str, bytes, bool, str]],
               next_task_id: str = "") -> list[str]:
        """outcomes: (task_id, fence, 'ok'|'err'|'cancelled', blob, retryable, message)."""
        argv: list[Any] = [next_task_id, len(outcomes)]
        for task_id, fence, outcome, blob, retryable, message in outcomes:
            argv += [task_id, fence, outcome, blob, "1" if retryable else "0", message]
        return [_s(r) for r in self._run("commit", *argv)]

    def renew(self, node_id: str, lease_timeout_ms: int, running: Sequence[str] = (),
              held: Sequence[str] = ()) -> int:
        """Heartbeat; extend the leases of the tasks the node's workers hold; mark the tasks
        they run as RUNNING."""
        return int(self._run("renew", node_id, lease_timeout_ms, ",".join(running), *held))

    def sweep(self, lease_timeout_ms: int, limit: int = 100,
              index_ttl_ms: int = 7 * 24 * 3600 * 1000) -> tuple[list[tuple[str, str]], list[str]]:
        swept, dead = self._run("sweep", lease_timeout_ms, limit, index_ttl_ms)
        pairs = [(_s(swept[i]), _s(swept[i + 1])) for i in range(0, len(swept), 2)]
        return pairs, [_s(d) for d in dead]

    def worker_lost(self, node_id: str, worker_id: str, running_task_id: str, error_type: str,
                    message: str, charge: bool) -> list[tuple[str, str]]:
        """The worker is gone: the task it was running (if any) fails, the rest requeue."""
        out = self._run("worker_lost", node_id, worker_id, running_task_id, error_type, message,
                        "1" if charge else "0")
        return [(_s(out[i]), _s(out[i + 1])) for i in range(0, len(out), 2)]

    def reconstruct(self, task_id: str) -> str:
        """Re-run the task behind a lost result (see reconstruct.lua for the answers)."""
        return _s(self._run("reconstruct", task_id))

    def ensure_epoch(self) -> str:
        """This Redis's data generation: set once, so a Redis that lost everything (restarted
        without persistence, failed over to an empty replica) shows a new one."""
        import uuid

        self.redis.set(self.keys.epoch, uuid.uuid4().hex, nx=True)
        return _s(self.redis.get(self.keys.epoch))

    def cancel(self, task_id: str, force: bool, recursive: bool) -> list[tuple[str, str]]:
        out = self._run("cancel", task_id, "1" if force else "0", "1" if recursive else "0")
        return [(_s(out[i]), _s(out[i + 1])) for i in range(0, len(out), 2)]

    def pop_cancel_requests(self, node_id: str, max_n: int = 100) -> list[tuple[str, bool]]:
        """(task id, forced) for each cancel relayed to this node."""
        items = self.redis.lpop(self.keys.cancel(node_id), max_n) or []
        out = []
        for item in items:
            task_id, _, mode = _s(item).partition(" ")
            out.append((task_id, mode == "force"))
        return out

    def watch(self, notify_key: str, object_ids: Sequence[str]) -> list[str]:
        if not object_ids:
            return []
        return [_s(r) for r in self._run("watch", notify_key, *object_ids)]

    # -- plain reads and writes --------------------------------------------------------------

    def put(self, object_id: str, blob: bytes, ttl_s: int = 0) -> None:
        self.redis.set(self.keys.result(object_id), blob, ex=ttl_s or None)

    def store_function(self, digest: str, blob: bytes) -> None:
        self.redis.set(self.keys.function(digest), blob, nx=True)

    def load_function(self, digest: str) -> bytes | None:
        return self.redis.get(self.keys.function(digest))

    def task_fields(self, task_ids: Iterable[str], *fields: str) -> list[list[str | None]]:
        pipe = self.redis.pipeline(transaction=False)
        for task_id in task_ids:
            pipe.hmget(self.keys.task(task_id), *fields)
        return [[None if v is None else _s(v) for v in row] for row in pipe.execute()]

    def outcomes(self, object_ids: Sequence[str]) -> list[tuple[dict[str, str], bytes | None]]:
        """(task record, result blob) per id; the record is empty for a put object."""
        pipe = self.redis.pipeline(transaction=False)
        for object_id in object_ids:
            pipe.hmget(self.keys.task(object_id), "state", "error_type", "error_message", "func",
                       "node_id", "worker_id")
            pipe.get(self.keys.result(object_id))
        raw = pipe.execute()
        out = []
        for i in range(0, len(raw), 2):
            state, error_type, message, func, node_id, worker_id = raw[i]
            record = {}
            if state is not None:
                record = {"state": _s(state), "error_type": _s(error_type or b""),
                          "error_message": _s(message or b""), "func": _s(func or b""),
                          "node_id": _s(node_id or b""), "worker_id": _s(worker_id or b"")}
            out.append((record, raw[i + 1]))
        return out

    def pop_notifications(self, notify_key: str, timeout_s: float,
                          max_n: int = 1000) -> list[tuple[str, bytes | None]]:
        """(task id, inline result blob or None) for each completion notice: what is there
        already, else the first to arrive within timeout_s (handed over at once, not held
        back for a second round trip to drain more)."""
        items = self.redis.lpop(notify_key, max_n) or []
        if not items:
            first = self.redis.blpop([notify_key], timeout=timeout_s)
            items = [first[1]] if first is not None else []
        out = []
        for item in items:
            task_id, sep, blob = item.partition(b"\n")
            out.append((task_id.decode(), blob if sep else None))
        return out

    def wait_for_bell(self, queues: Sequence[str], timeout_s: float) -> None:
        self.redis.blpop([self.keys.bell(q) for q in queues], timeout=timeout_s)

    def next_job_id(self) -> str:
        return f"{int(self.redis.incr(self.keys.job_counter)):08x}"

    def incr_stat(self, name: str, amount: int = 1) -> None:
        self.redis.hincrby(self.keys.stats, name, amount)

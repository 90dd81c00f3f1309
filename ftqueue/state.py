"""Read-only views of the cluster, as Ray's state API: one record per task attempt."""

from __future__ import annotations

import heapq
import itertools
import json
import re
from dataclasses import dataclass
from typing import Any, Callable, Iterable, Sequence

from . import resources
from .keys import DEFAULT_SHAPE, Keys, queue_slot
from .spec import TERMINAL_STATES, TaskState
from .store import Store, as_text

LEASED_STATES = frozenset({TaskState.SUBMITTED_TO_WORKER.value, TaskState.RUNNING.value})
TASK_FIELDS = ("task_id", "attempt_number", "name", "state", "job_id", "actor_id", "type",
               "func_or_class_name", "parent_task_id", "node_id", "worker_id", "error_type")
DETAIL_FIELDS = TASK_FIELDS + ("error_message", "start_time", "end_time", "creation_time",
                               "queue", "required_resources")
DEFAULT_LIMIT = 100
SCAN_CHUNK = 500
_STATES = {s.value for s in TaskState}
_HASH_FIELDS = ("name", "func", "state", "job_id", "parent_task_id", "node_id", "worker_id",
                "error_type", "error_message", "start_ms", "end_ms", "created_ms", "queue",
                "attempt")


# A dashboard page of a filter no index answers scans at most this many tasks, then hands
# back a cursor: its server time stays bounded on any history.
PAGE_SCAN_MAX = 5000
THROUGHPUT_MINUTES = 60
# Task ids: 40 hex chars, or the 1-128 chars of an idempotent submit's `task_id=`.
TASK_ID = re.compile(r"[A-Za-z0-9._:-]{1,128}")


class FilterError(ValueError):
    """A filter names an unknown field, operator or state."""


@dataclass(frozen=True)
class TaskPage:
    """One page of `list_tasks` rows, newest tasks first. `cursor` continues after the
    last task examined ('' at the end); `scanned` tasks were read for it."""

    rows: list[dict[str, Any]]
    cursor: str
    scanned: int
    indexed: bool


def parse_filter(text: str) -> tuple[str, str, str]:
    """`key=value` or `key!=value`, as the CLI's -f takes it."""
    for op in ("!=", "="):
        key, sep, value = text.partition(op)
        if sep:
            return _check_filter(key.strip(), op, value.strip())
    raise FilterError(f"invalid filter {text!r}: expected KEY=VALUE or KEY!=VALUE")


def _check_filter(key: str, op: str, value: Any) -> tuple[str, str, str]:
    if key not in DETAIL_FIELDS:
        raise FilterError(f"invalid filter key {key!r}: choose from {', '.join(DETAIL_FIELDS)}")
    if op not in ("=", "!="):
        raise FilterError(f"invalid filter operator {op!r}: use = or !=")
    value = str(value)
    if key == "state" and value.upper() not in _STATES:
        raise FilterError(f"unknown state {value!r}: choose from {', '.join(sorted(_STATES))}")
    if key == "state":
        value = value.upper()
    return key, op, value


def _units(text: str) -> dict[str, int]:
    try:
        return {str(k): int(v) for k, v in json.loads(text or "{}").items()}
    except (ValueError, AttributeError, TypeError):
        return {}


def _ms_to_s(value: Any) -> float | None:
    return int(value) / 1000 if value not in (None, "") else None


def _rows_for(task_id: str, record: dict[str, str], past: Iterable[str],
              detail: bool) -> list[dict[str, Any]]:
    base = {
        "task_id": task_id, "name": record.get("name", ""), "job_id": record.get("job_id", ""),
        "actor_id": "", "type": "NORMAL_TASK", "func_or_class_name": record.get("func", ""),
        "parent_task_id": record.get("parent_task_id", ""),
    }
    extra = {"creation_time": _ms_to_s(record.get("created_ms")), "queue": record.get("queue", ""),
             "required_resources": resources.as_amounts(resources.parse_shape(
                 record.get("shape") or DEFAULT_SHAPE))}
    rows = []
    for raw in past:
        a = json.loads(raw)
        row = dict(base, attempt_number=a["attempt_number"], state=a["state"],
                   node_id=a["node_id"], worker_id=a["worker_id"], error_type=a["error_type"])
        if detail:
            row.update(extra, error_message=a["error_message"], start_time=_ms_to_s(a["start_ms"]),
                       end_time=_ms_to_s(a["end_ms"]))
        rows.append(row)
    current = dict(base, attempt_number=int(record.get("attempt", 0)), state=record["state"],
                   node_id=record.get("node_id", ""), worker_id=record.get("worker_id", ""),
                   error_type=record.get("error_type", ""))
    if detail:
        current.update(extra, error_message=record.get("error_message", ""),
                       start_time=_ms_to_s(record.get("start_ms")),
                       end_time=_ms_to_s(record.get("end_ms")))
    rows.append(current)
    return rows


def _matches(row: dict[str, Any], filters: Sequence[tuple[str, str, str]]) -> bool:
    for key, op, value in filters:
        equal = str(row.get(key, "")) == value
        if equal != (op == "="):
            return False
    return True


class _Newest:
    """One listing index (task_index or failed_index) of every partition, read newest first:
    by score descending, then id descending, the order ZREVRANGE keeps within one, so that a
    cursor means the same in each. `starts`: where the reading begins in each partition."""

    def __init__(self, redis: Any, indexes: list[str], starts: list[int],
                 scored: bool) -> None:
        self.redis = redis
        self.indexes = indexes
        self.starts = starts
        # One partition needs no scores to be merged: read without them, as before partitions.
        self.scored = scored or len(indexes) > 1
        self.buffers: list[list[tuple[str, int]]] = [[] for _ in indexes]
        self.ended = [False] * len(indexes)

    def take(self, n: int) -> list[tuple[str, int]]:
        """The next `n` (id, score), fewer at the end. Each partition has `n` read ahead, in
        one round trip for all, which is enough: a task past a partition's n-th has `n`
        newer ones before it, so it is not among the newest `n`."""
        self._fill(n)
        if len(self.buffers) == 1:
            taken, self.buffers[0] = self.buffers[0][:n], self.buffers[0][n:]
            return taken
        tagged = ([(score, member, k) for member, score in buffer]
                  for k, buffer in enumerate(self.buffers))
        newest = list(itertools.islice(heapq.merge(*tagged, reverse=True), n))
        for k in range(len(self.buffers)):
            used = sum(1 for _, _, part in newest if part == k)
            self.buffers[k] = self.buffers[k][used:]
        return [(member, score) for score, member, _ in newest]

    def _fill(self, n: int) -> None:
        want = [(k, n - len(b)) for k, b in enumerate(self.buffers)
                if not self.ended[k] and len(b) < n]
        if not want:
            return
        pipe = self.redis.pipeline(transaction=False)
        for k, more in want:
            pipe.zrevrange(self.indexes[k], self.starts[k], self.starts[k] + more - 1,
                           withscores=self.scored)
        for (k, more), got in zip(want, pipe.execute()):
            rows = ([(as_text(m), int(score)) for m, score in got] if self.scored
                    else [(as_text(m), 0) for m in got])
            self.starts[k] += len(rows)
            self.buffers[k] += rows
            self.ended[k] = len(rows) < more


class StateReader:
    def __init__(self, store: Store) -> None:
        self.store = store

    @property
    def parts(self) -> list[Keys]:
        """The keys of each partition (one: the namespace's own)."""
        return self.store.parts

    @property
    def home(self) -> Keys:
        """Where the nodes' listing and the workers' records live: the first partition's keys
        (heartbeat.py)."""
        return self.store.parts[0]

    def _each(self, read: Callable[[Any, Keys], Any]) -> list[Any]:
        """`read(pipe, keys)` for every partition, in one round trip: the replies in order."""
        pipe = self.store.redis.pipeline(transaction=False)
        for keys in self.parts:
            read(pipe, keys)
        return list(pipe.execute())

    def task_rows(self, task_ids: Sequence[str], detail: bool = False) -> list[dict[str, Any]]:
        pipe = self.store.redis.pipeline(transaction=False)
        for task_id in task_ids:
            keys = self.store.keys_for(task_id)
            pipe.hgetall(keys.task(task_id))
            pipe.lrange(keys.attempts(task_id), 0, -1)
        raw = pipe.execute()
        rows: list[dict[str, Any]] = []
        for i, task_id in enumerate(task_ids):
            record = {k.decode(): v.decode() for k, v in raw[2 * i].items()}
            # A mirror stands for a task of another partition: never a task of its own.
            if record.get("state") and not record.get("mirror"):
                rows += _rows_for(task_id, record, raw[2 * i + 1], detail)
        return rows

    def _index(self, checked: Sequence[tuple[str, str, str]]) -> list[str]:
        """The listing index of each partition that answers `checked` best. Failed tasks have
        an index of their own: "what failed?" stays fast on a big history."""
        if ("state", "=", "FAILED") in checked:
            return [keys.failed_index for keys in self.parts]
        return [keys.task_index for keys in self.parts]

    def list_tasks(self, filters: Sequence[tuple[str, str, Any]] = (), detail: bool = False,
                   limit: int = DEFAULT_LIMIT) -> list[dict[str, Any]]:
        checked = [_check_filter(*f) for f in filters]
        ids = [v for k, op, v in checked if k == "task_id" and op == "="]
        if ids:
            rows = self.task_rows(list(dict.fromkeys(ids)), detail=True)
            return [_shape(r, detail) for r in rows if _matches(r, checked)][:limit]
        indexes = self._index(checked)
        newest = _Newest(self.store.redis, indexes, [0] * len(indexes), scored=False)
        rows = []
        while len(rows) < limit:
            chunk = newest.take(SCAN_CHUNK)
            if not chunk:
                break
            for row in self.task_rows([member for member, _ in chunk], detail=True):
                if _matches(row, checked):
                    rows.append(_shape(row, detail))
        return rows[:limit]

    def page_tasks(self, filters: Sequence[tuple[str, str, Any]] = (), limit: int = 50,
                   cursor: str = "", scan_max: int = PAGE_SCAN_MAX) -> TaskPage:
        """A page of rows after `cursor`. The default view and `state=FAILED` read their
        index in order and stop at `limit`; other filters stop after `scan_max` tasks."""
        checked = [_check_filter(*f) for f in filters]
        ids = [v for k, op, v in checked if k == "task_id" and op == "="]
        if ids:
            found = self.task_rows(list(dict.fromkeys(ids)), detail=True)
            return TaskPage([_shape(r, True) for r in found if _matches(r, checked)][:limit],
                            "", len(ids), True)
        indexes = self._index(checked)
        indexed = all(f == ("state", "=", "FAILED") for f in checked)
        newest = _Newest(self.store.redis, indexes, self._resume_ranks(indexes, cursor),
                         scored=True)
        rows: list[dict[str, Any]] = []
        scanned, last = 0, ""
        while len(rows) < limit and (indexed or scanned < scan_max):
            want = limit - len(rows) if indexed else min(SCAN_CHUNK, scan_max - scanned)
            chunk = newest.take(max(want, 1))
            if not chunk:
                return TaskPage(rows, "", scanned, indexed)
            by_task: dict[str, list[dict[str, Any]]] = {}
            for row in self.task_rows([member for member, _ in chunk], detail=True):
                by_task.setdefault(row["task_id"], []).append(row)
            for member, score in chunk:
                scanned += 1
                last = f"{score}:{member}"
                rows += [_shape(r, True) for r in by_task.get(member, ()) if _matches(r, checked)]
                if len(rows) >= limit:
                    break
        return TaskPage(rows, last, scanned, indexed)

    def _resume_ranks(self, indexes: list[str], cursor: str) -> list[int]:
        """Where the page after `cursor` ("<score>:<task id>") starts in each index: just past
        that task, or, where it is not (left the index, or lives in another partition), past
        every task not older than it."""
        if not cursor:
            return [0] * len(indexes)
        score, _, member = cursor.partition(":")
        if not score.isdigit() or not member:
            raise FilterError(f"invalid cursor {cursor!r}")
        pipe = self.store.redis.pipeline(transaction=False)
        for index in indexes:
            pipe.zrevrank(index, member)
        ranks: list[Any] = pipe.execute()
        # Newest first is score descending, then id descending among equal scores (one
        # burst of submissions shares a millisecond): skip the newer ones and the tied
        # ones that sorted before it.
        missing = [i for i, rank in enumerate(ranks) if not isinstance(rank, int)]
        pipe = self.store.redis.pipeline(transaction=False)
        for i in missing:
            pipe.zcount(indexes[i], f"({score}", "+inf")
            pipe.zrangebyscore(indexes[i], score, score)
        found = pipe.execute() if missing else []
        starts = [rank + 1 if isinstance(rank, int) else 0 for rank in ranks]
        for n, i in enumerate(missing):
            newer, tied = found[2 * n], found[2 * n + 1]
            starts[i] = int(newer) + sum(1 for t in tied if as_text(t) > member)
        return starts

    def task_detail(self, task_id: str) -> dict[str, Any] | None:
        """One task for its own page: every attempt with what it printed, the traceback,
        parent, children, the tasks it depends on and those waiting for it. None if unknown."""
        keys = self.store.keys_for(task_id)
        attempts = self.task_rows([task_id], detail=True)
        if not attempts:
            return None
        pipe = self.store.redis.pipeline(transaction=False)
        pipe.hmget(keys.task(task_id), "dep_ids", "max_retries", "retries", "cancel")
        pipe.smembers(keys.children(task_id))
        pipe.smembers(keys.dependents(task_id))
        for a in attempts:
            pipe.get(keys.log(task_id, a["attempt_number"]))
        fields, children, dependents, *logs = pipe.execute()
        dep_ids, max_retries, retries, cancel = (as_text(v) if v is not None else ""
                                                 for v in fields)
        for a, log in zip(attempts, logs):
            a["output"] = log.decode(errors="replace") if log is not None else ""
        latest = attempts[-1]
        return {
            "task_id": task_id, "name": latest["name"], "state": latest["state"],
            "error_type": latest["error_type"], "queue": latest["queue"],
            "job_id": latest["job_id"], "func_or_class_name": latest["func_or_class_name"],
            "creation_time": latest["creation_time"],
            "max_retries": int(max_retries or 0), "retries_used": int(retries or 0),
            "cancel_requested": cancel,
            "traceback": self.traceback(task_id) if latest["state"] == "FAILED" else "",
            "parent_task_id": latest["parent_task_id"],
            "children": sorted(as_text(c) for c in children),
            "dependencies": [d for d in dep_ids.split(",") if d],
            # Only while this task has not ended: the set is released when it does.
            "dependents": self._dependents(task_id, dependents),
            "attempts": attempts,
        }

    def _dependents(self, task_id: str, members: Iterable[Any]) -> list[str]:
        """The tasks waiting for this one: those of its partition, and for each other
        partition where some wait (its member `@<k>`, link.lua), those its mirror there lists."""
        local, others = [], []
        for member in (as_text(m) for m in members):
            if not member.startswith("@"):
                local.append(member)
            elif member[1:].isdigit() and int(member[1:]) < len(self.parts):
                others.append(self.parts[int(member[1:])])
        if others:
            pipe = self.store.redis.pipeline(transaction=False)
            for keys in others:
                pipe.smembers(keys.dependents(task_id))
            local += [as_text(d) for found in pipe.execute() for d in found]
        return sorted(local)

    def traceback(self, task_id: str) -> str:
        """The remote traceback of a failed task, as its `get` would show it."""
        from . import payload

        (record, blob), = self.store.outcomes([task_id])
        if blob is None:
            return record.get("error_message", "")
        return payload.error_text(task_id, blob) or record.get("error_message", "")

    def count_workers(self) -> int:
        """Worker records in the listing index, alive and recently dead."""
        return int(self.store.redis.zcard(self.home.workers))

    def count_tasks(self) -> int:
        """Tasks in the listing index (finished ones until their lineage expires)."""
        return sum(int(n) for n in self._each(lambda pipe, keys: pipe.zcard(keys.task_index)))

    def get_task(self, task_id: str) -> list[dict[str, Any]]:
        return self.task_rows([task_id], detail=True)

    def stats(self) -> dict[str, int]:
        """The counters the scripts keep (`stats`), summed over the partitions."""
        return _summed_counts(self._each(lambda pipe, keys: pipe.hgetall(keys.stats)))

    def running(self) -> int:
        """Attempts holding a lease."""
        return sum(int(n) for n in self._each(lambda pipe, keys: pipe.zcard(keys.leases)))

    def summarize_tasks(self) -> dict[str, dict[str, int]]:
        """Per function: how many tasks are in each state, from counts the scripts keep
        (no scan): every task created and ended since the counts began, the attempts holding
        a lease by their state, and the rest, waiting to run, as PENDING. The counts and the
        leases of a partition are read as one snapshot (a task lives in one partition); a
        task leased in it is counted in the state it has when read, final too (its end came
        after the counts were read), so no task is counted twice or as waiting when it is
        not."""
        created: dict[str, int] = {}
        summary: dict[str, dict[str, int]] = {}
        counted, leases = [], []
        for keys in self.parts:
            # One transaction per partition: a cluster's transaction stays in one slot.
            pipe = self.store.redis.pipeline(transaction=True)
            pipe.hgetall(keys.stats)
            pipe.zrange(keys.leases, 0, -1)
            part_stats, part_leases = pipe.execute()
            counted.append(part_stats)
            leases += part_leases
        stats = _summed_counts(counted)
        for key, value in stats.items():
            kind, _, rest = key.partition(":")
            what, _, func = rest.partition(":")
            if kind != "summary" or not func:
                continue
            if what == "created":
                created[func] = int(value)
            elif int(value) > 0:
                summary.setdefault(func, {})[what] = int(value)
        leased = [as_text(i) for i in leases]
        for name, state in self.store.task_fields(leased, "func", "state"):
            if not state:
                continue
            if state not in TERMINAL_STATES and state not in LEASED_STATES:
                state = "PENDING"        # retried or handed back since: waiting again
            counts = summary.setdefault(name or "?", {})
            counts[state] = counts.get(state, 0) + 1
        for func, n in created.items():
            counts = summary.get(func, {})
            waiting = n - sum(v for k, v in counts.items() if k != "PENDING")
            if waiting > 0:
                summary.setdefault(func, {})["PENDING"] = waiting
            elif "PENDING" in counts:
                del counts["PENDING"]
        return summary

    def _records(self, index: str, key: Any, newest: int | None = None) -> list[dict[str, str]]:
        """Hashes of the ids in `index` (only the `newest` when given); ids whose hash has
        expired are dropped from it."""
        first = -newest if newest else 0
        ids = [as_text(i) for i in self.store.redis.zrange(index, first, -1)]
        pipe = self.store.redis.pipeline(transaction=False)
        for i in ids:
            pipe.hgetall(key(i))
        out, gone = [], []
        for i, raw in zip(ids, pipe.execute()):
            if raw:
                out.append({k.decode(): v.decode() for k, v in raw.items()})
            else:
                gone.append(i)
        if gone:
            self.store.redis.zrem(index, *gone)
        return out

    def list_nodes(self) -> list[dict[str, Any]]:
        """Nodes, alive and recently dead. A node that has not heartbeated for its lease
        timeout is shown DEAD at once (its tasks are being retried), before any sweep
        records it."""
        now_ms = self.store.clock_ms()
        rows = []
        for r in self._records(self.home.node_index, self.home.node):
            heartbeat = int(r.get("heartbeat_ms", 0) or 0)
            age_s = (now_ms - heartbeat) / 1000 if heartbeat else None
            state = r.get("state", "")
            lease_s = float(r.get("lease_timeout_s", 0) or 0)
            if state == "ALIVE" and age_s is not None and lease_s and age_s > lease_s:
                state = "DEAD"
            rows.append({"node_id": r.get("node_id", ""), "state": state,
                         "host": r.get("host", ""), "pid": int(r.get("pid", 0) or 0),
                         "num_workers": int(r.get("num_workers", 0) or 0),
                         "queues": r.get("queues", ""),
                         "heartbeat_age_s": round(age_s, 1) if age_s is not None else None,
                         "resources_total": _units(r.get("resources", "")),
                         "gpu_ids": [g for g in r.get("gpu_ids", "").split(",") if g]})
        self._add_free(rows)
        return rows

    def _add_free(self, nodes: list[dict[str, Any]]) -> None:
        """Each node's free resources (what its running tasks do not hold). Partitioned,
        each partition has a copy of the node's resources and takes what its own tasks hold
        from it (heartbeat.py offer_resources): the node has free its total less what every
        partition holds."""
        count = len(self.parts)
        pipe = self.store.redis.pipeline(transaction=False)
        for n in nodes:
            for keys in self.parts:
                pipe.hgetall(keys.node_free(n["node_id"]))
        replies = pipe.execute()
        for i, n in enumerate(nodes):
            copies = [_free_units(raw) for raw in replies[i * count:(i + 1) * count]]
            free = copies[0] if count == 1 else _left(n["resources_total"], copies)
            n["resources_free"] = resources.as_amounts(free) if n["state"] == "ALIVE" else {}
            n["resources_total"] = resources.as_amounts(n["resources_total"])

    def list_workers(self, nodes: list[dict[str, Any]] | None = None,
                     newest: int | None = None) -> list[dict[str, Any]]:
        """Worker processes (the `newest` started, when given: a view polled every second
        stays cheap where workers are recycled after every task); a worker of a dead (or
        forgotten) node is dead with it."""
        alive = {n["node_id"] for n in (nodes if nodes is not None else self.list_nodes())
                 if n["state"] == "ALIVE"}
        rows = []
        now_ms = self.store.clock_ms()
        for r in self._records(self.home.workers, self.home.worker, newest):
            state, current = r.get("state", ""), r.get("current_task", "")
            if state == "ALIVE" and r.get("node_id", "") not in alive:
                state, current = "DEAD", ""
            started = int(r.get("started_ms", 0) or 0)
            ended = int(r.get("end_ms", 0) or 0) or (now_ms if state == "ALIVE" else 0)
            rows.append({"worker_id": r.get("worker_id", ""), "node_id": r.get("node_id", ""),
                         "state": state, "pid": int(r.get("pid", 0) or 0),
                         "host": r.get("host", ""), "current_task": current,
                         "tasks_run": int(r.get("tasks_run", 0) or 0),
                         "rss_bytes": int(r.get("rss_bytes", 0) or 0),
                         "uptime_s": round((ended - started) / 1000, 1) if started and ended
                         else None,
                         "exit": r.get("exit", "") or ("its node died" if state == "DEAD"
                                                       else "")})
        return rows

    def queue_depths(self, slots: dict[tuple[str, str], int] | None = None) -> dict[str, int]:
        """Per queue, the tasks ready to run (every resource shape, pinned ones too), from
        `slots` (slot_depths) when the caller has read them."""
        depths: dict[str, int] = {}
        for (queue, _), n in (slots if slots is not None else self.slot_depths()).items():
            depths[queue] = depths.get(queue, 0) + n
        return depths

    def slot_depths(self) -> dict[tuple[str, str], int]:
        """Per (queue, shape): how many ready tasks wait (pinned ones counted in too), in
        every partition."""
        found = self._each(lambda pipe, keys: (pipe.smembers(keys.queues),
                                               pipe.zrange(keys.nodes, 0, -1)))
        names = sorted({as_text(n) for members in found[0::2] for n in members})
        pipe = self.store.redis.pipeline(transaction=False)
        for keys, nodes in zip(self.parts, found[1::2]):
            for name in names:
                pipe.smembers(keys.shapes(name))
            for node in nodes:
                pipe.smembers(keys.pins(as_text(node)))
        replies = iter(pipe.execute())
        slots: list[tuple[str, str, str]] = []    # (queue, shape, key of its list)
        for keys, nodes in zip(self.parts, found[1::2]):
            for name in names:
                shapes = next(replies)
                for shape in [DEFAULT_SHAPE, *sorted(as_text(s) for s in shapes)]:
                    slots.append((name, shape, keys.queue(queue_slot(name, shape))))
            for _ in nodes:
                for slot in (as_text(p) for p in next(replies)):
                    queue, _, rest = slot.partition("@node=")
                    _, _, shape = rest.partition("@")
                    slots.append((queue, shape or DEFAULT_SHAPE, keys.queue(slot)))
        pipe = self.store.redis.pipeline(transaction=False)
        for _, _, key in slots:
            pipe.llen(key)
        depths: dict[tuple[str, str], int] = {(name, DEFAULT_SHAPE): 0 for name in names}
        for (queue, shape, _), n in zip(slots, pipe.execute()):
            depths[(queue, shape)] = depths.get((queue, shape), 0) + int(n)
        return depths

    def infeasible(self, nodes: list[dict[str, Any]] | None = None,
                   slots: dict[tuple[str, str], int] | None = None) -> list[dict[str, Any]]:
        """Ready tasks that no live node serving their queue can ever fit, per queue and
        shape, with what the closest node lacks."""
        offers = [(node["queues"].split(","),
                   {k: resources.to_units(v, k) for k, v in node["resources_total"].items()})
                  for node in (nodes if nodes is not None else self.list_nodes())
                  if node["state"] == "ALIVE"]
        out = []
        for (queue, shape), n in sorted((slots if slots is not None
                                         else self.slot_depths()).items()):
            if not n:
                continue
            need = resources.parse_shape(shape)
            hosts = [total for queues, total in offers if queue in queues]
            if not hosts or any(resources.fits(need, total) for total in hosts):
                continue
            lacks = min((resources.missing(need, total) for total in hosts), key=len)
            out.append({"queue": queue, "shape": shape, "tasks": int(n), "missing": lacks})
        return out

    def _queue_names(self) -> list[str]:
        """Every queue that ever held a task, in any partition."""
        found = self._each(lambda pipe, keys: pipe.smembers(keys.queues))
        return sorted({as_text(n) for members in found for n in members})

    def delayed_counts(self) -> dict[str, int]:
        """Per queue, how many tasks are DELAYED (waiting for their time, in no queue)."""
        names = self._queue_names()
        found = self._each(lambda pipe, keys: [pipe.zcard(keys.delayed(n)) for n in names])
        counts = {name: sum(int(n) for n in found[i::len(names)])
                  for i, name in enumerate(names)}
        return {name: n for name, n in counts.items() if n}

    def limits(self) -> dict[str, dict[str, int]]:
        """Per limit key that held tasks back: tasks running under it, tasks waiting."""
        found = self._each(lambda pipe, keys: pipe.smembers(keys.limit_keys))
        names = sorted({as_text(k) for members in found for k in members})
        counts = self._each(lambda pipe, keys: [
            (pipe.scard(keys.limit_running(k)), pipe.llen(keys.limit_waiting(k)))
            for k in names])
        per = 2 * len(names)
        return {key: {"running": sum(counts[2 * i::per]), "waiting": sum(counts[2 * i + 1::per])}
                for i, key in enumerate(names)}

    def queue_stats(self, nodes: list[dict[str, Any]] | None = None,
                    depths: dict[str, int] | None = None) -> list[dict[str, Any]]:
        """Per queue: depth, how long its oldest task has waited, how many live nodes serve
        it. The oldest is the list's right end, where claims pop: O(1) per queue."""
        depths = depths if depths is not None else self.queue_depths()
        nodes = nodes if nodes is not None else self.list_nodes()
        count = len(self.parts)
        pipe = self.store.redis.pipeline(transaction=False)
        for name in depths:
            for keys in self.parts:
                pipe.lindex(keys.queue(name), -1)
        heads = [as_text(i) if i is not None else "" for i in pipe.execute()]
        created = self.store.task_fields([i for i in heads if i], "created_ms")
        created_ms = {i: int(row[0] or 0) for i, row in zip([i for i in heads if i], created)}
        now_ms = self.store.clock_ms()
        rows = []
        for n, (name, depth) in enumerate(depths.items()):
            first = _oldest(heads[n * count:(n + 1) * count], created_ms)
            since = created_ms.get(first, 0)
            rows.append({"queue": name, "depth": depth, "oldest_task_id": first,
                         "oldest_age_s": round((now_ms - since) / 1000, 1) if since else None,
                         "nodes_serving": sum(1 for n in nodes if n["state"] == "ALIVE"
                                              and name in n["queues"].split(","))})
        return rows

    def throughput(self, minutes: int = THROUGHPUT_MINUTES) -> dict[str, Any]:
        """Tasks finished, failed and retried in each of the last `minutes` minutes, oldest
        first, from the per-minute counters the scripts keep."""
        now_minute = self.store.clock_ms() // 60000
        first = now_minute - minutes + 1
        series: dict[str, list[int]] = {"finished": [], "failed": [], "retried": []}
        for counts in self._minutes(first, now_minute):
            series["finished"].append(counts.get("finished", 0))
            series["failed"].append(sum(v for k, v in counts.items() if k.startswith("failed:")))
            series["retried"].append(sum(v for k, v in counts.items()
                                         if k.startswith("retries:")))
        return {"first_minute_ms": first * 60000, "minutes": minutes, **series}

    def _minutes(self, first: int, last: int) -> list[dict[str, int]]:
        """The per-minute counters of each minute from `first` to `last`, summed over the
        partitions."""
        count = len(self.parts)
        pipe = self.store.redis.pipeline(transaction=False)
        for m in range(first, last + 1):
            for keys in self.parts:
                pipe.hgetall(keys.stats_minute(m))
        buckets = pipe.execute()
        return [_summed_counts(buckets[i:i + count]) for i in range(0, len(buckets), count)]

    def unserved_queues(self) -> list[str]:
        """Queues with work waiting that no live node serves."""
        return unserved(self.list_nodes(), self.queue_depths())

    def status(self, minutes: int = 5, nodes: list[dict[str, Any]] | None = None,
               workers: list[dict[str, Any]] | None = None) -> dict[str, Any]:
        """`ftqueue status`; `nodes` and `workers` when the caller has read them already."""
        now_minute = self.store.clock_ms() // 60000
        recent = _summed_counts(self._minutes(now_minute - minutes + 1, now_minute))
        nodes = nodes if nodes is not None else self.list_nodes()
        workers = workers if workers is not None else self.list_workers(nodes)
        stats = self.stats()
        slots = self.slot_depths()
        depths = self.queue_depths(slots)
        return {
            "nodes_alive": sum(1 for n in nodes if n["state"] == "ALIVE"),
            "workers_alive": sum(1 for w in workers if w["state"] == "ALIVE"),
            "resources_total": _summed(nodes, "resources_total"),
            "resources_free": _summed(nodes, "resources_free"),
            "queues": depths,
            "delayed": self.delayed_counts(),
            "limits": self.limits(),
            "unserved_queues": unserved(nodes, depths),
            "infeasible": self.infeasible(nodes, slots),
            "running": self.running(),
            "window_minutes": minutes,
            "recent_finished": recent.get("finished", 0),
            "recent_retries": {k.split(":", 1)[1]: v for k, v in recent.items()
                               if k.startswith("retries:")},
            "recent_failures": {k.split(":", 1)[1] or "?": v for k, v in recent.items()
                                if k.startswith("failed:")},
            "fenced_late_results": stats.get("fenced", 0),
        }


def _free_units(raw: dict[Any, Any]) -> dict[str, int]:
    """A node_free hash's resources (not its per-GPU fields nor its blocked flag)."""
    return {as_text(k): int(v) for k, v in raw.items()
            if not as_text(k).startswith("gpu:") and as_text(k) != resources.BLOCKED_FLAG}


def _left(total: dict[str, int], copies: Sequence[dict[str, int]]) -> dict[str, int]:
    """What a node has free: its total less what each partition's copy says is held (a
    resource missing from a copy: none held there)."""
    return {name: units - sum(units - copy.get(name, units) for copy in copies)
            for name, units in total.items()}


def _oldest(heads: Sequence[str], created_ms: dict[str, int]) -> str:
    """Of the tasks at the head of a queue's list in each partition, the one created first
    ('' if every list is empty)."""
    found = [h for h in heads if h]
    if len(found) <= 1:
        return found[0] if found else ""
    return min(found, key=lambda h: (not created_ms.get(h), created_ms.get(h, 0)))


def _summed_counts(hashes: Iterable[dict[Any, Any]]) -> dict[str, int]:
    """Hashes of counters (one per partition), summed field by field."""
    total: dict[str, int] = {}
    for raw in hashes:
        for key, value in raw.items():
            name = as_text(key)
            total[name] = total.get(name, 0) + int(value)
    return total


def _summed(nodes: list[dict[str, Any]], field: str) -> dict[str, float]:
    """A resource field of the live nodes, summed."""
    total: dict[str, float] = {}
    for n in nodes:
        if n["state"] == "ALIVE":
            for name, amount in n[field].items():
                total[name] = total.get(name, 0) + amount
    return total


def unserved(nodes: list[dict[str, Any]], depths: dict[str, int]) -> list[str]:
    served = {q for n in nodes if n["state"] == "ALIVE" for q in n["queues"].split(",")}
    return sorted(q for q, n in depths.items() if n and q not in served)


def _shape(row: dict[str, Any], detail: bool) -> dict[str, Any]:
    return {k: row.get(k) for k in (DETAIL_FIELDS if detail else TASK_FIELDS)}


_store: Callable[[], Store] | None = None


def bind_store(provider: Callable[[], Store] | None) -> None:
    """Set the function that returns this process's store (connecting on first use).
    Injected by `api`, so this module needs nothing above it."""
    global _store
    _store = provider


def _reader() -> StateReader:
    if _store is None:
        raise RuntimeError("ftqueue.state needs `import ftqueue` (which binds the runtime)")
    return StateReader(_store())


def list_tasks(filters: Sequence[tuple[str, str, Any]] | None = None, detail: bool = False,
               limit: int = DEFAULT_LIMIT) -> list[dict[str, Any]]:
    """One record per task attempt, newest tasks first; filters are (key, '='|'!=', value)."""
    return _reader().list_tasks(filters or (), detail=detail, limit=limit)


def get_task(task_id: str) -> list[dict[str, Any]]:
    """Every attempt of one task."""
    return _reader().get_task(task_id)


def summarize_tasks() -> dict[str, dict[str, int]]:
    """Per function name: the number of tasks in each state."""
    return _reader().summarize_tasks()


def list_nodes() -> list[dict[str, Any]]:
    """Worker nodes, alive and recently dead."""
    return _reader().list_nodes()


def list_workers() -> list[dict[str, Any]]:
    """Worker processes, alive and recently dead: pid, host, current task, tasks run."""
    return _reader().list_workers()


def queue_depths() -> dict[str, int]:
    return _reader().queue_depths()


def cluster_resources() -> dict[str, float]:
    """What the live nodes offer, summed."""
    return _summed(_reader().list_nodes(), "resources_total")


def available_resources() -> dict[str, float]:
    """What the live nodes have free now, summed."""
    return _summed(_reader().list_nodes(), "resources_free")


def list_infeasible() -> list[dict[str, Any]]:
    """Ready tasks that no live node can ever fit: queue, shape, count, what is missing."""
    return _reader().infeasible()

"""Read-only views of the cluster, as Ray's state API: one record per task attempt."""

from __future__ import annotations

import json
from typing import Any, Iterable, Sequence

from .spec import TaskState
from .store import Store

TASK_FIELDS = ("task_id", "attempt_number", "name", "state", "job_id", "actor_id", "type",
               "func_or_class_name", "parent_task_id", "node_id", "worker_id", "error_type")
DETAIL_FIELDS = TASK_FIELDS + ("error_message", "start_time", "end_time", "creation_time",
                               "queue")
DEFAULT_LIMIT = 100
SCAN_CHUNK = 500
_STATES = {s.value for s in TaskState}
_HASH_FIELDS = ("name", "func", "state", "job_id", "parent_task_id", "node_id", "worker_id",
                "error_type", "error_message", "start_ms", "end_ms", "created_ms", "queue",
                "attempt")


class FilterError(ValueError):
    """A filter names an unknown field, operator or state."""


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


def _ms_to_s(value: Any) -> float | None:
    return int(value) / 1000 if value not in (None, "") else None


def _rows_for(task_id: str, record: dict[str, str], past: Iterable[str],
              detail: bool) -> list[dict[str, Any]]:
    base = {
        "task_id": task_id, "name": record.get("name", ""), "job_id": record.get("job_id", ""),
        "actor_id": "", "type": "NORMAL_TASK", "func_or_class_name": record.get("func", ""),
        "parent_task_id": record.get("parent_task_id", ""),
    }
    extra = {"creation_time": _ms_to_s(record.get("created_ms")), "queue": record.get("queue", "")}
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


class StateReader:
    def __init__(self, store: Store) -> None:
        self.store = store
        self.keys = store.keys

    def task_rows(self, task_ids: Sequence[str], detail: bool = False) -> list[dict[str, Any]]:
        pipe = self.store.redis.pipeline(transaction=False)
        for task_id in task_ids:
            pipe.hgetall(self.keys.task(task_id))
            pipe.lrange(self.keys.attempts(task_id), 0, -1)
        raw = pipe.execute()
        rows: list[dict[str, Any]] = []
        for i, task_id in enumerate(task_ids):
            record = {k.decode(): v.decode() for k, v in raw[2 * i].items()}
            if record.get("state"):
                rows += _rows_for(task_id, record, raw[2 * i + 1], detail)
        return rows

    def list_tasks(self, filters: Sequence[tuple[str, str, Any]] = (), detail: bool = False,
                   limit: int = DEFAULT_LIMIT) -> list[dict[str, Any]]:
        checked = [_check_filter(*f) for f in filters]
        ids = [v for k, op, v in checked if k == "task_id" and op == "="]
        if ids:
            rows = self.task_rows(list(dict.fromkeys(ids)), detail=True)
            return [_shape(r, detail) for r in rows if _matches(r, checked)][:limit]
        rows = []
        start = 0
        while len(rows) < limit:
            chunk = self.store.redis.zrevrange(self.keys.task_index, start, start + SCAN_CHUNK - 1)
            if not chunk:
                break
            start += SCAN_CHUNK
            for row in self.task_rows([c.decode() for c in chunk], detail=True):
                if _matches(row, checked):
                    rows.append(_shape(row, detail))
        return rows[:limit]

    def get_task(self, task_id: str) -> list[dict[str, Any]]:
        return self.task_rows([task_id], detail=True)


def _shape(row: dict[str, Any], detail: bool) -> dict[str, Any]:
    return {k: row.get(k) for k in (DETAIL_FIELDS if detail else TASK_FIELDS)}


def _reader() -> StateReader:
    from .api import _ensure_client

    return StateReader(_ensure_client().store)


def list_tasks(filters: Sequence[tuple[str, str, Any]] | None = None, detail: bool = False,
               limit: int = DEFAULT_LIMIT) -> list[dict[str, Any]]:
    """One record per task attempt, newest tasks first; filters are (key, '='|'!=', value)."""
    return _reader().list_tasks(filters or (), detail=detail, limit=limit)


def get_task(task_id: str) -> list[dict[str, Any]]:
    """Every attempt of one task."""
    return _reader().get_task(task_id)

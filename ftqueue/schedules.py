"""Schedules: named periodic tasks kept in Redis and fired by whichever live node reaches a
due tick first, with no scheduler process of their own.

A schedule's record holds its timing (a cron expression, in UTC, or `every_s`), the task it
submits (record fields and an argument envelope sealed for the schedule) and its next tick.
Every node looks for due schedules twice a second; `fire.lua` advances a schedule only
from the tick its caller read, and names the tick's task `sched:<name>:<tick ms>`, so each
tick makes exactly one task for the whole cluster. After an outage, catchup "latest" runs
the latest missed tick once, "none" runs none of them.
"""

from __future__ import annotations

import json
import logging
import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from . import payload
from .client.records import Origin, Submission, build_submission
from .exceptions import PayloadVerificationError
from .partitions import SCHEDULE_TASK_PREFIX
from .remote_function import definition
from .spec import ResolvedOptions, validate_options
from .store import Store

log = logging.getLogger("ftqueue.schedules")

NAME_MAX_CHARS = 64
_NAME_CHARS = frozenset("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789._-")
CATCHUP = ("latest", "none")
POLL_S = 0.5                 # how often a node looks for due schedules
DUE_BATCH = 100
# A tick reached later than this was missed (an outage, no live node): catchup decides.
MISSED_AFTER_MS = 5000
TASK_PREFIX = SCHEDULE_TASK_PREFIX


def check_name(name: object) -> str:
    if not (isinstance(name, str) and 0 < len(name) <= NAME_MAX_CHARS
            and set(name) <= _NAME_CHARS):
        raise ValueError(f"a schedule name is 1-{NAME_MAX_CHARS} characters of "
                         f"[A-Za-z0-9._-], got {name!r}")
    return name


def envelope_id(name: str) -> str:
    """The id a schedule's argument envelope is sealed for."""
    return f"schedule:{name}"


def tick_task_id(name: str, tick_ms: int) -> str:
    return f"{TASK_PREFIX}{name}:{tick_ms}"


@dataclass(frozen=True)
class Timing:
    """When a schedule ticks: `cron` (five fields, UTC) or every `every_s` seconds from
    `anchor_ms` (when it was created)."""

    cron: str | None
    every_s: float | None
    anchor_ms: int = 0

    @classmethod
    def checked(cls, cron: object, every_s: object, anchor_ms: int) -> Timing:
        if (cron is None) == (every_s is None):
            raise ValueError("give a schedule either cron= or every_s=")
        if cron is not None:
            from croniter import croniter

            if not isinstance(cron, str) or not croniter.is_valid(cron):
                raise ValueError(f"not a cron expression: {cron!r}")
            return cls(cron, None, anchor_ms)
        if isinstance(every_s, bool) or not isinstance(every_s, (int, float)) \
                or not every_s >= 1 or math.isinf(every_s):
            raise ValueError(f"every_s must be a number of seconds >= 1, got {every_s!r}")
        return cls(None, float(every_s), anchor_ms)

    def next_after(self, t_ms: int) -> int:
        """The first tick strictly after t_ms."""
        if self.every_s is not None:
            period = int(self.every_s * 1000)
            return self.anchor_ms + ((t_ms - self.anchor_ms) // period + 1) * period
        from croniter import croniter

        return int(round(croniter(self.cron, t_ms / 1000).get_next(float) * 1000))

    def latest_at(self, t_ms: int, since_ms: int) -> int:
        """The latest tick at or before t_ms, and not before since_ms (a due tick)."""
        if self.every_s is not None:
            period = int(self.every_s * 1000)
            latest = self.anchor_ms + (t_ms - self.anchor_ms) // period * period
        else:
            from croniter import croniter

            latest = int(round(croniter(self.cron, (t_ms + 1) / 1000).get_prev(float) * 1000))
        return max(latest, since_ms)


def build_record(name: str, timing: Timing, catchup: str, sub: Submission,
                 func: str) -> dict[str, str | bytes]:
    """What a schedule keeps in Redis (see docs/redis-layout.md)."""
    if catchup not in CATCHUP:
        raise ValueError(f"catchup must be one of {', '.join(CATCHUP)}, got {catchup!r}")
    if sub.deps:
        raise ValueError("a schedule's arguments cannot be ObjectRefs (each tick runs anew)")
    fields = dict(sub.fields, notify="", parent_task_id="")
    return {"name": name, "func": func, "fn": fields["fn"], "queue": sub.queue,
            "cron": timing.cron or "", "every_s": repr(timing.every_s) if timing.every_s else "",
            "anchor_ms": str(timing.anchor_ms), "catchup": catchup,
            "fields": json.dumps(fields, sort_keys=True), "args": sub.args_blob}


def create(store: Store, origin: Origin, name: str, fn: Any, args: Sequence[Any],
           kwargs: dict[str, Any], cron: str | None, every_s: float | None,
           queue: str | None, catchup: str) -> dict[str, Any]:
    """Create or replace the schedule `name`; what `list_schedules` shows for it."""
    check_name(name)
    function, options = definition(fn)
    for option in ("delay_s", "eta", "task_id"):
        if options.get(option) is not None:
            raise ValueError(f"a scheduled task cannot take {option}=")
    if queue is not None:
        options["queue"] = queue
    options["task_id"] = envelope_id(name)
    resolved = ResolvedOptions.resolve(validate_options(options))
    now_ms = store.redis_time_ms()
    timing = Timing.checked(cron, every_s, now_ms)
    if catchup not in CATCHUP:
        raise ValueError(f"catchup must be one of {', '.join(CATCHUP)}, got {catchup!r}")
    fn_ref = function.stored_ref(lambda blob, digest: store.store_function(digest, blob))
    sub = build_submission(fn_ref, function.name, resolved, args, kwargs, origin, None)
    record = build_record(name, timing, catchup, sub, function.name)
    store.put_schedule(name, record, timing.next_after(now_ms))
    return describe(store.schedule_records([name])[0])


def remove(store: Store, name: str) -> bool:
    """Remove a schedule; False if there was none of that name."""
    return store.remove_schedule(check_name(name))


def _text(record: dict[str, bytes], key: str) -> str:
    return record.get(key, b"").decode()


def timing_of(record: dict[str, bytes]) -> Timing:
    every = _text(record, "every_s")
    return Timing(_text(record, "cron") or None, float(every) if every else None,
                  int(_text(record, "anchor_ms") or 0))


def describe(record: dict[str, bytes]) -> dict[str, Any]:
    """A schedule as `list_schedules` and the CLI show it."""
    timing = timing_of(record)
    last = _text(record, "last_tick_ms")
    return {"name": _text(record, "name"), "func": _text(record, "func"),
            "fn": _text(record, "fn"), "queue": _text(record, "queue"),
            "cron": timing.cron, "every_s": timing.every_s,
            "catchup": _text(record, "catchup"),
            "next_run": int(_text(record, "next_ms") or 0) / 1000,
            "last_run": int(last) / 1000 if last else None,
            "last_task_id": _text(record, "last_task_id") or None}


def list_schedules(store: Store) -> list[dict[str, Any]]:
    names = store.schedule_names()
    return [describe(r) for r in store.schedule_records(names) if r]


def fire_due(store: Store) -> list[tuple[str, str]]:
    """Fire the schedules whose next tick has come (a node's duty): (name, answer) each."""
    now_ms, upcoming = store.schedules_due(DUE_BATCH)
    due = [(name, tick) for name, tick in upcoming if tick <= now_ms]
    if not due:
        return []
    out = []
    for (name, expected), record in zip(due, store.schedule_records([n for n, _ in due])):
        if not record:
            continue      # removed meanwhile
        try:
            out.append((name, _fire_one(store, name, expected, record, now_ms)))
            _broken.discard(name)
        except Exception as e:  # noqa: BLE001 - one broken schedule cannot stop the others
            if not _is_user_error(e):
                raise
            if name not in _broken:       # once, not at every poll
                _broken.add(name)
                log.error("schedule %s cannot fire: %s", name, e)
    return out


_broken: set[str] = set()


def _is_user_error(e: Exception) -> bool:
    return isinstance(e, (ValueError, PayloadVerificationError))


def _fire_one(store: Store, name: str, expected: int, record: dict[str, bytes],
              now_ms: int) -> str:
    timing = timing_of(record)
    next_ms = timing.next_after(now_ms)
    missed = now_ms - expected > MISSED_AFTER_MS
    if missed and _text(record, "catchup") == "none":
        return store.fire_schedule(name, expected, next_ms)
    tick = timing.latest_at(now_ms, expected) if missed else expected
    task_id = tick_task_id(name, tick)
    blob = payload.reseal_args(record["args"], envelope_id(name), task_id)
    fields: dict[str, str] = json.loads(record["fields"])
    return store.fire_schedule(name, expected, next_ms, task_id, _text(record, "queue"), blob,
                               fields, tick)


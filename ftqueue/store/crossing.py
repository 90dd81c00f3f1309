"""What crosses partitions (docs/design.md, "Partitions"): a task waiting for a task of
another partition, through a mirror of it in its own partition and the outbox of the other.

Every step is one script in one partition, idempotent, and written before it is applied:
  link    in the dependency's partition: its end will go to the outbox for the waiting one;
  mirror  in the waiting task's partition: the dependency, pending, or final once it ended;
  outbox  the ends to apply elsewhere, applied by whoever ended the task (the script's reply
          says so), else by any node's sweep;
  relink  a sweep links a mirror pending long again (the other partition may have lost the
          link with its data), which ends it if the task is gone.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable, Sequence
from typing import TYPE_CHECKING, Any, TypeVar

from ..spec import is_put_id

if TYPE_CHECKING:
    from .store import Store, StoreTask

log = logging.getLogger("ftqueue.store")
T = TypeVar("T")

OUTBOX_BATCH = 100
RELINK_BATCH = 100
RELINK_AFTER_MS = 60_000     # a mirror pending this long is linked again (then again later)
MISSING_GRACE_MS = 15 * 60_000   # a mirrored task gone this long ends its mirror
def submit(store: Store, tasks: Sequence[StoreTask]) -> int:
    """Each task in its partition, in order, with one script per partition for a run of
    tasks; the dependencies of the run that live in other partitions are linked and
    mirrored first, all at once. A run ends before a task that waits for one of its own
    (that one must exist before it is linked)."""
    created = 0
    run: dict[int, list[StoreTask]] = {}
    in_run: set[str] = set()
    waits: dict[tuple[int, str], str] = {}       # (waiting partition, dep) -> lineage TTL
    adopt: dict[str, list[str]] = {}

    def flush() -> None:
        nonlocal created
        link(store, waits)
        # Adopted before they exist: a process that dies in between leaves a child id that
        # a cancel finds missing, never a child its parent's cancel cannot find.
        for parent, children in adopt.items():
            store.run_in(store.part_of(parent), "adopt", children, parent=parent)
        for part, group in run.items():
            created += store.submit_in(part, group)
        for pending in (run, in_run, waits, adopt):
            pending.clear()

    for task in tasks:
        task_id, deps, fields = task[0], task[3], task[4]
        part = store.part_of(task_id)
        foreign = [d for d in deps if store.part_of(d) != part and not is_put_id(d)]
        if any(d in in_run for d in foreign):
            flush()
        for dep in foreign:
            waits[(part, dep)] = _longer(waits.get((part, dep)), fields.get("lineage_ttl_s"))
        run.setdefault(part, []).append(task)
        in_run.add(task_id)
        parent = fields.get("parent_task_id", "")
        if parent and store.part_of(parent) != part:
            adopt.setdefault(parent, []).append(task_id)
    flush()
    return created


def _longer(a: str | None, b: str | None) -> str:
    """The longer of two lineage TTLs ('0': for good; None or '': not known)."""
    if not a or not b:
        return a or b or ""
    if a == "0" or b == "0":
        return "0"
    return str(max(int(a), int(b)))


def link(store: Store, waits: dict[tuple[int, str], str]) -> None:
    """Link each (waiting partition, dependency) where the dependency lives, then mirror
    it in the waiting partition: pending, or final if it ended already (or is gone)."""
    if not waits:
        return
    by_home: dict[int, list[tuple[int, str]]] = {}
    for part, dep in waits:
        by_home.setdefault(store.part_of(dep), []).append((part, dep))
    mirrors: dict[int, list[str]] = {}
    for home, pairs in by_home.items():
        answers = _link_in(store, home, pairs)
        for (part, dep), answer in zip(pairs, answers):
            # A dependency gone (or ended) counts as ended: the task finds out reading it.
            mirrors.setdefault(part, []).extend(
                [dep, "0" if answer == "linked" else "1", waits[(part, dep)]])
    for part, triples in mirrors.items():
        mirror(store, part, triples)


def _link_in(store: Store, home: int, pairs: Sequence[tuple[int, str]]) -> list[str]:
    keys = store.parts[home]
    argv = [x for part, dep in pairs for x in (dep, part)]
    extra = [k for _, dep in pairs for k in (keys.task(dep), keys.dependents(dep))]
    return [_text(a) for a in store.run_in(home, "link", argv, extra)]


def mirror(store: Store, part: int, triples: Sequence[str]) -> None:
    """triples: dependency id, '1' (it ended) or '0' (pending), lineage TTL: mirror.lua."""
    keys = store.parts[part]
    extra = [k for dep in triples[::3] for k in (keys.task(dep), keys.dependents(dep))]
    store.run_in(part, "mirror", list(triples), extra)


def each_then_raise(items: Iterable[T], step: Callable[[T], None]) -> None:
    """`step` for each item (a partition), each on its own: one that fails (its primary
    away, failing over) does not keep the others from theirs. The first failure is raised
    after all were tried."""
    failure: Exception | None = None
    for item in items:
        try:
            step(item)
        except Exception as e:  # noqa: BLE001 - raised below, after the others
            failure = failure or e
    if failure is not None:
        raise failure


def apply_outbox(store: Store, part: int) -> None:
    """Apply the ends of tasks of `part` that other partitions wait for, then drop them
    from its outbox. Idempotent (mirror.lua): two processes may apply one at once, and what
    a process that died before applying left is applied by the next sweep. A partition that
    cannot take its share now (its primary away) holds back only its own."""
    box = store.parts[part].outbox
    while True:
        items = [_text(i) for i in store.redis.lrange(box, 0, OUTBOX_BATCH - 1)]
        _apply_batch(store, box, items)
        if len(items) < OUTBOX_BATCH:
            return


def _apply_batch(store: Store, box: str, items: Sequence[str]) -> None:
    """Apply these outbox entries, each waiting partition's on its own, and drop what was
    applied (and what is not an entry at all)."""
    by_part: dict[int, list[str]] = {}
    done: list[str] = []
    for item in items:
        target, _, dep = item.partition(" ")
        if target.isdigit() and int(target) < store.partition_count and dep:
            by_part.setdefault(int(target), []).append(item)
        else:
            done.append(item)

    def apply(waiting: int) -> None:
        mine = by_part[waiting]
        mirror(store, waiting, [x for item in mine for x in (item.partition(" ")[2], "1", "")])
        done.extend(mine)

    try:
        each_then_raise(by_part, apply)
    finally:
        if done:
            pipe = store.redis.pipeline(transaction=False)
            for item in done:
                pipe.lrem(box, 1, item)
            pipe.execute()


def sweep(store: Store) -> None:
    """A node's share: what is left in the outboxes, and mirrors pending long; each
    partition's even when another's fails."""
    if store.partition_count == 1:
        return
    horizon = store.redis_time_ms() - RELINK_AFTER_MS
    pipe = store.redis.pipeline(transaction=False)
    for keys in store.parts:
        pipe.llen(keys.outbox)
        pipe.zrangebyscore(keys.mirrors, "-inf", horizon, start=0, num=RELINK_BATCH)
    replies = pipe.execute(raise_on_error=False)

    def sweep_in(part: int) -> None:
        length, stale = replies[2 * part], replies[2 * part + 1]
        for reply in (length, stale):
            if isinstance(reply, Exception):
                raise reply
        if int(length):
            apply_outbox(store, part)
        if stale:
            _relink(store, part, [_text(d) for d in stale])

    each_then_raise(range(store.partition_count), sweep_in)


def _relink(store: Store, part: int, deps: Sequence[str]) -> None:
    """Link again mirrors of `part` pending long, marked checked now: a link kept is kept,
    one lost is made again, a task that ended ends its mirror. A task gone where it lives
    (its partition lost its data) ends it once it stayed gone MISSING_GRACE_MS, which leaves
    its submitter time to submit it again (a driver does, with its dependents)."""
    now = store.redis_time_ms()
    keys = store.parts[part]
    store.redis.zadd(keys.mirrors, {d: now for d in deps}, xx=True)
    by_home: dict[int, list[tuple[int, str]]] = {}
    for dep in deps:
        by_home.setdefault(store.part_of(dep), []).append((part, dep))
    ended: list[str] = []
    gone: list[str] = []
    back: list[str] = []
    for home, pairs in by_home.items():
        for (_, dep), answer in zip(pairs, _link_in(store, home, pairs)):
            (ended if answer == "final" else gone if answer == "gone" else back).append(dep)
    if gone or back:
        pipe = store.redis.pipeline(transaction=False)
        for dep in gone:
            pipe.hsetnx(keys.task(dep), "missing_ms", now)
            pipe.hget(keys.task(dep), "missing_ms")
        for dep in back:
            pipe.hdel(keys.task(dep), "missing_ms")
        since = pipe.execute()[1:2 * len(gone):2]
        ended += [d for d, ms in zip(gone, since)
                  if ms is not None and now - int(_text(ms)) >= MISSING_GRACE_MS]
    if ended:
        mirror(store, part, [x for dep in ended for x in (dep, "1", "")])


def _text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)

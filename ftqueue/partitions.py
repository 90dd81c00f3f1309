"""Partitions: one namespace spread over the primaries of a Redis Cluster (docs/design.md,
"Partitions").

A namespace has P partitions (FTQUEUE_PARTITIONS, fixed when the namespace is first used;
1 keeps the single-slot layout). Partition k is a complete copy of the layout under the
hash tag `{<namespace>.<k>}` (with a suffix when needed so that the P tags fall in P equal
ranges of the cluster's 16384 slots, one range per primary of an evenly split cluster).
Every id belongs to one partition, found from the id alone, so refs and `task_id=` need no
lookup: a task's keys, its results, a function's blob and a schedule with its ticks live in
the partition of their id. A task that must sit beside something (its resources, its limit
key, its parent, its first dependency: client/records.py) gets an id drawn until it falls in
that partition.
"""

from __future__ import annotations

import zlib

from redis.crc import key_slot

from .spec import new_id, split_object_id

CLUSTER_SLOTS = 16384
SCHEDULE_TASK_PREFIX = "sched:"   # schedules.py names a tick's task sched:<name>:<tick ms>
# A mirror of a task in another partition (a dependency): its state while that task runs.
MIRROR_PENDING = "PENDING_ELSEWHERE"


def route(ident: str) -> str:
    """What decides an id's partition: a task's for each of its values (`<task>#<i>`), a
    schedule's name for each of its ticks."""
    base = split_object_id(ident)[0]
    if base.startswith(SCHEDULE_TASK_PREFIX):
        name, sep, tick = base[len(SCHEDULE_TASK_PREFIX):].rpartition(":")
        if sep and tick.isdigit():
            return name
    return base


def partition_of(ident: str, count: int) -> int:
    if count <= 1:
        return 0
    return zlib.crc32(route(ident).encode()) % count


def tags(namespace: str, count: int) -> list[str]:
    """The hash tag of each partition: `<namespace>.<k>`, or `<namespace>.<k>.<n>` with the
    smallest n that puts it in the k-th of `count` equal slot ranges."""
    out = []
    for k in range(count):
        low, high = k * CLUSTER_SLOTS // count, (k + 1) * CLUSTER_SLOTS // count
        tag, n = f"{namespace}.{k}", 0
        while not low <= key_slot(tag.encode()) < high:
            n += 1
            tag = f"{namespace}.{k}.{n}"
        out.append(tag)
    return out


def draw_id(partition: int, count: int) -> str:
    """A new task id in `partition` (count draws on average)."""
    while True:
        task_id = new_id()
        if partition_of(task_id, count) == partition:
            return task_id

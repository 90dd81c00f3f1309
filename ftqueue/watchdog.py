"""The node's memory watchdog: pure choices over what psutil and cgroups report."""

from __future__ import annotations

from typing import Iterable

import psutil

from .policy import KillReason
from .workerpool import WorkerHandle


def node_memory() -> tuple[int, int]:
    """(used, total) bytes of this container (cgroup v2 limit) or else of the host."""
    try:
        with open("/sys/fs/cgroup/memory.max") as f:
            limit = f.read().strip()
        if limit != "max":
            with open("/sys/fs/cgroup/memory.current") as f:
                return int(f.read()), int(limit)
    except (OSError, ValueError):
        pass
    vm = psutil.virtual_memory()
    return int(vm.total - vm.available), int(vm.total)


def pick_oom_victim(handles: Iterable[WorkerHandle]) -> WorkerHandle | None:
    """As Ray's memory monitor: the worker whose task started last."""
    busy = [h for h in handles if h.running and h.kill_reason is KillReason.NONE]
    return max(busy, key=lambda h: h.task_started) if busy else None


def rss_of(handle: WorkerHandle) -> int | None:
    try:
        return int(psutil.Process(handle.pid).memory_info().rss)
    except psutil.Error:
        return None


def memory_kills(handles: list[WorkerHandle], limit_bytes: int, threshold: float,
                 used_total: tuple[int, int]) -> list[tuple[WorkerHandle, KillReason, str]]:
    """Which workers to kill, and why: over the per-worker limit (OOM while a task runs,
    a recycle between tasks), or the newest task's worker when the node is over its
    threshold."""
    kills: list[tuple[WorkerHandle, KillReason, str]] = []
    for handle in handles:
        if handle.kill_reason is not KillReason.NONE or not limit_bytes:
            continue
        rss = rss_of(handle)
        if rss is None or rss <= limit_bytes:
            continue
        detail = (f"worker process {handle.pid} used {rss // 2**20} MiB, over its limit of "
                  f"{limit_bytes // 2**20} MiB")
        if handle.running:
            kills.append((handle, KillReason.OOM, detail + f" while running task {handle.running}"))
        else:
            kills.append((handle, KillReason.RECYCLE, detail))
    used, total = used_total
    if total and used / total > threshold:
        chosen = {id(h) for h, _, _ in kills}
        victim = pick_oom_victim(h for h in handles if id(h) not in chosen)
        if victim is not None:
            kills.append((victim, KillReason.OOM, (
                f"node memory at {used / total:.0%} of {total // 2**20} MiB, over the "
                f"{threshold:.0%} threshold: killed worker process {victim.pid} running task "
                f"{victim.running}")))
    return kills

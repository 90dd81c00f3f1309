"""The lineage cache: what this process submitted, so a Redis that lost it can be given it
again (with what it depends on, dependencies first) and re-running it rebuilds its result."""

from __future__ import annotations

import threading
from collections import OrderedDict
from collections.abc import Iterable

from .records import Submission


class LineageCache:
    """The newest submissions up to a byte budget, and the pickled functions they run.
    Thread-safe: the sender adds to it while getters read it."""

    def __init__(self, budget_bytes: int) -> None:
        self._lock = threading.Lock()
        self._specs: OrderedDict[str, Submission] = OrderedDict()
        self._bytes = 0
        self._budget = budget_bytes
        self._functions: dict[str, bytes] = {}

    def add_function(self, digest: str, blob: bytes) -> None:
        with self._lock:
            self._functions[digest] = blob

    def function(self, digest: str) -> bytes | None:
        with self._lock:
            return self._functions.get(digest)

    def has_function(self, digest: str) -> bool:
        with self._lock:
            return digest in self._functions

    def add(self, submissions: Iterable[Submission]) -> None:
        with self._lock:
            for sub in submissions:
                old = self._specs.pop(sub.task_id, None)
                self._bytes -= len(old.args_blob) if old else 0
                self._specs[sub.task_id] = sub
                self._bytes += len(sub.args_blob)
            while self._bytes > self._budget and self._specs:
                self._bytes -= len(self._specs.popitem(last=False)[1].args_blob)

    def get(self, task_id: str) -> Submission | None:
        with self._lock:
            return self._specs.get(task_id)

    def __contains__(self, task_id: object) -> bool:
        with self._lock:
            return task_id in self._specs

    def closure(self, task_ids: Iterable[str]) -> list[Submission]:
        """The held specs of these tasks and of every task they depend on (recursively),
        each once, dependencies before dependents: the order Redis must receive them in."""
        out: list[Submission] = []
        seen: set[str] = set()
        with self._lock:
            for root in task_ids:
                stack: list[tuple[str, bool]] = [(root, False)]
                while stack:
                    task_id, expanded = stack.pop()
                    if expanded:
                        out.append(self._specs[task_id])
                        continue
                    if task_id in seen or task_id not in self._specs:
                        continue
                    seen.add(task_id)
                    stack.append((task_id, True))
                    stack.extend((dep, False) for dep in reversed(self._specs[task_id].deps))
        return out

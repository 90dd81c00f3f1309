"""The completion router: completion notices in, waiting getters woken.

Tasks this process submitted name its notification list; Redis adds the list of anyone who
`watch`es a task. A listener thread pops the list in batches (a small result rides along in
its notice) and hands each id to the getters waiting for it. A getter that sees nothing for
SAFETY_POLL_S asks its `check` (Redis, bounded by its deadline) in case a notice was lost.
When a getter has waited LISTEN_WAIT_S with nothing arriving, the listener calls `on_tick`
(the client's periodic duties), and after an outage it calls `on_reconnect`. Getters wait on
a `Broadcast` (wakeup.py), not a threading.Condition: a Ctrl-C in a getter cannot leave the
lock it shares with the listener held.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import OrderedDict
from collections.abc import Iterable, Sequence
from typing import Callable

from ..spec import ITEM_SEP, split_object_id
from ..store import Store, backoff, describe
from .wakeup import Broadcast

log = logging.getLogger(__name__)

SAFETY_POLL_S = 1.0
LISTEN_WAIT_S = 1.0
DONE_MEMORY = 100_000
DONE_MEMORY_BYTES = 64 * 1024 * 1024

Check = Callable[[list[str]], set[str]]


class Waiting:
    """What one waiter waits for: ids move from `pending` to `ready` as notices arrive. An id
    `<task>#<i>` (one of a task's several values) is ready on its own notice or its task's."""

    __slots__ = ("pending", "ready", "items")

    def __init__(self) -> None:
        self.pending: set[str] = set()
        self.ready: set[str] = set()
        self.items: dict[str, set[str]] = {}     # task id -> its value ids in `pending`

    def add(self, object_ids: Iterable[str]) -> None:
        for object_id in object_ids:
            self.pending.add(object_id)
            task_id, index = split_object_id(object_id)
            if index is not None:
                self.items.setdefault(task_id, set()).add(object_id)

    def arrived(self, object_id: str) -> None:
        if object_id in self.pending:
            self.pending.discard(object_id)
            self.ready.add(object_id)
        for item in self.items.pop(object_id, ()):   # the task ended: its values are final
            if item in self.pending:
                self.pending.discard(item)
                self.ready.add(item)

    def found(self, object_ids: Iterable[str]) -> None:
        for object_id in object_ids:
            if object_id in self.pending:
                self.pending.discard(object_id)
                self.ready.add(object_id)


class CompletionRouter:
    def __init__(self, store: Store, notify_key: str, *,
                 on_reconnect: Callable[[], None] = lambda: None,
                 on_tick: Callable[[], None] = lambda: None) -> None:
        self.store = store
        self.notify_key = notify_key
        self._on_reconnect = on_reconnect
        self._on_tick = on_tick
        self._bc = Broadcast()
        # Finished ids we were told of, with the result when it came inline.
        self._done: OrderedDict[str, bytes | None] = OrderedDict()
        self._done_bytes = 0
        self._mine: OrderedDict[str, None] = OrderedDict()   # we will be notified of these
        self._waiting: list[Waiting] = []
        self._broken: set[str] = set()    # the lists whose listener lost Redis
        self._stop = threading.Event()
        self._threads: list[threading.Thread] = []

    def start(self) -> None:
        # Partitioned (partitions.py), each partition notifies the client's list there, and
        # a blocking pop waits on one partition: one listener for each.
        for part, key in enumerate(self.store.notify_keys(self.notify_key)):
            thread = threading.Thread(target=self._run, args=(key, part == 0), daemon=True,
                                      name="ftqueue-listener" + (f"-{part}" if part else ""))
            thread.start()
            self._threads.append(thread)

    def stop(self, join_s: float) -> None:
        self._stop.set()
        deadline = time.monotonic() + join_s
        for thread in self._threads:
            if thread is not threading.current_thread():
                thread.join(timeout=max(0.0, deadline - time.monotonic()))

    # -- the listener ----------------------------------------------------------------------

    def _run(self, key: str, duties: bool) -> None:
        failures = 0
        while not self._stop.is_set():
            if self.listen_step(LISTEN_WAIT_S, key, duties):
                failures = 0
            else:
                self._stop.wait(backoff(failures))
                failures += 1

    def listen_step(self, timeout_s: float, key: str | None = None, duties: bool = True) -> bool:
        """Pop what arrived at `key` (the notify key by default), waiting up to timeout_s for
        the first notice, and deliver it; False if Redis was unavailable. With `duties`,
        this listener also runs the client's periodic duties and its reconnect."""
        key = key or self.notify_key
        try:
            items = self.store.pop_notifications(key, timeout_s=timeout_s)
        except Exception as e:  # noqa: BLE001 - keep listening across Redis outages
            if key not in self._broken and not self._stop.is_set():
                log.info("ftqueue: lost Redis while listening for completions: %s",
                         describe(e))
            self._broken.add(key)
            return False
        if key in self._broken:
            self._broken.discard(key)
            log.info("ftqueue: Redis is back")
            self._on_reconnect()
        self.deliver(items)
        if duties and not items and self.has_waiters():   # someone waited a while for nothing
            self._on_tick()
        return True

    def deliver(self, items: Iterable[tuple[str, bytes | None]]) -> None:
        """These tasks are final (with their inline result, if any)."""
        with self._bc.lock:
            for task_id, blob in items:
                old = self._done.pop(task_id, None)
                self._done_bytes += (len(blob) if blob else 0) - (len(old) if old else 0)
                self._done[task_id] = blob
                for waiting in self._waiting:
                    waiting.arrived(task_id)
            while len(self._done) > DONE_MEMORY or self._done_bytes > DONE_MEMORY_BYTES:
                # Forgotten here, such a task is found final by a check instead.
                task_id, blob = self._done.popitem(last=False)
                self._done_bytes -= len(blob) if blob else 0
                self._mine.pop(task_id, None)
            self._bc.notify_all()

    # -- the registry ----------------------------------------------------------------------

    def expect(self, task_ids: Iterable[str]) -> None:
        """We will be notified when these end (we submitted them)."""
        with self._bc.lock:
            for task_id in task_ids:
                self._mine[task_id] = None
            while len(self._mine) > DONE_MEMORY:
                self._mine.popitem(last=False)

    def unfinished(self) -> list[str]:
        """Our tasks that we were not told have ended."""
        with self._bc.lock:
            return [i for i in self._mine if i not in self._done]

    def inline(self, task_ids: Iterable[str]) -> dict[str, bytes]:
        """The inline results we hold for these ids."""
        with self._bc.lock:
            return {i: b for i in task_ids if (b := self._done.get(i)) is not None}

    def forget(self, task_ids: Iterable[str]) -> None:
        with self._bc.lock:
            for task_id in task_ids:
                blob = self._done.pop(task_id, None)
                self._done_bytes -= len(blob) if blob else 0
                self._mine.pop(task_id, None)

    def has_waiters(self) -> bool:
        """Someone waits for a task not yet final (a standing watch with nothing in it, as
        the futures' resolver keeps, is not waiting: its process has no duties to run)."""
        with self._bc.lock:
            return any(w.pending for w in self._waiting)

    def _is_mine(self, object_id: str) -> bool:
        """We will be told of it: we submitted its task (call with the lock held)."""
        return object_id in self._mine or (
            ITEM_SEP in object_id and split_object_id(object_id)[0] in self._mine)

    def told(self, object_id: str) -> bool:
        """A notice for this very id arrived (and was not read yet)."""
        with self._bc.lock:
            return object_id in self._done

    def is_done(self, object_id: str) -> bool:
        """We were told it is final (call with the lock held)."""
        return object_id in self._done or (
            ITEM_SEP in object_id and split_object_id(object_id)[0] in self._done)

    def wait(self, task_ids: Sequence[str], num_ready: int, deadline: float | None,
             check: Check, on_block: Callable[[bool], None] | None = None) -> set[str]:
        """Block until at least num_ready of task_ids are final or the deadline passes;
        return those that are. `check(ids)` asks Redis (registering us as a waiter)."""
        unique = set(task_ids)
        with self._bc.lock:
            ready = {i for i in unique if self.is_done(i)}
            unknown = [i for i in task_ids if i not in ready and not self._is_mine(i)]
        if len(ready) < num_ready and unknown:
            ready |= check(list(dict.fromkeys(unknown)))
        # Registered, the listener moves arriving ids from `pending` into `ready` under the
        # lock: a wake-up costs what arrived, not a scan of every id waited for.
        waiting = Waiting()
        with self._bc.lock:
            ready |= {i for i in unique if self.is_done(i)}
            waiting.add(unique - ready)
            waiting.ready |= ready
            self._waiting.append(waiting)
        blocked = False
        try:
            while True:
                with self._bc.lock:
                    if len(waiting.ready) >= num_ready:
                        return set(waiting.ready)
                left = None if deadline is None else deadline - time.monotonic()
                if left is not None and left <= 0:
                    with self._bc.lock:
                        return set(waiting.ready)
                if not blocked and on_block is not None:
                    on_block(True)
                    blocked = True
                self._wait_a_while(waiting, num_ready, left, check)
        finally:
            with self._bc.lock:
                self._waiting.remove(waiting)
            if blocked and on_block is not None:
                on_block(False)

    def _wait_a_while(self, waiting: Waiting, num_ready: int, left: float | None,
                      check: Check) -> None:
        """Wait for notices up to SAFETY_POLL_S; if none came, ask Redis."""
        wait_s = SAFETY_POLL_S if left is None else min(left, SAFETY_POLL_S)
        if self._bc.wait_for(lambda: len(waiting.ready) >= num_ready,
                             time.monotonic() + wait_s):
            return
        with self._bc.lock:
            todo = list(waiting.pending)
        found = check(todo) if todo else set()
        with self._bc.lock:
            waiting.found(found)

    # -- a standing watch (futures) ----------------------------------------------------------

    def open_watch(self) -> Waiting:
        """A waiting entry that stays registered: ids are added and taken as they end."""
        waiting = Waiting()
        with self._bc.lock:
            self._waiting.append(waiting)
        return waiting

    def add_to_watch(self, waiting: Waiting, object_ids: Iterable[str]) -> None:
        with self._bc.lock:
            for object_id in object_ids:
                if self.is_done(object_id):
                    waiting.ready.add(object_id)
                else:
                    waiting.add([object_id])
            self._bc.notify_all()

    def found_for_watch(self, waiting: Waiting, object_ids: Iterable[str]) -> None:
        with self._bc.lock:
            waiting.found(object_ids)

    def take_ready(self, waiting: Waiting, deadline: float,
                   also: Callable[[], bool] = lambda: False) -> set[str]:
        """Wait until some ids of the watch are final (or `also()`, or the deadline); take
        them out of it."""
        self._bc.wait_for(lambda: bool(waiting.ready) or also(), deadline)
        with self._bc.lock:
            ready, waiting.ready = waiting.ready, set()
            return ready

    def poke(self) -> None:
        """Wake every waiter to re-check (something besides a notice changed)."""
        with self._bc.lock:
            self._bc.notify_all()

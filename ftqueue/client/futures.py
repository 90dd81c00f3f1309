"""Futures of refs (`ref.future()`, `await ref`): one thread resolves them all.

A future's id joins a standing watch in the completion router, so the listener that wakes
getters wakes the resolver too: awaiting ten thousand refs costs no thread per ref. The
resolver reads a value only once its id is final (most small results rode along in the
notice), and asks Redis about the ids it still waits for every SAFETY_POLL_S, as a getter
does, in case a notice was lost.
"""

from __future__ import annotations

import logging
import threading
import time
from concurrent.futures import Future
from typing import TYPE_CHECKING, Any

from ..exceptions import FtqueueConnectionError
from .calls import DeadlinePassed
from .completions import SAFETY_POLL_S

if TYPE_CHECKING:
    from .client import Client

log = logging.getLogger(__name__)

READ_DEADLINE_S = 30.0   # one read of final results; a slower Redis is retried next round


class FutureResolver:
    def __init__(self, client: Client) -> None:
        self.client = client
        self._lock = threading.Lock()
        self._futures: dict[str, list[tuple[Future[Any], bool]]] = {}
        self._new: list[str] = []
        self._watch = client.router.open_watch()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def future(self, object_id: str, want_value: bool = True) -> Future[Any]:
        """Completed with the value (or its error); with want_value=False, with None once the
        id is final (a generator uses it to learn that its next value exists)."""
        future: Future[Any] = Future()
        with self._lock:
            self._futures.setdefault(object_id, []).append((future, want_value))
            self._new.append(object_id)
            if self._thread is None:
                self._thread = threading.Thread(target=self._run, name="ftqueue-futures",
                                                daemon=True)
                self._thread.start()
        self.client.router.poke()
        return future

    def stop(self) -> None:
        self._stop.set()
        self.client.router.poke()

    def _run(self) -> None:
        last_check = time.monotonic()
        while not self._stop.is_set():
            with self._lock:
                new, self._new = self._new, []
            if new:
                self._register(new)
            ready = self.client.router.take_ready(
                self._watch, time.monotonic() + SAFETY_POLL_S,
                also=lambda: bool(self._new) or self._stop.is_set())
            if ready:
                self._resolve(ready)
            elif time.monotonic() - last_check >= SAFETY_POLL_S:
                last_check = time.monotonic()
                with self._lock:
                    waiting = [i for i in self._futures if i not in ready]
                if waiting:
                    self._register(waiting)

    def _register(self, object_ids: list[str]) -> None:
        """Watch these ids; those Redis says are final already are ready."""
        refused = [i for i in object_ids if self.client.queue.error(i) is not None]
        rest = [i for i in dict.fromkeys(object_ids) if i not in refused]
        self.client.queue.flush(time.monotonic() + READ_DEADLINE_S)
        self.client.router.add_to_watch(self._watch, rest)
        found = self.client.check(rest, time.monotonic() + READ_DEADLINE_S)
        self.client.router.found_for_watch(self._watch, found | set(refused))

    def _resolve(self, ready: set[str]) -> None:
        for object_id in ready:
            with self._lock:
                waiting = self._futures.pop(object_id, [])
            waiting = [(f, v) for f, v in waiting if not f.cancelled()]
            if not waiting:
                continue
            if not any(v for _, v in waiting):
                for future, _ in waiting:
                    _settle(future, None, None)
                continue
            try:
                values = self.client.results.fetch([object_id],
                                                   time.monotonic() + READ_DEADLINE_S)
            except (DeadlinePassed, FtqueueConnectionError):
                values = None     # Redis stalled or away: not the task's outcome, read again
            except BaseException as e:  # noqa: BLE001 - the future's to raise
                for future, want_value in waiting:
                    if want_value:
                        _settle(future, None, e)
                    else:
                        _settle(future, None, None)
                continue
            if values is None:    # being rebuilt, or not read: watch it again
                with self._lock:
                    self._futures.setdefault(object_id, []).extend(waiting)
                    self._new.append(object_id)
                continue
            for future, want_value in waiting:
                _settle(future, values[0] if want_value else None, None)


def _settle(future: Future[Any], value: Any, error: BaseException | None) -> None:
    if future.cancelled():
        return
    try:
        if error is not None:
            future.set_exception(error)
        else:
            future.set_result(value)
    except Exception as e:  # noqa: BLE001 - cancelled meanwhile
        log.debug("ftqueue: a future was settled twice: %s", e)

"""`ObjectRefGenerator`: what `.remote()` of a generator function returns at once.

Iterating it (`for ref in gen`, `async for ref in gen`) gives a ref per yielded value as
soon as the worker has stored it: value i of task t is the object `t#i`. A retried attempt
yields again from the start, but an index already stored keeps its first value and tells no
one again, so a consumer never sees a value twice. When the task has failed, the next ref is
the task's own, whose `get` raises its error; after that the iteration ends.
"""

from __future__ import annotations

import asyncio
from typing import TYPE_CHECKING, Any, Callable

from .spec import ObjectRef, item_id

if TYPE_CHECKING:
    from .client import Client

_client: Callable[[], Client] | None = None


def bind_client(provider: Callable[[], Client] | None) -> None:
    """Injected by `api`, as for remote functions."""
    global _client
    _client = provider


def _connected() -> Client:
    if _client is None:
        raise RuntimeError("ftqueue is not set up: import ftqueue (its api binds the client)")
    return _client()


class ObjectRefGenerator:
    """The refs of a generator task's values, in order, as they are produced."""

    def __init__(self, task_ref: ObjectRef, index: int = 0) -> None:
        self._task = task_ref
        self._index = index
        self._ended = False

    def completed(self) -> ObjectRef:
        """The task's own ref: `get` of it waits for the generator to end (its value is how
        many values it yielded) and raises its error if it failed."""
        return self._task

    def task_id(self) -> str:
        return self._task.task_id()

    def __iter__(self) -> ObjectRefGenerator:
        return self

    def __next__(self) -> ObjectRef:
        return self._take(_connected().next_value(self._task._id, self._index, None))

    def next_ready(self, timeout: float | None = None) -> ObjectRef:
        """The next ref, waiting at most `timeout` seconds (GetTimeoutError after that)."""
        return self._take(_connected().next_value(self._task._id, self._index, timeout))

    def __aiter__(self) -> ObjectRefGenerator:
        return self

    async def __anext__(self) -> ObjectRef:
        if self._ended:
            raise StopAsyncIteration
        client = _connected()
        # Wait without a thread of our own: the resolver says when value i (or the end) is
        # there; deciding which then is one quick read.
        await asyncio.wrap_future(client.futures.future(
            item_id(self._task._id, self._index), want_value=False))
        try:
            return self._take(client.next_value(self._task._id, self._index, None))
        except StopIteration:
            raise StopAsyncIteration from None

    def _take(self, ref: ObjectRef | None) -> ObjectRef:
        if self._ended or ref is None:
            self._ended = True
            raise StopIteration
        if ref == self._task:         # the task failed: its error, then the end
            self._ended = True
        else:
            self._index += 1
        return ref

    def __repr__(self) -> str:
        return f"ObjectRefGenerator({self._task._id}, next={self._index})"

    def __reduce__(self) -> Any:
        return (ObjectRefGenerator, (self._task, self._index))

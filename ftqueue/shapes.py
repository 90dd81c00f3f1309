"""Which resource shapes a worker asks its claims for (docs/design.md, "Resources").

Tasks wait in one slot per queue and shape. A worker names, per queue, the shapes that its
node could ever fit (what it offers in total), read from the queue's set of shapes at most
once per REFRESH_S; the claim then takes from the first of them that fits what is free now.
The order turns at every claim, so one busy shape cannot starve the others. At most
MAX_SHAPES per queue are named, which bounds a claim's Redis work whatever the number of
shapes in use; with more, each claim names the next MAX_SHAPES of them (a queue's set of
shapes only grows: a fixed choice of MAX_SHAPES left every other shape's tasks unclaimed
forever), so every shape is named within a few claims (an idle worker claims at least
once per second).
"""

from __future__ import annotations

import time
from collections.abc import Mapping, Sequence
from typing import Callable

from . import resources
from .keys import DEFAULT_SHAPE

REFRESH_S = 1.0
MAX_SHAPES = 16


class ShapeChooser:
    def __init__(self, offered: Mapping[str, int], queues: Sequence[str],
                 read_shapes: Callable[[Sequence[str]], dict[str, list[str]]],
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.offered = dict(offered)
        self.queues = list(queues)
        self._read = read_shapes
        self._clock = clock
        self._known: dict[str, list[str]] = {q: self._fitting([]) for q in self.queues}
        self._read_at = float("-inf")
        self._turn = 0

    def _fitting(self, shapes: Sequence[str]) -> list[str]:
        every = [DEFAULT_SHAPE, *sorted(s for s in set(shapes) if s != DEFAULT_SHAPE)]
        if not self.offered:          # a node that declares nothing takes every shape
            return every
        return [s for s in every if resources.fits(resources.parse_shape(s), self.offered)]

    def for_claim(self) -> dict[str, list[str]]:
        """Per queue, the shapes to try, rotated."""
        now = self._clock()
        if now - self._read_at >= REFRESH_S:
            self._read_at = now
            try:
                found = self._read(self.queues)
            except Exception:  # noqa: BLE001 - keep the shapes we knew; the claim says more
                found = None
            if found is not None:
                self._known = {q: self._fitting(found.get(q, [])) for q in self.queues}
        self._turn += 1
        out = {}
        for q, shapes in self._known.items():
            step = MAX_SHAPES if len(shapes) > MAX_SHAPES else 1
            k = (self._turn * step) % len(shapes) if shapes else 0
            out[q] = (shapes[k:] + shapes[:k])[:MAX_SHAPES]
        return out

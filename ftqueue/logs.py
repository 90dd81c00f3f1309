"""Diagnostic lines of ftqueue's own processes, through `logging`.

A node's console may go away (a closed pipe, `docker logs` detached): a line that cannot be
written is dropped, never raised into the code that logged it, so a broken console can
neither fail a task nor stop a node.
"""

from __future__ import annotations

import logging
import sys
import threading
from typing import TextIO


class ConsoleHandler(logging.StreamHandler):  # type: ignore[type-arg]
    """Writes whole lines to the current sys.stderr; drops what cannot be written."""

    def __init__(self, stream: TextIO | None = None) -> None:
        super().__init__(stream)
        self._fixed = stream is not None

    def emit(self, record: logging.LogRecord) -> None:
        if not self._fixed:
            self.stream = sys.__stderr__ or sys.stderr
        try:
            # One write per line, so lines of several processes sharing a console interleave
            # only at line boundaries.
            self.stream.write(self.format(record) + "\n")
            self.stream.flush()
        except Exception:  # noqa: BLE001 - the console is gone or closed: drop the line
            pass

    def handleError(self, record: logging.LogRecord) -> None:  # noqa: N802 - logging's name
        pass


def setup_console(prefix: str, level: int = logging.INFO) -> logging.Handler:
    """Send ftqueue's log lines to this process's console as `<prefix>: <message>`."""
    root = logging.getLogger("ftqueue")
    for handler in list(root.handlers):
        if isinstance(handler, ConsoleHandler):
            root.removeHandler(handler)
    handler = ConsoleHandler()
    handler.setFormatter(logging.Formatter(prefix.replace("%", "%%") + ": %(message)s"))
    root.addHandler(handler)
    root.setLevel(level)
    root.propagate = False
    return handler


class LogOnce:
    """Logs a condition when it starts and when it clears, not at every retry."""

    def __init__(self, logger: logging.Logger) -> None:
        self._logger = logger
        self._active: set[str] = set()
        self._lock = threading.Lock()

    def start(self, key: str, message: str, level: int = logging.WARNING) -> bool:
        with self._lock:
            if key in self._active:
                return False
            self._active.add(key)
        self._logger.log(level, message)
        return True

    def clear(self, key: str, message: str | None = None) -> None:
        with self._lock:
            if key not in self._active:
                return
            self._active.discard(key)
        if message:
            self._logger.info(message)

    def active(self, key: str) -> bool:
        return key in self._active

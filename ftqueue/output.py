"""Task output: what a task prints is kept per attempt in Redis (bounded) and published for
the driver that submitted it, which echoes it prefixed like Ray: `(f pid=…, host=…) line`."""

from __future__ import annotations

import json
import logging
import os
import socket
import sys
import threading
from typing import Any, TextIO

from .settings import DEFAULT_LOG_MAX_BYTES, DEFAULT_RESULT_TTL_S

FLUSH_INTERVAL_S = 0.2
log = logging.getLogger("ftqueue.output")
TRUNCATED = "\n[ftqueue: output truncated at FTQUEUE_LOG_MAX_BYTES]\n"


class _Stream:
    """Stands in for sys.stdout/sys.stderr while a task runs: copies to the real stream and
    to the capture."""

    def __init__(self, capture: OutputCapture, name: str, real: TextIO) -> None:
        self._capture, self._name, self._real = capture, name, real

    def write(self, text: str) -> int:
        if self._capture.copy and not self._capture.console_gone:
            try:
                self._real.write(text)
            except (OSError, ValueError) as e:
                self._capture.stdio_failed(e)
        self._capture.add(self._name, text)
        return len(text)

    def flush(self) -> None:
        if self._capture.console_gone:
            return
        try:
            self._real.flush()
        except (OSError, ValueError) as e:
            self._capture.stdio_failed(e)

    def __getattr__(self, name: str) -> Any:  # fileno, encoding, isatty, ...
        return getattr(self._real, name)


class OutputCapture:
    """Collects a task's output and ships it every FLUSH_INTERVAL_S and at the task's end."""

    def __init__(self, store: Any, copy: bool = True,
                 max_bytes: int = DEFAULT_LOG_MAX_BYTES) -> None:
        self.store = store
        self.copy = copy
        self.keys = store.keys
        self.max_bytes = max_bytes
        self.host = socket.gethostname()
        self._lock = threading.Lock()
        self._chunks: list[tuple[str, str]] = []
        self._task: tuple[str, int, str, str, int] | None = None   # id, attempt, job, func, ttl
        self._stored = 0
        self._offset = 0              # bytes of this attempt's log key written so far
        self._ship_lock = threading.Lock()
        self._real_out, self._real_err = sys.stdout, sys.stderr
        self._wake = threading.Event()
        self.console_gone = False     # the node's console is closed: stop copying to it
        self.stdio_closed = False     # this process's fd 1 or 2 was closed: recycle it
        threading.Thread(target=self._loop, name="ftqueue-output", daemon=True).start()

    def stdio_failed(self, error: BaseException) -> None:
        """Writing to the real stream failed. A broken console (EPIPE) is the node's and
        stays broken for every worker: stop copying. A closed stream or descriptor in this
        process (a task ran `os.close(1)`) is this worker's: it is recycled after the task."""
        if isinstance(error, BrokenPipeError):
            self.console_gone = True
        else:
            self.stdio_closed = True
            self.console_gone = True

    def _check_descriptors(self) -> None:
        for fd in (1, 2):
            try:
                os.fstat(fd)
            except OSError:
                self.stdio_closed = True

    def start(self, task_id: str, attempt: int, job_id: str, func: str, ttl_s: int) -> None:
        with self._lock:
            self._task, self._chunks = (task_id, attempt, job_id, func, ttl_s), []
            self._stored = self._offset = 0
        sys.stdout = _Stream(self, "stdout", self._real_out)
        sys.stderr = _Stream(self, "stderr", self._real_err)

    def finish(self) -> None:
        """Restore the streams and ship what is left; never raises (losing output must not
        lose the task's outcome)."""
        sys.stdout, sys.stderr = self._real_out, self._real_err
        self._check_descriptors()
        try:
            self.ship()
        except Exception as e:  # noqa: BLE001 - output is best effort
            log.debug("shipping task output failed: %s", e)
        with self._lock:
            self._task = None

    def add(self, stream: str, text: str) -> None:
        with self._lock:
            if self._task is not None and text:
                self._chunks.append((stream, text))

    def _loop(self) -> None:
        while True:
            self._wake.wait(FLUSH_INTERVAL_S)
            try:
                self.ship()
            except Exception as e:  # noqa: BLE001 - output is best effort; the task goes on
                log.debug("shipping task output failed: %s", e)
            if os.getppid() == 1:
                return

    def ship(self) -> None:
        # One shipment at a time, so each writes at the offset the last one ended at.
        with self._ship_lock:
            self._ship()

    def _ship(self) -> None:
        with self._lock:
            chunks, self._chunks = self._chunks, []
            task = self._task
            if not chunks or task is None:
                return
            task_id, attempt, job_id, func, ttl_s = task
            text = "".join(t for _, t in chunks)
            room = self.max_bytes - self._stored
            stored = text[:max(0, room)]
            if len(text) > room >= 0:
                stored += TRUNCATED
            self._stored += len(text) if room >= 0 else 0
            if room < 0:
                stored = ""
            offset = self._offset
        data = stored.encode(errors="replace")
        pipe = self.store.redis.pipeline(transaction=False)
        if data:
            key = self.store.keys_for(task_id).log(task_id, attempt)
            # SETRANGE at a known offset, not APPEND: a command sent twice (redis-py's
            # cluster pipeline sends again after a connection error) writes the same bytes.
            pipe.setrange(key, offset, data)
            pipe.expire(key, ttl_s or DEFAULT_RESULT_TTL_S)
        messages = [json.dumps({"func": func, "pid": _pid(), "host": self.host,
                                "stream": stream, "text": part[:room]})
                    for stream, part in (_merge(chunks) if room > 0 else [])]
        # redis-py's cluster pipelines refuse PUBLISH: on a cluster it is a call of its own.
        publish = pipe if not self.store.cluster else self.store.redis
        for message in messages:
            publish.publish(self.keys.log_channel(job_id), message)
        pipe.execute()
        with self._lock:
            # Advanced only once written: a shipment lost to an outage leaves no gap (a
            # SETRANGE past the end would pad with zero bytes).
            if self._task is task:
                self._offset = offset + len(data)


def _merge(chunks: list[tuple[str, str]]) -> list[tuple[str, str]]:
    out: list[tuple[str, str]] = []
    for stream, text in chunks:
        if out and out[-1][0] == stream:
            out[-1] = (stream, out[-1][1] + text)
        else:
            out.append((stream, text))
    return out


def _pid() -> int:
    return os.getpid()


class DriverEcho:
    """Prints the output of this job's tasks on the driver's console as it arrives."""

    def __init__(self, store: Any, job_id: str) -> None:
        self.store, self.channel = store, store.keys.log_channel(job_id)
        self.pubsub = self._subscribe()
        self._stop = threading.Event()
        self._partial: dict[tuple[str, str, int], str] = {}
        self.thread = threading.Thread(target=self._loop, name="ftqueue-log-echo", daemon=True)
        self.thread.start()

    def _loop(self) -> None:
        while not self._stop.is_set():
            try:
                message = self.pubsub.get_message(timeout=0.5)
            except Exception:  # noqa: BLE001 - Redis outage: echo resumes when it is back
                if self._stop.wait(1.0):
                    return
                self._resubscribe()
                continue
            if message and message.get("type") == "message":
                try:
                    self.echo(json.loads(message["data"]))
                except (ValueError, KeyError):
                    continue

    def _subscribe(self) -> Any:
        pubsub = self.store.redis.pubsub(ignore_subscribe_messages=True)
        pubsub.subscribe(self.channel)
        return pubsub

    def _resubscribe(self) -> None:
        """A cluster's subscription stays on the node it was made on, which may be gone
        (failed over): subscribe again where the map of the slots now says."""
        if not self.store.cluster:
            return      # a plain client reconnects to the same address by itself
        try:
            pubsub = self._subscribe()
        except Exception as e:  # noqa: BLE001 - still down: tried again after the next error
            log.debug("subscribing to the task output again failed: %s", e)
            return
        old, self.pubsub = self.pubsub, pubsub
        try:
            old.close()
        except Exception as e:  # noqa: BLE001 - closing a dead connection
            log.debug("closing the log subscription failed: %s", e)

    def echo(self, item: dict[str, Any]) -> None:
        stream = sys.stderr if item["stream"] == "stderr" else sys.stdout
        prefix = f"({item['func']} pid={item['pid']}, host={item['host']}) "
        key = (item["stream"], item["host"], item["pid"])
        text = self._partial.pop(key, "") + item["text"]
        *lines, rest = text.split("\n")
        if rest:
            self._partial[key] = rest
        try:   # whole lines, one write each, so they do not interleave with the driver's own
            for line in lines:
                stream.write(prefix + line + "\n")
            stream.flush()
        except (OSError, ValueError):
            pass   # the driver's console is gone: the output stays in Redis (ftqueue logs)

    def close(self) -> None:
        self._stop.set()
        self.thread.join(timeout=2)
        try:
            self.pubsub.close()
        except Exception as e:  # noqa: BLE001 - closing a dead connection
            log.debug("closing the log subscription failed: %s", e)

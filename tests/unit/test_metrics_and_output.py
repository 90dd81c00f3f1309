"""Cross-thread reads and broken streams: the metrics thread never iterates the
supervisor's worker table; a closed console never fails a task."""

from __future__ import annotations

import io

import fakeredis

from ftqueue.metrics import ClusterCollector
from ftqueue.output import OutputCapture, _Stream
from ftqueue.state import StateReader
from ftqueue.store import Store


class NodeView:
    view = (3, 1)

    @property
    def workers(self):   # the supervisor's own table: touching it from here is the bug
        raise AssertionError("the metrics thread iterated the supervisor's worker table")


def test_metrics_read_the_published_snapshot_only():
    store = Store(fakeredis.FakeRedis(), "ftq")
    families = {f.name: f for f in ClusterCollector(StateReader(store), NodeView()).collect()}
    assert families["ftqueue_node_workers"].samples[0].value == 3
    assert families["ftqueue_node_running_tasks"].samples[0].value == 1


class Broken(io.StringIO):
    def __init__(self, error: BaseException) -> None:
        super().__init__()
        self.error = error

    def write(self, text: str) -> int:
        raise self.error

    def flush(self) -> None:
        raise self.error


def capture() -> OutputCapture:
    return OutputCapture(Store(fakeredis.FakeRedis(), "ftq"))


def test_a_broken_console_is_dropped_not_raised():
    cap = capture()
    stream = _Stream(cap, "stdout", Broken(BrokenPipeError()))
    assert stream.write("hello\n") == 6
    stream.flush()
    assert cap.console_gone and not cap.stdio_closed   # the node's: stop copying, go on


def test_a_closed_descriptor_marks_the_worker_for_recycling():
    cap = capture()
    stream = _Stream(cap, "stdout", Broken(OSError(9, "Bad file descriptor")))
    stream.write("hello\n")
    assert cap.stdio_closed


class Recorder(io.StringIO):
    def __init__(self) -> None:
        super().__init__()
        self.writes: list[str] = []

    def write(self, text: str) -> int:
        self.writes.append(text)
        return len(text)


def test_node_lines_are_written_whole_and_a_dead_console_is_ignored():
    import logging

    from ftqueue.logs import ConsoleHandler

    stream = Recorder()
    handler = ConsoleHandler(stream)
    handler.setFormatter(logging.Formatter("ftqueue node n1: %(message)s"))
    record = logging.LogRecord("ftqueue.node", logging.WARNING, "", 0, "worker died", None, None)
    handler.emit(record)
    assert stream.writes == ["ftqueue node n1: worker died\n"]     # one write: never split
    broken = ConsoleHandler(Broken(BrokenPipeError()))
    broken.emit(record)                                              # no exception


def test_driver_echo_writes_whole_prefixed_lines(monkeypatch):
    import sys

    from ftqueue.output import DriverEcho

    echo = DriverEcho.__new__(DriverEcho)
    echo._partial = {}
    out = Recorder()
    monkeypatch.setattr(sys, "stdout", out)
    item = {"stream": "stdout", "func": "f", "pid": 7, "host": "h"}
    echo.echo(dict(item, text="hel"))
    echo.echo(dict(item, text="lo\nwor"))
    echo.echo(dict(item, text="ld\n"))
    assert out.writes == ["(f pid=7, host=h) hello\n", "(f pid=7, host=h) world\n"]

"""Cross-thread reads and broken streams: the metrics thread never iterates the
supervisor's worker table; a closed console never fails a task."""

from __future__ import annotations

import io

import fakeredis
import pytest

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


class _ResendingRedis:
    """A client whose pipelines send every command a second time after executing, as
    redis-py's cluster pipeline does after a connection error on a reply."""

    def __init__(self, real: fakeredis.FakeRedis) -> None:
        self.real = real

    def pipeline(self, transaction: bool = False):
        pipe = self.real.pipeline(transaction=transaction)
        execute = pipe.execute

        def execute_twice():
            sent = [args for args, _options in pipe.command_stack]
            out = execute()
            for args in sent:
                self.real.execute_command(*args)
            return out

        pipe.execute = execute_twice
        return pipe


def _capture_on(client) -> OutputCapture:
    from types import SimpleNamespace

    from ftqueue.keys import Keys

    keys = Keys("ftq")
    return OutputCapture(SimpleNamespace(redis=client, keys=keys, cluster=False,
                                         keys_for=lambda _id: keys), copy=False)


def test_task_output_sent_twice_is_stored_once():
    real = fakeredis.FakeRedis()
    cap = _capture_on(_ResendingRedis(real))
    cap.start("t1", 1, "01", "f", 60)
    for line in ("one\n", "two\n"):
        cap.add("stdout", line)
        cap.ship()
    assert real.get("ftq:log:t1:1") == b"one\ntwo\n"


def test_task_output_lost_to_an_outage_leaves_no_gap():
    import redis as redis_py

    real = fakeredis.FakeRedis()

    class Once:
        failed = False

        def pipeline(self, transaction: bool = False):
            pipe = real.pipeline(transaction=transaction)
            if not Once.failed:
                Once.failed = True

                def refuse():
                    raise redis_py.ConnectionError("away")

                pipe.execute = refuse
            return pipe

    cap = _capture_on(Once())
    cap.start("t1", 1, "01", "f", 60)
    cap.add("stdout", "lost\n")
    with pytest.raises(redis_py.ConnectionError):
        cap.ship()
    cap.add("stdout", "kept\n")
    cap.ship()
    assert real.get("ftq:log:t1:1") == b"kept\n"

"""Supervisor <-> worker lines: built and parsed in one place, and what the supervisor
concludes from them about the task a death would cost."""

import pytest

from ftqueue import protocol as p
from ftqueue.workerpool import WorkerHandle

MESSAGES = [p.Held(("a", "b")), p.Started("t1", "3", 2.5, True, "f"),
            p.Started("t2", "1", None, False, "g"), p.Ended(), p.Settled(("t1",)),
            p.Blocked(True), p.Blocked(False)]


@pytest.mark.parametrize("message", MESSAGES)
def test_worker_messages_round_trip(message):
    line = p.encode(message)
    assert line.endswith(b"\n") and line.count(b"\n") == 1
    assert p.decode_worker(line[:-1]) == message


def test_supervisor_messages_round_trip():
    for message in (p.Cancel("t1"), p.Timeout("t2")):
        assert p.decode_supervisor(p.encode(message)[:-1]) == message


def test_function_names_cannot_break_a_line():
    line = p.encode(p.Started("t", "1", None, False, "bad name\nwith S x"))
    assert line.count(b"\n") == 1
    assert p.decode_worker(line[:-1]).func_name == "bad_name_with_S_x"


def test_garbage_is_refused():
    for line in (b"S only-two", b"X y", b""):
        with pytest.raises(p.ProtocolError):
            p.decode_worker(line)


def test_line_buffer_joins_partial_reads():
    buf = p.LineBuffer()
    assert buf.feed(b"H a b\nS t") == [b"H a b"]
    assert buf.feed(b"1 1 - 0 f\nE\n") == [b"S t1 1 - 0 f", b"E"]


def test_a_finished_but_unsettled_task_is_still_in_flight():
    handle = WorkerHandle("w", None, 1)
    handle.feed(p.encode(p.Held(("A", "B"))) + p.encode(p.Started("A", "1", None, False, "f")))
    assert handle.in_flight == "A"
    handle.feed(p.encode(p.Ended()))
    assert handle.running == "" and handle.in_flight == "A"   # body done, not committed
    handle.feed(p.encode(p.Settled(("A",))))
    assert handle.in_flight == "" and handle.held == {"B"}

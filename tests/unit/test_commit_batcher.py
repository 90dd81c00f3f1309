"""The commit batcher, in process, no sleeps: outcomes are held (never dropped) while Redis
is down, busy or full, and settled in order once it takes them."""

from __future__ import annotations

import logging

import pytest
import redis

from ftqueue.commits import UNKNOWN_ERROR_GIVE_UP_S, CommitBatcher
from ftqueue.spec import Outcome


class FlakyStore:
    """Fails the first `errors` commits with the given exceptions, then accepts."""

    def __init__(self, errors: list[BaseException]) -> None:
        self.errors = list(errors)
        self.commits: list[tuple[list[str], str, str]] = []
        self.next_task_held = True

    def commit(self, outcomes, next_task_id="", worker_id="", next_fence=""):
        if self.errors:
            raise self.errors.pop(0)
        self.commits.append(([o.task_id for o in outcomes], next_task_id, worker_id))
        return ["finished"] * len(outcomes)


def outcome(task_id: str) -> Outcome:
    return Outcome(task_id, "1", "ok", b"V", False, "")


def batcher(store, settled, pauses, clock=lambda: 0.0):
    return CommitBatcher(store, "w1", settled.extend, sleep=pauses.append, clock=clock)


def test_nothing_to_flush_is_free():
    store, settled, pauses = FlakyStore([]), [], []
    assert batcher(store, settled, pauses).flush() == []
    assert store.commits == [] and settled == []


def test_starting_the_next_task_is_a_commit_even_with_no_outcomes():
    """It marks the task RUNNING and reserves its resources (or says it is not held)."""
    store, settled, pauses = FlakyStore([]), [], []
    assert batcher(store, settled, pauses).flush("next") == []
    assert store.commits == [([], "next", "w1")] and settled == []


def test_outcomes_and_the_next_task_go_in_one_commit():
    store, settled, pauses = FlakyStore([]), [], []
    b = batcher(store, settled, pauses)
    b.add(outcome("a"))
    b.add(outcome("b"))
    assert b.flush(next_task_id="c") == ["finished", "finished"]
    assert store.commits == [(["a", "b"], "c", "w1")]
    assert settled == ["a", "b"] and b.pending == []


@pytest.mark.parametrize("error", [
    redis.exceptions.OutOfMemoryError("command not allowed when used memory > 'maxmemory'"),
    redis.ConnectionError("Connection refused"),
    redis.ResponseError("BUSY Redis is busy running a script"),
    redis.exceptions.BusyLoadingError("Redis is loading the dataset in memory"),
    redis.exceptions.ReadOnlyError("You can't write against a read only replica."),
])
def test_held_through_transient_and_full_errors(error, caplog):
    store, settled, pauses = FlakyStore([error] * 5), [], []
    b = batcher(store, settled, pauses)
    b.add(outcome("a"))
    with caplog.at_level(logging.INFO, logger="ftqueue.worker"):
        b.flush()
    assert store.commits == [(["a"], "", "w1")] and settled == ["a"]
    assert len(pauses) == 5 and pauses == sorted(pauses)      # backed off, increasingly
    warnings = [r for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1, "the condition is logged once, not at every retry"
    assert any("again" in r.getMessage() for r in caplog.records)


def test_unknown_error_gives_up_after_its_budget():
    now = [0.0]

    def sleep(s):
        now[0] += s

    store, settled = FlakyStore([redis.ResponseError("NOPERM no permission")] * 10_000), []
    b = CommitBatcher(store, "w1", settled.extend, sleep=sleep, clock=lambda: now[0])
    b.add(outcome("a"))
    assert b.flush() == ["lost"]
    assert now[0] > UNKNOWN_ERROR_GIVE_UP_S
    assert settled == ["a"]          # the supervisor stops renewing: the lease retries it

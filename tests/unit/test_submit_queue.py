"""The submit queue in process, on fakeredis: batching, outages, a full Redis, deadlines.
No sleeps: the sender's step is called directly, or waited on with a deadline."""

from __future__ import annotations

import threading
import time

import fakeredis
import pytest
import redis

from ftqueue.client.lineage import LineageCache
from ftqueue.client.records import Submission
from ftqueue.client.submit_queue import LONE_WAIT_S, SUBMIT_BATCH_MAX, SubmitQueue
from ftqueue.exceptions import FtqueueError
from ftqueue.store import Store


class Recorder:
    def __init__(self) -> None:
        self.sent_ids: list[str] = []
        self.refusals: dict[str, FtqueueError] = {}
        self.lost_data = 0
        self.again: list[Submission] = []

    def sent(self, batch):
        self.sent_ids += [s.task_id for s in batch]

    def refused(self, batch, error):
        self.refusals.update((s.task_id, error) for s in batch)

    def redis_lost_data(self):
        self.lost_data += 1
        return list(self.again)


class CountingStore(Store):
    """A Store on fakeredis that counts round trips and can be frozen or made to fail."""

    def __init__(self, client) -> None:
        super().__init__(client, "ftq")
        self.submits: list[int] = []
        self.functions_stored: list[str] = []
        self.thaw = threading.Event()
        self.thaw.set()
        self.fail_with: Exception | None = None

    def submit(self, tasks):
        self.thaw.wait()
        if self.fail_with is not None:
            raise self.fail_with
        self.submits.append(len(tasks))
        return super().submit(tasks)

    def store_function(self, digest, blob):
        self.functions_stored.append(digest)
        return super().store_function(digest, blob)


@pytest.fixture
def server():
    return fakeredis.FakeServer()


@pytest.fixture
def store(server):
    return CountingStore(fakeredis.FakeRedis(server=server))


@pytest.fixture
def make_queue(store):
    queues: list[SubmitQueue] = []

    def make(start: bool = False, lineage: LineageCache | None = None):
        events = Recorder()
        queue = SubmitQueue(store, lineage or LineageCache(1 << 20), events, store.ensure_epoch())
        if start:
            queue.start()
        queues.append(queue)
        return queue, events

    yield make
    store.thaw.set()
    for queue in queues:
        queue.close(0.5)


def task(n: int, function: str | None = None, deps: tuple[str, ...] = ()) -> Submission:
    fields = {"name": "f", "func": "f", "fn": function or "import:m:f", "job_id": "1",
              "parent_task_id": "", "max_retries": "0", "notify": "ftq:done:me"}
    return Submission(f"{n:032x}", "default", b"args", deps, fields, function)


def in_redis(store, n: int) -> bool:
    return bool(store.redis.exists(f"ftq:task:{n:032x}"))


def test_lone_submission_is_in_redis_when_submit_returns(make_queue, store):
    queue, events = make_queue(start=True)
    queue.submit(task(1))
    assert in_redis(store, 1) and events.sent_ids == [f"{1:032x}"]


def test_a_burst_is_sent_in_batches_in_order(make_queue, store):
    queue, events = make_queue()
    n = 2 * SUBMIT_BATCH_MAX + 7
    for i in range(n):
        queue.submit(task(i))
    assert queue.has_unsent() and not in_redis(store, 0)
    while queue.has_unsent():
        assert queue.step()
    assert store.submits == [SUBMIT_BATCH_MAX, SUBMIT_BATCH_MAX, 7]
    assert events.sent_ids == [f"{i:032x}" for i in range(n)]
    assert queue.flush(time.monotonic())


def test_flush_waits_for_the_sender_thread(make_queue, store):
    queue, _ = make_queue(start=True)
    for i in range(50):
        queue.submit(task(i))
    assert queue.flush(time.monotonic() + 10)
    assert all(in_redis(store, i) for i in range(50))


def test_submissions_wait_while_redis_is_unreachable(make_queue, store, server):
    queue, events = make_queue()
    server.connected = False
    queue.submit(task(1))
    assert not queue.step() and not queue.step()   # nothing raised, nothing lost
    assert queue.has_unsent() and events.sent_ids == []
    server.connected = True
    assert queue.step()
    assert in_redis(store, 1) and not queue.has_unsent()


def test_a_lone_submission_returns_after_the_first_failed_attempt(make_queue, server):
    queue, _ = make_queue(start=True)
    server.connected = False
    queue.submit(task(1))           # returns: the submission waits in the queue
    assert queue.has_unsent()
    server.connected = True
    assert queue.flush(time.monotonic() + 10)


def test_a_function_is_stored_once_before_its_first_task(make_queue, store):
    lineage = LineageCache(1 << 20)
    lineage.add_function("d1", b"pickled")
    queue, _ = make_queue(lineage=lineage)
    queue.submit(task(1, function="d1"))
    queue.submit(task(2, function="d1"))
    assert queue.step()
    queue.submit(task(3, function="d1"))
    assert queue.step()
    assert store.functions_stored == ["d1"]
    assert store.load_function("d1") == b"pickled"


def test_redis_that_lost_its_data_gets_the_lineage_first_and_functions_again(make_queue, store):
    lineage = LineageCache(1 << 20)
    lineage.add_function("d1", b"pickled")
    queue, events = make_queue(lineage=lineage)
    queue.submit(task(1, function="d1"))
    assert queue.step()
    store.redis.flushall()               # Redis restarted empty: a new epoch
    events.again = [task(1, function="d1")]
    queue.submit(task(2, function="d1", deps=(f"{1:032x}",)))
    queue.request_epoch_check()
    assert queue.step()
    assert events.lost_data == 1 and store.functions_stored == ["d1", "d1"]
    assert store.submits[-2:] == [1, 1]          # the lineage, then the new task
    # The dependent waits for its resubmitted dependency instead of running without it.
    assert store.redis.hget(f"ftq:task:{2:032x}", "state") == b"PENDING_ARGS_AVAIL"


def test_a_full_redis_refuses_with_a_clear_ftqueue_error(make_queue, store):
    queue, events = make_queue()
    store.fail_with = redis.exceptions.OutOfMemoryError(
        "command not allowed when used memory > 'maxmemory'.")
    queue.submit(task(1))
    assert queue.step()                  # refused is final: not retried forever
    error = queue.error(f"{1:032x}")
    assert isinstance(error, FtqueueError) and not isinstance(error, redis.RedisError)
    assert "maxmemory" in str(error) and "OutOfMemoryError" in str(error)
    assert events.refusals == {f"{1:032x}": error} and not queue.has_unsent()
    store.fail_with = None
    queue.submit(task(2))
    assert queue.step() and queue.error(f"{2:032x}") is None


def test_flush_returns_by_its_deadline_while_a_send_is_stuck(make_queue, store):
    queue, _ = make_queue(start=True)
    store.thaw.clear()                   # Redis frozen: the send blocks
    queue.resubmit([task(1)])
    started = time.monotonic()
    assert not queue.flush(started + 0.2)
    assert time.monotonic() - started < 2
    queue.submit(task(2))                # a send is in flight: this does not wait for it
    store.thaw.set()
    assert queue.flush(time.monotonic() + 10)
    assert in_redis(store, 1) and in_redis(store, 2)


def test_close_gives_up_without_progress(make_queue, store):
    queue, _ = make_queue(start=True)
    store.thaw.clear()
    queue.resubmit([task(1)])
    started = time.monotonic()
    queue.submit(task(2))                # waits at most LONE_WAIT_S for a frozen Redis
    assert time.monotonic() - started < LONE_WAIT_S + 1
    started = time.monotonic()
    queue.close(0.3)
    assert time.monotonic() - started < 3
    assert not queue.flush(None)         # closed

"""T7, ambiguous replies: drivers, nodes and workers all reach Redis through a proxy that
loses replies after Redis ran the request, drops requests, and resets connections after a
delay (tests/proxykit.py). A mixed workload (plain tasks, dependencies, nested tasks,
retried exceptions, cancels, gets with timeouts) must lose nothing, commit nothing twice,
return every right result and never run one attempt of a task twice.

Every task body appends `key attempt pid` to a ledger outside Redis. A bigger run:

    python tests/integration/test_ambiguous_replies.py --tasks 400 --seed 2 [--rate 0.02]
"""

from __future__ import annotations

import os
import random
import shutil
import sys
import tempfile
import time
from collections import Counter
from typing import Any

if __name__ == "__main__":      # run as a script: find conftest and proxykit as pytest does
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import pytest
import redis
from conftest import NodeProcess, mark, runs, wait_until
from proxykit import FaultProxy, script_sha

import ftqueue
import ftqueue.state
from ftqueue.embedded import RedisServer
from ftqueue.exceptions import GetTimeoutError, TaskCancelledError
from ftqueue.generators import ObjectRefGenerator


def _record(key: str, ledger: str) -> int:
    attempt = ftqueue.get_runtime_context().get_task_attempt_number()
    fd = os.open(ledger, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
    try:
        os.write(fd, f"{key} {attempt} {os.getpid()}\n".encode())
    finally:
        os.close(fd)
    return int(attempt)


class Flaky(Exception):
    pass


@ftqueue.remote(max_retries=3, retry_exceptions=True)
def square(key: str, ledger: str, i: int, fail_first: bool) -> int:
    if _record(key, ledger) == 0 and fail_first:
        raise Flaky(key)
    time.sleep(0.005)
    return i * i


@ftqueue.remote(max_retries=3)
def add(key: str, ledger: str, a: int, b: int) -> int:
    _record(key, ledger)
    return a + b


@ftqueue.remote(max_retries=3)
def outer(key: str, ledger: str, i: int) -> int:
    _record(key, ledger)
    attempt = ftqueue.get_runtime_context().get_task_attempt_number()
    inner = square.remote(f"{key}.in{attempt}", ledger, i, False)   # a new task per attempt
    return int(ftqueue.get(inner, timeout=60)) + 1


@ftqueue.remote(max_retries=3)
def counted(key: str, ledger: str, i: int) -> Any:
    _record(key, ledger)
    for k in range(3):
        yield i + k


@ftqueue.remote(max_retries=3, num_returns=2)
def pair(key: str, ledger: str, i: int) -> tuple[int, int]:
    _record(key, ledger)
    return i, -i


@ftqueue.remote(max_retries=3)
def sleeper(key: str, ledger: str, seconds: float) -> str:
    _record(key, ledger)
    time.sleep(seconds)
    return "slept"


def run_workload(n: int, seed: int, rates: dict[str, float], *, nodes: int = 2,
                 workers: int = 2, get_timeout_s: float = 60.0) -> dict[str, Any]:
    """The workload through a fault proxy in front of a fresh Redis: its figures."""
    rng = random.Random(seed)
    server = RedisServer.start(unix_socket=True)
    proxy = FaultProxy(server.address, seed=seed, fault_rates=rates)
    proxy.start()
    started: list[NodeProcess] = []
    ledger_dir = tempfile.mkdtemp(prefix="ftqueue-t7-")
    ledger = os.path.join(ledger_dir, "ledger")
    figures: dict[str, Any] = {}
    try:
        proxy.enabled = False       # set up without faults
        started += [NodeProcess(proxy.address, workers, "--lease-timeout", "3",
                                "--grace-period", "1") for _ in range(nodes)]
        for node in started:
            node.wait_workers(workers)
        ftqueue.init(address=proxy.address)
        proxy.enabled = True
        t0 = time.monotonic()
        expected: dict[int, tuple[Any, Any]] = {}    # index -> (ref, expected or exception)
        plain: dict[int, Any] = {}
        cancels = 0
        for i in range(n):
            kind = rng.random()
            if kind < 0.55 or not plain:
                ref = square.remote(f"s{i}", ledger, i, rng.random() < 0.1)
                plain[i] = ref
                expected[i] = (ref, i * i)
            elif kind < 0.75:
                a, b = rng.sample(sorted(plain), 2) if len(plain) > 1 else (min(plain),) * 2
                ref = add.remote(f"d{i}", ledger, plain[a], plain[b])
                expected[i] = (ref, a * a + b * b)
            elif kind < 0.82:
                ref = outer.remote(f"n{i}", ledger, i)
                expected[i] = (ref, i * i + 1)
            elif kind < 0.86:
                expected[i] = (counted.remote(f"g{i}", ledger, i), [i, i + 1, i + 2])
            elif kind < 0.9:
                expected[i] = (pair.remote(f"p{i}", ledger, i), [i, -i])
            else:
                ref = sleeper.remote(f"c{i}", ledger, 20.0)
                expected[i] = (ref, TaskCancelledError)
                cancels += 1
        ftqueue.flush_submissions(timeout=60)
        submitted_s = time.monotonic() - t0
        time.sleep(0.3)
        cancel_errors = 0
        for i, (ref, want) in expected.items():
            if want is TaskCancelledError:
                try:
                    ftqueue.cancel(ref)
                except Exception as e:  # noqa: BLE001 - counted
                    print(f"cancel {i}: {type(e).__name__}: {e}", file=sys.stderr)
                    cancel_errors += 1
        cancelled_s = time.monotonic() - t0
        wrong, hung, errors = [], [], []
        slow: list[tuple[float, int]] = []
        for i, (ref, want) in expected.items():
            try:
                t1 = time.monotonic()
                if isinstance(ref, list):
                    got = ftqueue.get(ref, timeout=get_timeout_s)
                elif isinstance(want, list):     # a generator: its values as they come
                    got = [ftqueue.get(ref.next_ready(get_timeout_s), timeout=get_timeout_s)
                           for _ in range(3)]
                else:
                    got = ftqueue.get(ref, timeout=get_timeout_s)
                slow.append((round(time.monotonic() - t1, 2), i))
                if got != want:
                    wrong.append((i, got, want))
            except GetTimeoutError:
                hung.append(i)
            except TaskCancelledError as e:
                if want is not TaskCancelledError:
                    errors.append((i, repr(e)[:300]))
            except Exception as e:  # noqa: BLE001 - any failure to deliver is counted
                print(f"get {i}: {type(e).__name__}: {e}", file=sys.stderr)
                errors.append((i, f"{type(e).__name__}: {str(e)[-300:]}"))
        elapsed = time.monotonic() - t0
        proxy.enabled = False

        if os.environ.get("T7_TIMELINE"):    # each attempt: start, end (s from t0), task
            base = time.time() - elapsed
            rows = [(round((row.get("start_time") or base) - base, 2),
                     round((row.get("end_time") or base) - base, 2), i, row.get("state"),
                     row.get("error_type"))
                    for i, (ref, _) in expected.items()
                    for row in ftqueue.state.get_task(_task_hex(ref))]
            for row in sorted(rows):
                print("TL", *row, file=sys.stderr)
        time.sleep(1.0)       # late commits, if any, land before the counts
        r = redis.Redis.from_url(server.address)
        stats = {k.decode(): int(v) for k, v in r.hgetall("ftq:stats").items()}
        states: Counter[str] = Counter()
        for key in r.scan_iter("ftq:task:*", count=1000):
            if key.count(b":") == 2 and r.type(key) == b"hash":
                states[(r.hget(key, "state") or b"?").decode()] += 1
        r.close()
        runs: Counter[tuple[str, str]] = Counter()
        with open(ledger) as f:
            for line in f:
                key, attempt, _ = line.split()
                runs[(key, attempt)] += 1
        logs = "".join(node.output() for node in started)
        if os.environ.get("T7_LOGS"):
            print(logs, file=sys.stderr)
        finishes = sum(v for k, v in stats.items() if k.startswith("tasks:"))
        must_finish = sum(states.values())      # each task ends once
        figures = {
            "tasks": n, "seed": seed, "rates": rates, "elapsed_s": round(elapsed, 1),
            "phases_s": [round(submitted_s, 1), round(cancelled_s, 1)],
            "faults": dict(proxy.counts), "replies": proxy.counts["replies"],
            "executions": sum(runs.values()),
            "duplicate_executions": sum(c - 1 for c in runs.values()),
            "duplicated": sorted(k for k, c in runs.items() if c > 1)[:10],
            "finishes": finishes, "must_finish": must_finish,
            "duplicate_commits": max(0, finishes - must_finish),
            "lost": len(hung), "hung": hung[:10], "wrong": wrong[:10], "errors": errors[:10],
            "cancel_errors": cancel_errors,
            "fenced": stats.get("fenced", 0),
            "states": dict(states),
            "slowest_gets": sorted(slow)[-5:],
            "unfinished": {k: v for k, v in states.items() if k not in ("FINISHED", "FAILED")},
            "task_stats": {k: v for k, v in stats.items() if k.startswith("tasks:")},
            "retries": {k: v for k, v in stats.items() if k.startswith("retries:")},
            "tracebacks": logs.count("Traceback"),
            "node_exits": [node.process.poll() for node in started],
            "log_excerpt": _excerpt(logs),
        }
    finally:
        try:
            ftqueue.shutdown()
        finally:
            for node in started:
                node.stop()
            proxy.stop()
            server.stop()
            shutil.rmtree(ledger_dir, ignore_errors=True)
    return figures


def _task_hex(ref: Any) -> str:
    if isinstance(ref, list):
        ref = ref[0]
    if isinstance(ref, ObjectRefGenerator):
        ref = ref.completed()
    return str(ref.hex()).split("#")[0]


def _excerpt(logs: str) -> str:
    at = logs.find("Traceback")
    return logs[max(0, at - 500):at + 3000] if at >= 0 else ""


@ftqueue.remote
def plus_one(x: int) -> int:
    return x + 1


# A node's PINGs at startup, in order: the CLI's wait for Redis (1, 2), the supervisor's
# store (3, 4), then its workers' (5, ...).
@pytest.mark.parametrize("lost_ping", [3, 5], ids=["supervisor", "worker"])
def test_a_lost_ping_reply_at_startup_kills_neither_node_nor_worker(
        redis_url: str, lost_ping: int) -> None:
    """A process's first call is the PING of `connect`: with its reply lost (the connection
    dropped after Redis answered), the node and its workers wait it out instead of dying
    (the node gone, a worker respawned after a traceback)."""
    pings = []

    def drop_one_ping(request: bytes, reply: bytes | None) -> str | None:
        if request == b"*1\r\n$4\r\nPING\r\n" and reply is not None:
            pings.append(reply)
            return "response" if len(pings) == lost_ping else None
        return None

    with FaultProxy(redis_url, rule=drop_one_ping) as proxy:
        node = NodeProcess(proxy.address, 2)
        try:
            wait_until(lambda: len(pings) >= 7 or node.process.poll() is not None, 30,
                       "the node's and its workers' PINGs")
            time.sleep(1.0)
            out = node.output()
            assert proxy.counts["response"] == 1
            assert node.process.poll() is None, out
            assert "Traceback" not in out and "died" not in out, out
            ftqueue.init(address=proxy.address)
            try:
                assert ftqueue.get(plus_one.remote(1), timeout=30) == 2
            finally:
                ftqueue.shutdown()
        finally:
            node.stop()


@ftqueue.remote
def nested_plus_one(x: int) -> int:
    return int(ftqueue.get(plus_one.remote(x), timeout=20)) + 1


def test_a_lost_lend_does_not_deadlock_a_nested_get(redis_url: str) -> None:
    """A task blocked in get lends its CPU so the task it waits for can run on its node: the
    lend's request lost (the connection dropped before Redis got it), a node with one CPU
    could never run the nested task, and the get waited until its timeout."""
    lend = script_sha("lend")
    dropped = []

    def drop_first_lend(request: bytes, reply: bytes | None) -> str | None:
        if reply is None and lend in request and not dropped:
            dropped.append(request)
            return "request"
        return None

    with FaultProxy(redis_url, rule=drop_first_lend) as proxy:
        node = NodeProcess(proxy.address, 1, "--num-cpus", "1")
        try:
            node.wait_workers(1)
            ftqueue.init(address=proxy.address)
            try:
                assert ftqueue.get(nested_plus_one.remote(1), timeout=40) == 3
            finally:
                ftqueue.shutdown()
            assert dropped
        finally:
            node.stop()


@ftqueue.remote(max_retries=3)
def long_running(path: str) -> int:
    mark(path)
    time.sleep(6)
    return int(ftqueue.get_runtime_context().get_task_attempt_number())


def test_a_few_lost_renewals_in_a_row_do_not_expire_a_live_node(redis_url: str,
                                                                tmp_path: Any) -> None:
    """Five renewals of a node in a row lost (their requests dropped), well within the time
    a Redis blip would take: the node tries again at once instead of one renewal interval
    (lease/4) later, so its lease never expires and its running task is not declared lost
    (NODE_DIED, run again) while it runs."""
    renew = script_sha("renew")
    armed, dropped = [], []

    def drop_five_renewals(request: bytes, reply: bytes | None) -> str | None:
        if reply is None and armed and renew in request and len(dropped) < 5:
            dropped.append(time.monotonic())
            return "request"
        return None

    path = str(tmp_path / "runs")
    with FaultProxy(redis_url, rule=drop_five_renewals) as proxy:
        cut = NodeProcess(proxy.address, 1, "--lease-timeout", "3", "--queues", "far")
        # Serves another queue, straight to Redis: its heartbeats keep the served clock
        # going and its sweeps declare dead a node whose lease expired.
        witness = NodeProcess(redis_url, 1, "--lease-timeout", "3")
        try:
            cut.wait_workers(1)
            witness.wait_workers(1)
            ftqueue.init(address=redis_url)
            try:
                ref = long_running.options(queue="far").remote(path)
                wait_until(lambda: runs(path), 20, "the task to start")
                armed.append(True)
                wait_until(lambda: len(dropped) == 5, 20, "five renewals dropped")
                assert ftqueue.get(ref, timeout=30) == 0     # its first attempt finished
                assert len(runs(path)) == 1
                rows = ftqueue.state.get_task(ref.hex())
                assert [r["error_type"] for r in rows] == [""], rows
            finally:
                ftqueue.shutdown()
        finally:
            cut.stop()
            witness.stop()


def test_mixed_workload_through_ambiguous_replies() -> None:
    figures = run_workload(160, seed=7, rates={"response": 0.02, "request": 0.01,
                                               "delay_reset": 0.005}, get_timeout_s=40)
    print(figures)
    assert figures["faults"].get("response", 0) + figures["faults"].get("delay_reset", 0) > 0
    assert figures["lost"] == 0 and not figures["unfinished"], figures
    assert not figures["wrong"] and not figures["errors"], figures
    assert figures["duplicate_commits"] == 0, figures
    assert figures["duplicate_executions"] == 0, figures
    assert figures["tracebacks"] == 0, figures["log_excerpt"]
    assert figures["node_exits"] == [None, None], figures


if __name__ == "__main__":
    import argparse
    import json

    parser = argparse.ArgumentParser()
    parser.add_argument("--tasks", type=int, default=400)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--rate", type=float, default=0.02)
    args = parser.parse_args()
    out = run_workload(args.tasks, args.seed, {"response": args.rate, "request": args.rate / 2,
                                               "delay_reset": args.rate / 4})
    excerpt = out.pop("log_excerpt")
    print(json.dumps(out, indent=1))
    if excerpt:
        print(excerpt)
    bad = (out["lost"] or out["unfinished"] or out["wrong"] or out["errors"]
           or out["duplicate_commits"] or out["duplicate_executions"] or out["tracebacks"])
    sys.exit(1 if bad else 0)

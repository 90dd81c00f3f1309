"""Time and flow control with real worker nodes: strict queue priority, delayed tasks and retry
backoff, idempotent submits, requeue and purge."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

import pytest
from conftest import child_env, mark, runs, wait_for_file, wait_until

import ftqueue


@ftqueue.remote(max_retries=0)
def record(path: str, tag: str) -> str:
    with open(path, "a") as f:
        f.write(f"{tag}\n")
    return tag


def test_later_queue_runs_only_when_earlier_is_empty(driver, start_node, tmp_path):
    path = str(tmp_path / "order")
    refs = [record.options(queue="default").remote(path, f"d{i}") for i in range(20)]
    refs += [record.options(queue="high").remote(path, f"h{i}") for i in range(20)]
    ftqueue.flush_submissions()
    start_node(1, "--queues", "high,default", "--prefetch", "4")
    ftqueue.get(refs, timeout=60)
    order = [tag[0] for tag in runs(path)]
    assert order == ["h"] * 20 + ["d"] * 20, order


@ftqueue.remote(max_retries=0)
def stamp(path: str, tag: str) -> float:
    now = time.time()
    with open(path, "a") as f:
        f.write(f"{tag} {now}\n")
    return now


@ftqueue.remote(max_retries=3, retry_exceptions=True, retry_delay_s=1.0, retry_backoff=2.0)
def flaky(path: str, fails: int) -> int:
    with open(path, "a") as f:
        f.write(f"{time.time()}\n")
    with open(path) as f:
        n = len(f.read().split())
    if n <= fails:
        raise RuntimeError(f"failure {n}")
    return n


def stamps(path: str) -> dict[str, float]:
    return {tag: float(t) for tag, t in (line.split() for line in open(path))}


def test_delayed_task_waits_without_holding_a_worker_and_can_be_cancelled(cluster, tmp_path):
    path = str(tmp_path / "stamps")
    before = time.time()
    later = stamp.options(delay_s=1.5).remote(path, "later")
    doomed = stamp.options(eta=before + 60).remote(path, "doomed")
    assert ftqueue.state.get_task(later.hex())[0]["state"] == "DELAYED"
    # Both workers stay free: two plain tasks run while the delayed ones wait.
    assert len(ftqueue.get([stamp.remote(path, f"now{i}") for i in range(2)], timeout=30)) == 2
    rows = ftqueue.state.list_tasks(filters=[("state", "=", "DELAYED")])
    assert {r["task_id"] for r in rows} == {later.hex(), doomed.hex()}
    ftqueue.cancel(doomed)
    with pytest.raises(ftqueue.exceptions.TaskCancelledError):
        ftqueue.get(doomed, timeout=10)
    started = ftqueue.get(later, timeout=30)
    assert started >= before + 1.5
    assert "doomed" not in stamps(path)


def test_retries_wait_their_backoff_and_hold_no_worker(driver, start_node, tmp_path):
    path, other = str(tmp_path / "tries"), str(tmp_path / "other")
    start_node(1, "--lease-timeout", "3")
    ref = flaky.remote(path, 2)
    wait_until(lambda: os.path.exists(path), 30, "the first attempt")
    # The only worker is free during the retry delay: another task runs meanwhile.
    ftqueue.get(stamp.remote(other, "meanwhile"), timeout=30)
    assert ftqueue.get(ref, timeout=60) == 3
    times = [float(t) for t in open(path).read().split()]
    gaps = [b - a for a, b in zip(times, times[1:])]
    assert gaps[0] >= 0.9 and gaps[1] >= 1.8, gaps
    assert stamps(other)["meanwhile"] < times[1]
    attempts = ftqueue.state.get_task(ref.hex())
    assert [a["attempt_number"] for a in attempts] == [0, 1, 2]



@ftqueue.remote(max_retries=0)
def gated_run(path: str, gate: str, value: int) -> int:
    mark(path)
    wait_for_file(gate)
    return value


def test_idempotent_submit_from_another_process_returns_the_same_ref(cluster, redis_url,
                                                                    rclient, tmp_path):
    path, gate = str(tmp_path / "runs"), str(tmp_path / "gate")
    first = gated_run.options(task_id="order-42").remote(path, gate, 1)
    wait_until(lambda: runs(path), 30, "the first submission to start")
    # A retried web request submits the same id again while the task runs: nothing new,
    # and that process gets the first one's result.
    code = f"""
import ftqueue
ftqueue.init(address={redis_url!r})
@ftqueue.remote
def handler(x):
    return -x
ref = handler.options(task_id="order-42").remote(2)
print(ref.hex(), flush=True)
print(ftqueue.get(ref, timeout=60))
"""
    proc = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True,
                            env=child_env(), start_new_session=True)
    try:
        assert proc.stdout is not None
        assert proc.stdout.readline().strip() == "order-42"
        assert rclient.smembers("ftq:waiters:order-42"), "the second submitter is not waiting"
        open(gate, "w").close()
        out, _ = proc.communicate(timeout=60)
    finally:
        try:
            os.killpg(proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        proc.wait()
    assert out.strip() == "1"
    assert first.hex() == "order-42" and ftqueue.get(first, timeout=30) == 1
    assert len(runs(path)) == 1
    assert len(ftqueue.state.list_tasks(filters=[("task_id", "=", "order-42")])) == 1
    # Submitted again after it ended (its lineage kept): same ref, same result, nothing runs.
    again = gated_run.options(task_id="order-42").remote(path, gate, 3)
    assert again == first and ftqueue.get(again, timeout=30) == 1 and len(runs(path)) == 1


def cli(redis_url, *args, check=True):
    proc = subprocess.run([sys.executable, "-m", "ftqueue", *args, "--address", redis_url],
                          capture_output=True, text=True, timeout=60, env=child_env())
    if check:
        assert proc.returncode == 0, proc.stderr
    return proc


@ftqueue.remote(max_retries=0)
def fragile(flag: str, x: int) -> int:
    if os.path.exists(flag):
        raise ConnectionError("the service is down")
    return x


@ftqueue.remote(max_retries=0)
def hopeless(x: int) -> int:
    raise KeyError(x)


def test_dead_letter_workflow_requeue_failed_and_purge(cluster, redis_url, tmp_path):
    flag = str(tmp_path / "down")
    open(flag, "w").close()
    refs = [fragile.remote(flag, i) for i in range(3)]
    other = hopeless.remote(7)
    for ref in refs:
        with pytest.raises(ConnectionError):
            ftqueue.get(ref, timeout=30)
    with pytest.raises(KeyError):
        ftqueue.get(other, timeout=30)
    listed = cli(redis_url, "list", "tasks", "-f", "state=FAILED", "--format", "json").stdout
    assert {r["task_id"] for r in json.loads(listed)} == {r.hex() for r in [*refs, other]}
    os.unlink(flag)     # the service is back: run again what failed because of it
    out = cli(redis_url, "requeue", "--failed", "-f", "func_or_class_name=fragile").stdout
    assert "requeued 3 task(s)" in out
    assert ftqueue.get(refs, timeout=30) == [0, 1, 2]          # the same refs, new outcome
    attempts = ftqueue.state.get_task(refs[0].hex())
    assert [(a["attempt_number"], a["state"]) for a in attempts] == [(0, "FAILED"),
                                                                     (1, "FINISHED")]
    with pytest.raises(KeyError):
        ftqueue.get(other, timeout=30)
    # A task id that has not failed is refused with one line, exit code 1.
    proc = cli(redis_url, "requeue", refs[0].hex(), check=False)
    assert proc.returncode == 1 and "is FINISHED, not FAILED" in proc.stdout
    with pytest.raises(ValueError, match="not FAILED"):
        ftqueue.requeue(refs[0])
    # From Python: the ref sees the new outcome.
    ftqueue.requeue(other)
    with pytest.raises(KeyError):
        ftqueue.get(other, timeout=30)
    assert len(ftqueue.state.get_task(other.hex())) == 2
    # Purge: a queue nobody serves; each task is recorded as cancelled.
    parked = [fragile.options(queue="parked").remote(flag, i) for i in range(4)]
    parked.append(fragile.options(queue="parked", delay_s=60).remote(flag, 9))
    ftqueue.flush_submissions()
    assert "purged 5 task(s)" in cli(redis_url, "purge", "parked").stdout
    for ref in parked:
        with pytest.raises(ftqueue.exceptions.TaskCancelledError):
            ftqueue.get(ref, timeout=30)
    assert ftqueue.purge("parked") == 0
    status = json.loads(cli(redis_url, "status", "--format", "json").stdout)
    assert status["queues"]["parked"] == 0 and "parked" not in status["delayed"]

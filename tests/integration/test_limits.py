"""Concurrency limits cluster-wide, with real nodes whose workers are SIGKILLed mid-task."""

from __future__ import annotations

import os
import signal
import time

import psutil
from conftest import wait_until

import ftqueue

LIMIT = 2


def _running_pids(directory: str) -> set[int]:
    """Processes running a limited task now (a SIGKILLed one, zombie or gone, is not)."""
    alive = set()
    for name in os.listdir(directory):
        try:
            if psutil.Process(int(name)).status() != psutil.STATUS_ZOMBIE:
                alive.add(int(name))
        except psutil.NoSuchProcess:
            pass
    return alive


@ftqueue.remote(max_retries=-1, limit_key="api", max_concurrency=LIMIT)
def call_api(directory: str, hold_s: float) -> int:
    mine = os.path.join(directory, str(os.getpid()))
    open(mine, "w").close()
    try:
        seen = len(_running_pids(directory))
        time.sleep(hold_s)
        return max(seen, len(_running_pids(directory)))
    finally:
        os.unlink(mine)


def test_max_concurrency_holds_across_nodes_while_workers_are_killed(driver, start_node,
                                                                     rclient, tmp_path):
    directory = str(tmp_path / "running")
    os.mkdir(directory)
    nodes = [start_node(2, "--lease-timeout", "3") for _ in range(2)]
    for node in nodes:
        node.wait_workers(2)
    refs = [call_api.remote(directory, 0.3) for _ in range(24)]
    kills = 0
    while kills < 4:
        victims = sorted(_running_pids(directory))
        if victims:
            os.kill(victims[0], signal.SIGKILL)
            kills += 1
            wait_until(lambda v=victims[0]: v not in _running_pids(directory), 10,
                       "the killed worker to be gone")
        time.sleep(0.05)
    seen = ftqueue.get(refs, timeout=120)
    assert max(seen) == LIMIT, seen        # the limit was reached, never passed
    assert rclient.scard("ftq:limit:running:api") == 0      # every slot given back
    attempts = [a for r in refs for a in ftqueue.state.get_task(r.hex())]
    died = [a for a in attempts if a["error_type"] == "WORKER_DIED"]
    assert len(died) == kills and len(attempts) == len(refs) + kills, attempts


@ftqueue.remote(max_retries=0, limit_key="mail", max_rate="2/s")
def send(i: int) -> int:
    return i


def test_max_rate_holds_across_nodes(driver, start_node):
    for _ in range(2):
        start_node(2, "--lease-timeout", "3")
    refs = [send.remote(i) for i in range(7)]
    assert ftqueue.get(refs, timeout=60) == list(range(7))
    starts = sorted(r["start_time"] for ref in refs
                    for r in ftqueue.state.list_tasks(filters=[("task_id", "=", ref.hex())],
                                                      detail=True))
    # Claim times (Redis's clock): never three within one second, and no slower than needed.
    assert all(b - a >= 1.0 - 1e-6 for a, b in zip(starts, starts[2:])), starts
    assert starts[-1] - starts[0] < 4.5, starts


@ftqueue.remote(max_retries=0, limit_key="db", max_concurrency=1)
def db_step(i: int) -> int:
    return i


@ftqueue.remote(max_retries=0, limit_key="db", max_concurrency=1)
def db_job(n: int) -> int:
    # Waits for tasks of its own key: its slot is lent meanwhile, as its CPU is (no deadlock).
    return sum(ftqueue.get([db_step.remote(i) for i in range(n)], timeout=15))


def test_a_task_waiting_for_tasks_of_its_own_limit_key_does_not_deadlock(driver, start_node,
                                                                         rclient):
    start_node(2, "--lease-timeout", "3")
    assert ftqueue.get(db_job.remote(3), timeout=20) == 3
    assert rclient.scard("ftq:limit:running:db") == 0
    assert rclient.llen("ftq:limit:waiting:db") == 0

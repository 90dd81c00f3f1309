"""Redis Cluster with real servers (tests/clusterkit.py): 3 primaries, and 3 primaries with a
replica each. The seed's programs, dependencies, nested tasks, cancel recursion, lineage
rebuild, a schedule, worker and node SIGKILLs run on a `redis+cluster://` address with every result
correct and every execution counted; a namespace's keys all live in one slot; a primary
SIGKILLed mid-workload fails over to its replica and nothing is lost."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import urllib.request

import pytest
import redis
from clusterkit import KEYS, node_starter, owner_client
from conftest import child_env, mark, run_script, runs, wait_until
from test_seed_examples import CRASH_RETRY_EXAMPLE, ERRORS_EXAMPLE, EXCEPTION_RETRY_EXAMPLE

import ftqueue
import ftqueue.state
from ftqueue.dashboard.server import DashboardProcess
from ftqueue.embedded import free_port
from ftqueue.embedded_cluster import LocalCluster
from ftqueue.exceptions import TaskCancelledError, TaskError
from ftqueue.store import Store, connect


@ftqueue.remote
def make(path, name, value):
    with open(path, "a") as f:
        f.write(name + "\n")
    return value


@ftqueue.remote
def plus(path, name, x, y=1):
    with open(path, "a") as f:
        f.write(name + "\n")
    return x + y


@ftqueue.remote
def boom():
    raise ValueError("boom")


@ftqueue.remote
def square(i):
    return i * i


@ftqueue.remote
def fan_out(n):
    return sum(ftqueue.get([square.remote(i) for i in range(n)]))


@ftqueue.remote
def sleeper(seconds):
    time.sleep(seconds)
    return seconds


@ftqueue.remote
def parent_of_two():
    return ftqueue.get([sleeper.remote(60) for _ in range(2)])


@ftqueue.remote
def sleep_then(path, seconds, value):
    mark(path)
    time.sleep(seconds)
    return value


@ftqueue.remote(max_retries=-1)
def logged(i, path, sleep_s):
    """Appends a start and an end line per execution: `S|E task attempt ns`."""
    ctx = ftqueue.get_runtime_context()
    head = f"{ctx.get_task_id()} {ctx.get_task_attempt_number()}"
    _append(path, f"S {head} {time.time_ns()}\n")
    time.sleep(sleep_s)
    _append(path, f"E {head} {time.time_ns()}\n")
    return i * i


def _append(path, line):
    fd = os.open(str(path), os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
    try:
        os.write(fd, line.encode())
    finally:
        os.close(fd)


def names(path) -> list[str]:
    try:
        with open(path) as f:
            return f.read().split()
    except FileNotFoundError:
        return []


def cli(address, *args) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "ftqueue", *args, "--address", address],
                          capture_output=True, text=True, env=child_env(), timeout=60)


def every_key(cluster: LocalCluster) -> dict[str, list[str]]:
    out = {}
    for server in cluster.primaries:
        client = redis.Redis.from_url(server.address)
        out[server.address] = [k.decode() for k in client.scan_iter(count=1000)]
        client.close()
    return out


def test_the_seed_programs_run_on_a_cluster_in_one_hash_slot(on_cluster3):
    cluster, start = on_cluster3
    start(2).wait_workers(2)
    env = child_env(FTQUEUE_ADDRESS=cluster.address)
    result = run_script(ERRORS_EXAMPLE, env=env)
    assert result.returncode == 0, result.stderr
    assert result.stdout.count("Exception: the real error") == 2, result.stdout
    assert "At least one of the input arguments for this task could not be computed:" in \
        result.stdout
    result = run_script(CRASH_RETRY_EXAMPLE, env=env)
    assert result.returncode == 0, result.stderr
    assert len(result.stdout.split()) == 3 and set(result.stdout.split()) <= {"SUCCESS",
                                                                              "FAILURE"}
    result = run_script(EXCEPTION_RETRY_EXAMPLE, env=env)
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert len(lines) == 7 and lines[3] == "FAILED AS EXPECTED", lines
    # Every key of the namespace carries the hash tag and lives with the slot's primary.
    owner = cluster.owner_of(KEYS.stats).address
    keys = every_key(cluster)
    assert len(keys[owner]) > 20 and all(k.startswith("{ftq}:") for k in keys[owner])
    assert all(KEYS.kind(k) is not None for k in keys[owner]), keys[owner]
    assert [k for address, ks in keys.items() if address != owner for k in ks] == []


def test_dependencies_nested_tasks_lineage_and_the_cli_on_a_cluster(on_cluster3, tmp_path):
    cluster, start = on_cluster3
    start(2)
    path = tmp_path / "runs"
    a = make.remote(path, "a", 1)
    b = plus.remote(path, "b", a)
    assert ftqueue.get(plus.remote(path, "c", b, y=a), timeout=60) == 3
    with pytest.raises(TaskError) as info:
        ftqueue.get(plus.remote(path, "never", boom.remote()), timeout=60)
    assert isinstance(info.value.cause, ValueError) and "never" not in names(path)
    assert ftqueue.get(fan_out.remote(6), timeout=60) == sum(i * i for i in range(6))
    # Lineage: both results lost on the cluster; the next task's argument resolution
    # rebuilds them by running their tasks again.
    owner = owner_client(cluster)
    assert owner.delete(KEYS.result(a.hex()), KEYS.result(b.hex())) == 2
    assert ftqueue.get(plus.remote(path, "d", b), timeout=60) == 3
    assert sorted(names(path)) == ["a", "a", "b", "b", "c", "d"]
    rows = ftqueue.state.get_task(a.hex())
    assert [(r["attempt_number"], r["state"]) for r in rows] == [(0, "FINISHED"),
                                                                 (1, "FINISHED")]
    owner.close()
    listed = cli(cluster.address, "list", "tasks", "--format", "json")
    assert listed.returncode == 0, listed.stderr
    assert {row["func_or_class_name"] for row in json.loads(listed.stdout)} >= {
        "make", "plus", "fan_out", "square", "boom"}
    status = cli(cluster.address, "status")
    assert status.returncode == 0 and "nodes alive: 1" in status.stdout, status
    dashboard = DashboardProcess.start(cluster.address, "ftq", "127.0.0.1", free_port(),
                                       env=child_env())
    try:
        with urllib.request.urlopen(dashboard.url + "/api/summary", timeout=30) as reply:
            summary = json.loads(reply.read())
        assert summary["nodes_alive"] == 1
        assert summary["last_hour"]["finished"] == 13 and summary["last_hour"]["failed"] == 2
        with urllib.request.urlopen(dashboard.url + "/healthz", timeout=30) as reply:
            assert json.loads(reply.read()) == {"ok": True}
    finally:
        dashboard.stop()


def test_recursive_cancel_on_a_cluster(on_cluster3):
    cluster, start = on_cluster3
    start(3)
    ref = parent_of_two.remote()
    owner = owner_client(cluster, decode_responses=True)
    wait_until(lambda: owner.scard(KEYS.children(ref.hex())) == 2, 30,
               "the parent to submit its two children")
    children = owner.smembers(KEYS.children(ref.hex()))
    wait_until(lambda: all(owner.hget(KEYS.task(c), "state") == "RUNNING" for c in children),
               30, "both children to run")
    ftqueue.cancel(ref)
    with pytest.raises(TaskCancelledError):
        ftqueue.get(ref, timeout=30)
    for child in children:
        wait_until(lambda c=child: owner.hget(KEYS.task(c), "state") == "FAILED", 30,
                   "the child to be cancelled")
        assert owner.hget(KEYS.task(child), "error_type") == "TASK_CANCELLED"
    owner.close()


@ftqueue.remote(max_retries=0)
def beat(path):
    with open(path, "a") as f:
        f.write(f"{ftqueue.get_runtime_context().get_task_id()}\n")


def test_a_schedule_fires_each_tick_once_from_two_nodes_on_a_cluster(on_cluster3, tmp_path):
    """A schedule is written in one MULTI and fired by fire.lua on the cluster's clock
    (TIME from the slot's primary): two nodes race for every tick, each tick runs once."""
    _cluster, start = on_cluster3
    for node in [start(1, "--lease-timeout", "3") for _ in range(2)]:
        node.wait_workers(1)
    path = str(tmp_path / "beats")
    ftqueue.schedule("beat", beat, path, every_s=1)
    wait_until(lambda: len(names(path)) >= 2, 30, "two ticks")
    assert ftqueue.unschedule("beat") is True and ftqueue.list_schedules() == []
    fired = [r["task_id"] for r in ftqueue.state.list_tasks(limit=1000)
             if r["task_id"].startswith("sched:beat:")]
    wait_until(lambda: len(names(path)) == len(fired), 30, "every fired tick to run")
    assert sorted(names(path)) == sorted(fired) and len(set(fired)) == len(fired)


def test_worker_and_node_sigkill_mid_task_on_a_cluster(on_cluster3, tmp_path):
    _cluster, start = on_cluster3
    doomed = start(2, "--lease-timeout", "2")
    doomed.wait_workers(2)
    path = tmp_path / "worker"
    ref = sleep_then.remote(path, 1.0, "survived")
    wait_until(lambda: runs(path), 30, "the task to start")
    os.kill(int(runs(path)[0]), signal.SIGKILL)
    assert ftqueue.get(ref, timeout=60) == "survived"
    assert len(runs(path)) == 2
    rows = ftqueue.state.get_task(ref.hex())
    assert [(r["state"], r["error_type"]) for r in rows] == [("FAILED", "WORKER_DIED"),
                                                             ("FINISHED", "")]
    path = tmp_path / "node"
    refs = [sleep_then.remote(path, 1.0, i) for i in range(2)]
    wait_until(lambda: len(runs(path)) == 2, 30, "both tasks to start on the first node")
    start(2, "--lease-timeout", "2")
    doomed.signal_group(signal.SIGKILL)
    assert ftqueue.get(refs, timeout=60) == [0, 1]
    assert len(runs(path)) == 4
    for r in refs:
        first = ftqueue.state.get_task(r.hex())[0]
        assert (first["state"], first["error_type"]) == ("FAILED", "NODE_DIED")


def test_replicated_writes_wait_on_the_primary_holding_the_slot(cluster6, monkeypatch):
    monkeypatch.setenv("FTQUEUE_DURABILITY", "replicated")
    store = Store(connect(cluster6.address))
    owner = owner_client(cluster6)
    replica = redis.Redis.from_url(replica_of(cluster6, cluster6.owner_of(KEYS.stats)).address)
    try:
        assert store.cluster and store.replica_timeout_ms == 2000
        waits = owner.info("commandstats").get("cmdstat_wait", {}).get("calls", 0)
        store.submit([("t1", "default", b"x", (), {"func": "f"})])
        # WAIT ran on the slot's primary and returned 1: its replica holds the task.
        assert owner.info("commandstats")["cmdstat_wait"]["calls"] == waits + 1
        replica.execute_command("READONLY")     # a cluster replica serves reads only so
        assert replica.exists(KEYS.task("t1"))
    finally:
        for client in (owner, replica, store.redis):
            client.close()


def replica_of(cluster: LocalCluster, primary) -> object:
    port = int(primary.address.rsplit(":", 1)[1])
    for server in cluster.replicas:
        client = redis.Redis.from_url(server.address, decode_responses=True)
        try:
            if int(client.info("replication").get("master_port", 0)) == port:
                return server
        finally:
            client.close()
    raise AssertionError(f"no replica of {primary.address}")


def read_log(path) -> list[tuple[str, str, str, int]]:
    try:
        with open(path) as f:
            return [(p[0], p[1], p[2], int(p[3])) for p in (line.split() for line in f)
                    if len(p) == 4]
    except FileNotFoundError:
        return []


@ftqueue.remote
def shout(text):
    print(text)
    return text


@pytest.mark.parametrize("durability", ["async", "replicated"])
def test_a_primary_sigkilled_mid_workload_fails_over_and_loses_nothing(
        cluster6, tmp_path, capsys, monkeypatch, durability):
    """The primary holding the namespace is SIGKILLed while tasks run (and, with `async`,
    are submitted); its replica is promoted. Every result is correct; a task ran twice only
    if it was running at the kill, or its commit had not reached the replica (what async
    replication may lose, docs/guarantees.md): read on the replica before its promotion.
    With `replicated` the killed server comes back as the new primary's replica (the
    replacement host), and every WAIT goes to whichever primary holds the slot. The driver
    still prints what tasks print (its subscription moved to the new primary)."""
    monkeypatch.setenv("FTQUEUE_DURABILITY", durability)
    start, nodes = node_starter(cluster6.address)
    log = tmp_path / "executions"
    try:
        for _ in range(2):
            start(2, "--lease-timeout", "3")
        ftqueue.init(address=cluster6.address)
        first = [logged.remote(i, log, 0.02) for i in range(200)]
        ftqueue.flush_submissions(timeout=60)
        wait_until(lambda: sum(1 for e in read_log(log) if e[0] == "E") >= 60, 60,
                   "a third of the tasks to run")
        owner = cluster6.owner_of(KEYS.stats)
        heir = replica_of(cluster6, owner)
        kill_ns = time.time_ns()
        owner.kill()
        if durability == "async":
            second = [logged.remote(i, log, 0.02) for i in range(200, 300)]   # mid-failover
        replica = redis.Redis.from_url(heir.address, decode_responses=True)
        replica.execute_command("READONLY")
        wait_until(lambda: replica.info("replication")["master_link_status"] == "down", 10,
                   "the replica to see its primary gone")
        before = read_log(log)
        ended = {task for kind, task, _, at in before if kind == "E" and at < kill_ns}
        states = {task: replica.hget(KEYS.task(task), "state") for task in ended}
        commits_missing = {t for t, s in states.items() if s not in ("FINISHED", "FAILED")}
        wait_until(lambda: cluster6.owner_of(KEYS.stats) is heir, 30, "the replica promoted")
        if durability == "replicated":
            owner.restart()     # rejoins (nodes.conf) as a replica of the promoted one
            wait_until(lambda: replica.info("replication")["connected_slaves"] >= 1, 30,
                       "the new primary to have a replica")
            second = [logged.remote(i, log, 0.02) for i in range(200, 300)]
        assert ftqueue.get(first + second, timeout=120) == [i * i for i in range(300)]
        replica.close()
        printed: list[str] = []
        marker = "printed-after-the-failover"
        assert ftqueue.get(shout.remote(marker), timeout=60) == marker
        wait_until(lambda: printed.append(capsys.readouterr().out) or marker in "".join(printed),
                   30, "the driver to print the task's output")
    finally:
        ftqueue.shutdown()
        for node in nodes:
            node.stop()
    entries = read_log(log)
    ended_attempts = {(task, attempt) for kind, task, attempt, at in entries
                      if kind == "E" and at < kill_ns}
    running_at_kill = {task for kind, task, attempt, at in entries
                       if kind == "S" and at < kill_ns and (task, attempt) not in ended_attempts}
    starts: dict[str, int] = {}
    for kind, task, _, _ in entries:
        if kind == "S":
            starts[task] = starts.get(task, 0) + 1
    assert len(starts) == 300 and all(
        any(e[0] == "E" and e[1] == task for e in entries) for task in starts)
    ids = {r.hex() for r in first}
    assert any(kind == "E" and task in ids and at > kill_ns for kind, task, _, at in entries), \
        "the kill came after the first batch: not mid-workload"
    duplicated = {task for task, n in starts.items() if n > 1}
    print(f"running at the kill {len(running_at_kill)}, commits the replica lacked "
          f"{len(commits_missing)}, tasks run twice {len(duplicated)}")
    assert duplicated <= running_at_kill | commits_missing, (
        duplicated, running_at_kill, commits_missing)


def test_a_bad_cluster_address_is_one_line_from_the_cli_without_its_password():
    for address, says in [("redis+cluster://:s3cret@127.0.0.1:1", "cannot reach"),
                          ("redis+cluster://:s3cret@127.0.0.1:1/3", "invalid Redis address")]:
        proc = cli(address, "status")
        lines = (proc.stdout + proc.stderr).strip().splitlines()
        assert proc.returncode == 1 and len(lines) == 1, lines
        assert says in lines[0] and "127.0.0.1:1" in lines[0] and "s3cret" not in lines[0]


def test_a_cluster_that_refuses_the_password_is_not_waited_out(cluster3):
    from ftqueue.store import retry_across_outage

    clients = [redis.Redis.from_url(server.address) for server in cluster3.primaries]
    for client in clients:
        client.config_set("requirepass", "s3cret")
    calls = []

    def step():
        calls.append(1)
        return connect(cluster3.address.replace("://", "://:changed@"))

    try:
        with pytest.raises(ftqueue.exceptions.FtqueueConnectionError,
                           match="refused the credentials") as info:
            retry_across_outage(step, give_up=lambda: len(calls) >= 5)
        assert len(calls) == 1 and "changed" not in str(info.value)
    finally:
        for client in clients:
            client.config_set("requirepass", "")
            client.close()

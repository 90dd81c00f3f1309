"""Chaos: tasks over two worker nodes while a seeded killer SIGKILLs busy workers, one node
is SIGKILLed, another is frozen past its lease, Redis itself is frozen past the lease and
then full (maxmemory, noeviction) for a while, some tasks `os._exit(75)` on their first
attempt, and the nodes' consoles are closed. Nothing may be lost, committed twice, or run
twice.

    python scripts/chaos.py [--tasks N] [--seed S] [--quick] [--json] [--cluster]

`--cluster` runs it all on a local Redis Cluster (3 primaries, a replica each) instead of one
Redis: Redis is then not frozen but the primary holding the namespace is SIGKILLed (its
replica is promoted, and the killed server comes back as a replica), and the new primary is
the one filled up. `--partitions N` spreads the namespace in N partitions (over the
primaries, with `--cluster`); the primary killed and filled is then the first partition's.

Every run of a task body appends a line (task, attempt, pid) to a file: executions are
counted, not only commits. `duplicate_executions` counts runs of an attempt that had
already run (a finished task handed back, a prefetched task run by two workers);
`retried_executions` counts the runs after a real death mid-task (the retries themselves).
Exits 1 if anything was lost, committed twice or run twice.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from typing import Any

import psutil
import redis

import ftqueue
import ftqueue.state
from ftqueue.embedded import RedisServer
from ftqueue.embedded_cluster import LocalCluster
from ftqueue.keys import Keys
from ftqueue.store import Store, connect


@ftqueue.remote(max_retries=-1)
def chaos_task(i: int, sleep_ms: int, log_path: str, exit_75: bool) -> int:
    attempt = ftqueue.get_runtime_context().get_task_attempt_number()
    fd = os.open(log_path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
    try:
        os.write(fd, f"{i} {attempt} {os.getpid()}\n".encode())
    finally:
        os.close(fd)
    if exit_75 and attempt == 0:
        os._exit(75)        # looks like a planned recycle: must be charged as a crash
    time.sleep(sleep_ms / 1000)
    return i * i


def count_executions(log_path: str) -> tuple[int, int, int]:
    """(executions, duplicate executions, retried executions) from the side-effect log."""
    seen: dict[tuple[str, str], int] = {}
    with open(log_path) as f:
        for line in f:
            i, attempt, _ = line.split()
            seen[(i, attempt)] = seen.get((i, attempt), 0) + 1
    total = sum(seen.values())
    duplicates = sum(n - 1 for n in seen.values())
    retried = sum(1 for (_, attempt) in seen if attempt != "0")
    return total, duplicates, retried


def now_ms() -> int:
    return int(time.time() * 1000)


class Node:
    def __init__(self, address: str, workers: int, lease_s: float) -> None:
        env = dict(os.environ, PYTHONPATH=os.pathsep.join(p for p in sys.path if p))
        env.pop("FTQUEUE_ADDRESS", None)
        self.log = tempfile.TemporaryFile()
        # Its console is a pipe that we close once it is up: a node whose console went
        # away must go on serving (and its workers' prints must not fail their tasks).
        self.process = subprocess.Popen(
            [sys.executable, "-m", "ftqueue", "worker", "--address", address, "--num-workers",
             str(workers), "--lease-timeout", str(lease_s), "--grace-period", "1",
             "--exit-with-parent", str(os.getpid())],
            stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
            env=env, start_new_session=True)
        assert self.process.stdout is not None
        self.process.stdout.readline()
        self.process.stdout.close()

    def pids(self) -> set[int]:
        try:
            return {self.process.pid} | {c.pid for c in psutil.Process(self.process.pid).children()}
        except psutil.NoSuchProcess:
            return set()

    def signal(self, sig: int) -> None:
        try:
            os.killpg(self.process.pid, sig)
        except ProcessLookupError:
            pass

    def stop(self) -> None:
        self.signal(signal.SIGCONT)
        self.signal(signal.SIGKILL)
        try:
            self.process.wait(10)
        except subprocess.TimeoutExpired:
            pass
        self.log.close()


class Killer(threading.Thread):
    """Every ~interval, SIGKILL the worker process of a random running task."""

    def __init__(self, r: Any, store: Store, nodes: list[Node], rng: random.Random,
                 interval_s: float) -> None:
        super().__init__(daemon=True)
        self.r, self.nodes, self.rng, self.interval_s = r, nodes, rng, interval_s
        self.store = store
        self.kills: list[tuple[str, int]] = []   # (task id, kill time ms)
        self.stop_event = threading.Event()
        # Held while Redis itself is frozen or full: a death then is recorded only when Redis
        # serves again, which would measure Redis's outage, not the supervisor's detection.
        self.paused = threading.Event()

    def run(self) -> None:
        while not self.stop_event.wait(self.interval_s * self.rng.uniform(0.5, 1.5)):
            if self.paused.is_set():
                continue
            try:
                self.kill_one()
            except (redis.RedisError, redis.exceptions.RedisClusterException, psutil.Error,
                    OSError):
                pass

    def kill_one(self) -> None:
        ours = set().union(*(n.pids() for n in self.nodes if n.process.poll() is None))
        running = [t.decode() for keys in self.store.parts
                   for t in self.r.zrange(keys.leases, 0, -1)]
        self.rng.shuffle(running)
        for task_id in running:
            state, worker_id = self.r.hmget(self.store.keys_for(task_id).task(task_id), "state",
                                            "worker_id")
            if state != b"RUNNING" or not worker_id:
                continue
            pid = self.r.hget(self.store.parts[0].worker(worker_id.decode()), "pid")
            if pid is None or int(pid) not in ours:
                continue
            proc = psutil.Process(int(pid))
            if proc.status() == psutil.STATUS_STOPPED:
                continue
            os.kill(int(pid), signal.SIGKILL)
            self.kills.append((task_id, now_ms()))
            return


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))] if ordered else 0.0


def detection_latencies(kills: list[tuple[str, int]]) -> tuple[list[float], list[float]]:
    """Seconds from each worker kill to (the failed attempt being recorded, the next attempt
    being claimed by a worker)."""
    detected, restarted = [], []
    for task_id, kill_ms in kills:
        rows = ftqueue.state.get_task(task_id)
        for row, after in zip(rows, rows[1:] + [None]):
            if row["error_type"] == "WORKER_DIED" and row["end_time"] and \
                    row["start_time"] * 1000 <= kill_ms + 5 <= row["end_time"] * 1000 + 1000:
                detected.append(max(0.0, row["end_time"] - kill_ms / 1000))
                if after is not None and after["start_time"]:
                    restarted.append(max(0.0, after["start_time"] - kill_ms / 1000))
                break
    return detected, restarted


class Redis:
    """The Redis under test: one server, or a local cluster (3 primaries, a replica each)."""

    def __init__(self, server: RedisServer | None, cluster: LocalCluster | None) -> None:
        self.server, self.cluster = server, cluster
        self.address = cluster.address if cluster else server.address  # type: ignore[union-attr]

    @classmethod
    def start(cls, cluster: bool) -> Redis:
        if cluster:
            return cls(None, LocalCluster.start(3, 1))
        return cls(RedisServer.start(unix_socket=True), None)

    def primary(self, keys: Keys) -> redis.Redis:
        """A plain client of the server holding the namespace."""
        if self.cluster is None:
            assert self.server is not None
            return redis.Redis.from_url(self.server.address)
        return redis.Redis.from_url(self.cluster.owner_of(keys.stats).address)

    def outage(self, keys: Keys, freeze_s: float) -> dict[str, Any]:
        """One Redis frozen past the lease; on a cluster, the namespace's primary SIGKILLed
        (its replica is promoted) and brought back, as a replica of the new one."""
        if self.cluster is None:
            assert self.server is not None
            os.kill(self.server.process.pid, signal.SIGSTOP)
            try:
                time.sleep(freeze_s)
            finally:
                os.kill(self.server.process.pid, signal.SIGCONT)
            return {"redis_frozen_s": freeze_s}
        victim = self.cluster.owner_of(keys.stats)
        killed = time.monotonic()
        victim.kill()
        deadline = killed + 60
        while True:
            try:
                if self.cluster.owner_of(keys.stats) is not victim:
                    break
            except Exception:  # noqa: BLE001 - the survivors are reconfiguring
                pass
            if time.monotonic() > deadline:
                raise RuntimeError("the replica was not promoted")
            time.sleep(0.05)
        promoted_s = time.monotonic() - killed
        victim.restart()        # rejoins as a replica of the promoted one (nodes.conf)
        return {"primary_killed": 1, "replica_promoted_s": round(promoted_s, 2)}

    def stop(self) -> None:
        if self.cluster is not None:
            self.cluster.stop()
        if self.server is not None:
            self.server.stop()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tasks", type=int, default=2000)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--kill-interval", type=float, default=0.3)
    parser.add_argument("--lease-timeout", type=float, default=3.0)
    parser.add_argument("--quick", action="store_true", help="a short profile (< 1 min)")
    parser.add_argument("--json", action="store_true", help="one JSON object on the last line")
    parser.add_argument("--cluster", action="store_true",
                        help="on a local Redis Cluster (3 primaries, a replica each)")
    parser.add_argument("--partitions", type=int, default=1,
                        help="FTQUEUE_PARTITIONS: spread the namespace (over the primaries)")
    args = parser.parse_args()
    os.environ["FTQUEUE_PARTITIONS"] = str(args.partitions)     # the nodes inherit it
    if args.quick:
        args.tasks, args.lease_timeout = 800, 1.5
    rng = random.Random(args.seed)
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(1))   # still clean up in `finally`

    deployment = Redis.start(args.cluster)
    address = deployment.address
    nodes: list[Node] = []
    log_dir = tempfile.mkdtemp(prefix="ftqueue-chaos-")
    log_path = os.path.join(log_dir, "executions")
    try:
        r = connect(address)
        store = Store(r)
        keys = store.parts[0]      # the namespace's own keys, or its first partition's
        nodes += [Node(address, 2, args.lease_timeout) for _ in range(2)]
        ftqueue.init(address=address)
        started = time.monotonic()
        refs = [chaos_task.remote(i, rng.randint(5, 50), log_path, i % 97 == 5)
                for i in range(args.tasks)]
        ftqueue.flush_submissions()
        killer = Killer(r, store, nodes, rng, args.kill_interval)
        killer.start()

        time.sleep(1.0)
        node_kill_ms = now_ms()
        nodes[0].signal(signal.SIGKILL)                 # a whole node lost
        nodes.append(Node(address, 2, args.lease_timeout))
        time.sleep(1.0)
        nodes[1].signal(signal.SIGSTOP)                 # a node frozen past its lease
        time.sleep(args.lease_timeout + 2.0)
        nodes[1].signal(signal.SIGCONT)
        killer.paused.set()
        time.sleep(0.5)
        redis_outage = deployment.outage(keys, args.lease_timeout + 2.0)
        time.sleep(0.5)
        full = deployment.primary(keys)
        full.config_set("maxmemory-policy", "noeviction")
        full.config_set("maxmemory", 1)                # Redis full: every write refused
        time.sleep(min(2.0, args.lease_timeout))
        full.config_set("maxmemory", 0)
        full.close()
        time.sleep(0.5)
        killer.paused.clear()

        lost = 0
        for i, ref in enumerate(refs):
            try:
                if ftqueue.get(ref, timeout=300) != i * i:
                    lost += 1
            except Exception as e:  # noqa: BLE001 - any failure to deliver counts as lost
                print(f"task {i}: {type(e).__name__}: {e}", file=sys.stderr)
                lost += 1
        elapsed = time.monotonic() - started
        killer.stop_event.set()
        killer.join(5)
        time.sleep(args.lease_timeout)              # let late (frozen) commits arrive
        stats: dict[str, int] = {}
        for part in store.parts:
            for k, v in r.hgetall(part.stats).items():
                stats[k.decode()] = stats.get(k.decode(), 0) + int(v)
        finished_commits = stats.get("tasks:FINISHED", 0)
        executions, duplicate_executions, retried_executions = count_executions(log_path)
        node_died = [row["end_time"] for ref in refs for row in ftqueue.state.get_task(ref.hex())
                     if row["error_type"] == "NODE_DIED"]
        latencies, restarts = detection_latencies(killer.kills)
        result = {
            "submitted": args.tasks,
            "finished": args.tasks - lost,
            "lost": lost,
            "duplicate_commits": max(0, finished_commits - args.tasks),
            "executions": executions,
            "duplicate_executions": duplicate_executions,
            "retried_executions": retried_executions,
            "fenced": stats.get("fenced", 0),
            "worker_kills": len(killer.kills),
            "retries": {k.split(":", 1)[1]: v for k, v in stats.items()
                        if k.startswith("retries:")},
            "detect_p50_s": round(percentile(latencies, 0.5), 3),
            "detect_p99_s": round(percentile(latencies, 0.99), 3),
            "detect_max_s": round(max(latencies, default=0.0), 3),
            "retry_start_p50_s": round(percentile(restarts, 0.5), 3),
            "retry_start_p99_s": round(percentile(restarts, 0.99), 3),
            "node_loss_detect_s": (round(min(node_died) - node_kill_ms / 1000, 3)
                                   if node_died else None),
            "lease_timeout_s": args.lease_timeout,
            "elapsed_s": round(elapsed, 1),
            **redis_outage,
        }
    finally:
        ftqueue.shutdown()
        for node in nodes:
            node.stop()
        deployment.stop()
        shutil.rmtree(log_dir, ignore_errors=True)

    print(f"submitted {result['submitted']}  finished {result['finished']}  lost {result['lost']}  "
          f"duplicate commits {result['duplicate_commits']}  "
          f"fenced late results {result['fenced']}")
    print(f"executions {result['executions']}  duplicate executions "
          f"{result['duplicate_executions']}  retried executions {result['retried_executions']}")
    print(f"worker kills {result['worker_kills']}  retries by cause {result['retries']}")
    print(f"worker-crash detection p50 {result['detect_p50_s']} s  p99 {result['detect_p99_s']} s  "
          f"max {result['detect_max_s']} s")
    print(f"retry of a killed worker's task started after p50 {result['retry_start_p50_s']} s  "
          f"p99 {result['retry_start_p99_s']} s")
    print(f"node loss detected after {result['node_loss_detect_s']} s "
          f"(lease timeout {args.lease_timeout} s)   elapsed {result['elapsed_s']} s")
    if args.json:
        print(json.dumps(result))
    return 1 if result["lost"] or result["duplicate_commits"] or \
        result["duplicate_executions"] else 0


if __name__ == "__main__":
    sys.exit(main())

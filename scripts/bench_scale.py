"""A large backlog: submissions, memory, drain throughput and the state views at scale.

    python scripts/bench_scale.py [--tasks 1000000] [--sample 20000] [--quick] [--json]

On a private redis-server (unix socket): submit `--tasks` no-op tasks from one driver with
no worker running (submissions/s, batched as `f.remote()` batches them), then Redis memory
per queued task; `list tasks` (the default page) and `summary tasks` times with all of them
queued; then a node with 2 workers drains `--sample` tasks of that backlog (claim + commit
throughput with the backlog at `--tasks`), against the same node on a fresh server whose
backlog a feeder keeps near 1,000 (the cost per task should not grow with the backlog:
target ratio >= 0.9). Every process started here is ended here, by process group.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import threading
import time

import redis

import ftqueue
from ftqueue.client import Client
from ftqueue.embedded import RedisServer
from ftqueue.keys import Keys
from ftqueue.spec import ResolvedOptions
from ftqueue.state import StateReader
from ftqueue.store import Store

WORKERS = 2
NAMESPACE = "ftq"
LOW_BACKLOG = 1000
WARMUP = 500


@ftqueue.remote
def noop(x):
    return x


class Node:
    """`ftqueue worker` with 2 workers against `address`, in its own process group."""

    def __init__(self, address: str) -> None:
        env = dict(os.environ, PYTHONPATH=os.pathsep.join(p for p in sys.path if p))
        env.pop("FTQUEUE_ADDRESS", None)
        self.process = subprocess.Popen(
            [sys.executable, "-m", "ftqueue", "worker", "--address", address,
             "--namespace", NAMESPACE, "--num-workers", str(WORKERS),
             "--exit-with-parent", str(os.getpid())],
            stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
            env=env, start_new_session=True)
        assert self.process.stdout is not None
        self.process.stdout.readline()      # its first line: up (it serves on without a console)
        self.process.stdout.close()

    def stop(self) -> None:
        try:
            os.killpg(self.process.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        try:
            self.process.wait(10)
        except subprocess.TimeoutExpired:
            pass


def finished(r: redis.Redis, keys: Keys) -> int:
    return int(r.hget(keys.stats, "tasks:FINISHED") or 0)


def submit(client: Client, fn_ref: str, options: ResolvedOptions, n: int) -> None:
    for i in range(n):
        client.submit(fn_ref, "noop", options, (i,), {})
    client.flush()


def drain_rate(r: redis.Redis, keys: Keys, sample: int,
               feed: tuple[Client, str, ResolvedOptions] | None = None) -> float:
    """Tasks/s over `sample` completions after WARMUP (with `feed`, keeping the queue near
    LOW_BACKLOG while it runs)."""
    stop = threading.Event()

    def feeder() -> None:
        assert feed is not None
        client, fn_ref, options = feed
        sent = 0
        while not stop.is_set() and sent < WARMUP + sample + LOW_BACKLOG:
            gap = LOW_BACKLOG - (sent - finished(r, keys))
            if gap > 0:
                submit(client, fn_ref, options, gap)
                sent += gap
            else:
                time.sleep(0.005)   # a benchmark's feeder, not a test: polling is fine here

    thread = threading.Thread(target=feeder, daemon=True) if feed else None
    if thread:
        thread.start()
    try:
        while finished(r, keys) < WARMUP:
            time.sleep(0.01)
        start, first = time.perf_counter(), finished(r, keys)
        while finished(r, keys) < first + sample:
            time.sleep(0.01)
        return (finished(r, keys) - first) / (time.perf_counter() - start)
    finally:
        stop.set()
        if thread:
            thread.join(30)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tasks", type=int, default=1_000_000)
    parser.add_argument("--sample", type=int, default=20_000)
    parser.add_argument("--quick", action="store_true", help="small N, finishes in seconds")
    parser.add_argument("--json", action="store_true", help="one JSON object on the last line")
    args = parser.parse_args()
    if args.quick:
        args.tasks, args.sample = 20_000, 2_000
    keys = Keys(NAMESPACE)
    options = ResolvedOptions.resolve({})
    result: dict[str, float] = {"tasks": args.tasks, "sample": args.sample}

    server = RedisServer.start(unix_socket=True)
    node = None
    try:
        r = redis.Redis.from_url(server.address)
        client = Client(server.address, NAMESPACE)
        fn_ref = noop._fn_ref(client)
        client.flush()
        before = r.info("memory")["used_memory"]
        start = time.perf_counter()
        submit(client, fn_ref, options, args.tasks)
        result["submit_per_s"] = round(args.tasks / (time.perf_counter() - start))
        assert r.llen(keys.queue("default")) == args.tasks
        result["redis_bytes_per_queued_task"] = round(
            (r.info("memory")["used_memory"] - before) / args.tasks)
        reader = StateReader(Store(r, NAMESPACE))
        start = time.perf_counter()
        reader.list_tasks()
        result["list_tasks_s"] = round(time.perf_counter() - start, 3)
        start = time.perf_counter()
        summary = reader.summarize_tasks()
        result["summary_tasks_s"] = round(time.perf_counter() - start, 5)
        assert sum(sum(c.values()) for c in summary.values()) == args.tasks
        node = Node(server.address)
        result["drain_per_s_at_backlog"] = round(drain_rate(r, keys, args.sample))
        client.close()
    finally:
        if node:
            node.stop()
        server.stop()

    server = RedisServer.start(unix_socket=True)
    node = None
    try:
        r = redis.Redis.from_url(server.address)
        client = Client(server.address, NAMESPACE)
        fn_ref = noop._fn_ref(client)
        client.flush()
        node = Node(server.address)
        result["drain_per_s_at_1000"] = round(
            drain_rate(r, keys, args.sample, (client, fn_ref, options)))
        client.close()
    finally:
        if node:
            node.stop()
        server.stop()
    result["drain_ratio"] = round(result["drain_per_s_at_backlog"]
                                  / result["drain_per_s_at_1000"], 3)

    print(f"{args.tasks} no-op tasks queued from one driver, no worker running")
    print(f"  submissions: {result['submit_per_s']}/s (target >= 50,000/s)")
    print(f"  Redis memory per queued task: {result['redis_bytes_per_queued_task']} bytes "
          "(target <= 500)")
    print(f"  list tasks: {result['list_tasks_s']} s   summary tasks: "
          f"{result['summary_tasks_s']} s")
    print(f"  drain with {WORKERS} workers, {args.sample} tasks: "
          f"{result['drain_per_s_at_backlog']}/s at a backlog of {args.tasks}, "
          f"{result['drain_per_s_at_1000']}/s at ~{LOW_BACKLOG} "
          f"(ratio {result['drain_ratio']}; target >= 0.9)")
    if args.json:
        print(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())

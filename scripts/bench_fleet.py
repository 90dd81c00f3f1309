"""Many nodes on one Redis: Redis's work while they idle, and the detection of a lost one.

    python scripts/bench_fleet.py [--nodes 50] [--lease-timeout 5] [--idle-s 10] [--quick] [--json]

Starts a private redis-server (127.0.0.1) and `--nodes` nodes of 1 worker each (processes
on this machine), waits until all are registered, then measures Redis's CPU (INFO cpu) and
commands per second (INFO commandstats, the top ones named) over `--idle-s` seconds with
nothing to run (target: <= 2 % of a core: heartbeats, renewals and sweeps cost O(expired),
not O(nodes x leases)). Then SIGKILLs one node's process group and reports how long the
others take to mark it DEAD (target: <= lease timeout + 2 s). Every process started here is
ended here, by process group.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import time

import redis

from ftqueue.embedded import RedisServer
from ftqueue.keys import Keys

NAMESPACE = "ftq"


def start_node(address: str, lease_s: float) -> subprocess.Popen[bytes]:
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(p for p in sys.path if p))
    env.pop("FTQUEUE_ADDRESS", None)
    return subprocess.Popen(
        [sys.executable, "-m", "ftqueue", "worker", "--address", address, "--namespace",
         NAMESPACE, "--num-workers", "1", "--lease-timeout", str(lease_s),
         "--exit-with-parent", str(os.getpid())],
        stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        env=env, start_new_session=True)


def kill_group(process: subprocess.Popen[bytes]) -> None:
    try:
        os.killpg(process.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass
    try:
        process.wait(10)
    except subprocess.TimeoutExpired:
        pass


def wait_for(predicate, timeout_s: float, what: str) -> None:  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout_s
    while not predicate():
        if time.monotonic() > deadline:
            raise SystemExit(f"timed out waiting for {what}")
        time.sleep(0.05)     # a benchmark's wait, not a test's


def node_id_of(r: redis.Redis, keys: Keys, pid: int) -> str | None:
    for raw in r.zrange(keys.nodes, 0, -1):
        node = raw.decode()
        if r.hget(keys.node(node), "pid") == str(pid).encode():
            return node
    return None


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--nodes", type=int, default=50)
    parser.add_argument("--lease-timeout", type=float, default=5.0)
    parser.add_argument("--idle-s", type=float, default=10.0)
    parser.add_argument("--quick", action="store_true", help="5 nodes, finishes in seconds")
    parser.add_argument("--json", action="store_true", help="one JSON object on the last line")
    args = parser.parse_args()
    if args.quick:
        args.nodes, args.idle_s = 5, 3.0
    keys = Keys(NAMESPACE)
    server = RedisServer.start(unix_socket=False)
    nodes: list[subprocess.Popen[bytes]] = []
    try:
        r = redis.Redis.from_url(server.address)
        start = time.monotonic()
        nodes = [start_node(server.address, args.lease_timeout) for _ in range(args.nodes)]
        wait_for(lambda: r.zcard(keys.nodes) >= args.nodes, 60 + 5 * args.nodes,
                 f"{args.nodes} nodes to register")
        started_s = time.monotonic() - start
        time.sleep(2.0)      # let start-up work settle before measuring idle
        calls0 = {k: v["calls"] for k, v in r.info("commandstats").items()}
        cpu0 = r.info("cpu")
        t0 = time.monotonic()
        time.sleep(args.idle_s)
        elapsed = time.monotonic() - t0
        cpu1 = r.info("cpu")
        calls1 = {k: v["calls"] for k, v in r.info("commandstats").items()}
        busy = sum(float(cpu1[f]) - float(cpu0[f]) for f in ("used_cpu_user", "used_cpu_sys"))
        per_s = {k.removeprefix("cmdstat_"): (n - calls0.get(k, 0)) / elapsed
                 for k, n in calls1.items() if k != "cmdstat_info"}
        top = sorted(((k, v) for k, v in per_s.items() if v > 0), key=lambda kv: -kv[1])
        # A lost node: SIGKILL one node's whole process group, time until it is DEAD.
        victim = nodes[0]
        node = node_id_of(r, keys, victim.pid)
        assert node is not None, "the victim node is not registered"
        killed = time.monotonic()
        kill_group(victim)
        wait_for(lambda: r.hget(keys.node(node), "state") == b"DEAD",
                 args.lease_timeout * 4 + 30, "the killed node to be marked DEAD")
        detect_s = time.monotonic() - killed
    finally:
        for process in nodes:
            kill_group(process)
        server.stop()
    result = {
        "nodes": args.nodes, "lease_timeout_s": args.lease_timeout,
        "nodes_started_s": round(started_s, 1),
        "idle_redis_cpu_pct": round(100 * busy / elapsed, 2),
        "idle_redis_cmds_per_s": round(sum(per_s.values())),
        "idle_redis_cmds_top": {k: round(v, 1) for k, v in top[:10]},
        "lost_node_detect_s": round(detect_s, 2),
    }
    print(f"{args.nodes} nodes x 1 worker on one Redis (started in {result['nodes_started_s']} s)")
    print(f"  idle: Redis CPU {result['idle_redis_cpu_pct']} % of a core (target <= 2 %), "
          f"{result['idle_redis_cmds_per_s']} commands/s: "
          + ", ".join(f"{v} {k}" for k, v in result["idle_redis_cmds_top"].items()))
    print(f"  a SIGKILLed node marked DEAD after {result['lost_node_detect_s']} s "
          f"(lease {args.lease_timeout} s; target <= lease + 2 s)")
    if args.json:
        print(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())

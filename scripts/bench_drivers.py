"""Many drivers at once: total throughput and round trips when 8 processes submit and get.

    python scripts/bench_drivers.py [--drivers 8] [--nodes 2] [--tasks 2000] [--quick] [--json]

A private redis-server (127.0.0.1), `--nodes` nodes of 1 worker each, and `--drivers`
driver processes started together: each submits `--tasks` no-op tasks and gets them all,
then times `--samples` sequential round trips. Reported: total tasks/s (all drivers' tasks
over the span from the first start to the last end), each driver's own rate (the slowest
shows whether one starves), and the round trip p50/p99 over all drivers. Every process
started here is ended here, by process group.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import time

import ftqueue
from ftqueue.embedded import RedisServer

NAMESPACE = "ftq"


@ftqueue.remote
def noop(x):
    return x


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def driver(address: str, tasks: int, samples: int) -> None:
    """One driver process: prints one JSON line with its figures."""
    ftqueue.init(address=address, namespace=NAMESPACE)
    try:
        ftqueue.get(noop.remote(-1))        # connected, function stored
        start = time.time()
        assert ftqueue.get([noop.remote(i) for i in range(tasks)]) == list(range(tasks))
        end = time.time()
        trips = []
        for i in range(samples):
            t = time.perf_counter()
            assert ftqueue.get(noop.remote(i)) == i
            trips.append((time.perf_counter() - t) * 1000)
        print(json.dumps({"start": start, "end": end, "trips_ms": trips}), flush=True)
    finally:
        ftqueue.shutdown()


def child_env() -> dict[str, str]:
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(p for p in sys.path if p))
    env.pop("FTQUEUE_ADDRESS", None)
    return env


def kill_group(process: subprocess.Popen[str]) -> None:
    try:
        os.killpg(process.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass
    try:
        process.wait(10)
    except subprocess.TimeoutExpired:
        pass


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--drivers", type=int, default=8)
    parser.add_argument("--nodes", type=int, default=2)
    parser.add_argument("--tasks", type=int, default=2000, help="per driver")
    parser.add_argument("--samples", type=int, default=100, help="round trips per driver")
    parser.add_argument("--quick", action="store_true", help="small N, finishes in seconds")
    parser.add_argument("--json", action="store_true", help="one JSON object on the last line")
    parser.add_argument("--driver", nargs=3, metavar=("ADDRESS", "TASKS", "SAMPLES"),
                        help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.driver:
        driver(args.driver[0], int(args.driver[1]), int(args.driver[2]))
        return 0
    if args.quick:
        args.tasks, args.samples = 300, 20

    server = RedisServer.start(unix_socket=False)
    processes: list[subprocess.Popen[str]] = []
    try:
        for _ in range(args.nodes):
            node = subprocess.Popen(
                [sys.executable, "-m", "ftqueue", "worker", "--address", server.address,
                 "--namespace", NAMESPACE, "--num-workers", "1",
                 "--exit-with-parent", str(os.getpid())],
                stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                env=child_env(), start_new_session=True, text=True)
            processes.append(node)
            assert node.stdout is not None
            node.stdout.readline()          # its first line: up (it serves on without a console)
            node.stdout.close()
        drivers = [subprocess.Popen(
            [sys.executable, os.path.abspath(__file__), "--driver", server.address,
             str(args.tasks), str(args.samples)],
            stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL,
            env=child_env(), start_new_session=True, text=True)
            for _ in range(args.drivers)]
        processes += drivers
        figures = []
        for d in drivers:
            out, _ = d.communicate(timeout=600)
            assert d.returncode == 0, f"a driver failed (exit code {d.returncode})"
            figures.append(json.loads(out.strip().splitlines()[-1]))
    finally:
        for process in processes:
            kill_group(process)
        server.stop()

    span = max(f["end"] for f in figures) - min(f["start"] for f in figures)
    rates = [args.tasks / (f["end"] - f["start"]) for f in figures]
    trips = [t for f in figures for t in f["trips_ms"]]
    result = {
        "drivers": args.drivers, "nodes": args.nodes, "tasks_per_driver": args.tasks,
        "total_tasks_per_s": round(args.drivers * args.tasks / span),
        "driver_tasks_per_s_min": round(min(rates)), "driver_tasks_per_s_max": round(max(rates)),
        "p50_ms": round(percentile(trips, 0.5), 3), "p99_ms": round(percentile(trips, 0.99), 3),
    }
    print(f"{args.drivers} drivers x {args.tasks} no-op tasks, {args.nodes} nodes x 1 worker")
    print(f"  total {result['total_tasks_per_s']} tasks/s; per driver "
          f"{result['driver_tasks_per_s_min']}..{result['driver_tasks_per_s_max']} tasks/s")
    print(f"  round trip (sequential per driver, the others running): p50 {result['p50_ms']} ms, "
          f"p99 {result['p99_ms']} ms")
    if args.json:
        print(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())

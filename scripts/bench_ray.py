"""Ray parity figures: resource-aware claiming and streamed values.

    python scripts/bench_ray.py [--tasks N] [--quick] [--json]

On one redis-server (unix socket) with 2 nodes of 1 worker each (each offering 2 CPUs,
1 GPU and 1 `accel`): throughput of N no-op tasks of the default shape (`num_cpus=1`), then
of N no-op tasks mixing 3 shapes (`CPU=1`; `num_cpus=0.5, num_gpus=0.5` with `max_calls=0`,
see SHAPES; `resources={"accel": 0.5}`); and the latency from a generator task yielding a
value to its consumer holding that value's ref (p50/p99 over 300 values, the producer
pausing 5 ms between yields). Compare the default-shape figure with `scripts/bench.py` (its
embedded node has 2 workers on one node).
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import statistics
import subprocess
import sys
import time

import ftqueue
from ftqueue.embedded import RedisServer

NODE_FLAGS = ["--num-workers", "1", "--num-cpus", "2", "--num-gpus", "1",
              "--resources", '{"accel": 1}']
# max_calls=0: a GPU task otherwise runs in a fresh worker process (max_calls=1, as Ray), and
# the figure would measure process start-up, not claiming.
SHAPES = [{}, {"num_cpus": 0.5, "num_gpus": 0.5, "max_calls": 0}, {"resources": {"accel": 0.5}}]


@ftqueue.remote
def noop(x):
    return x


@ftqueue.remote
def ticker(n, pause_s):
    for _ in range(n):
        time.sleep(pause_s)
        yield time.time()


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def throughput(n: int, mixed: bool) -> float:
    variants = [noop.options(**s) for s in SHAPES] if mixed else [noop]
    start = time.perf_counter()
    refs = [variants[i % len(variants)].remote(i) for i in range(n)]
    assert ftqueue.get(refs) == list(range(n))
    return n / (time.perf_counter() - start)


def yield_latency_ms(n: int) -> list[float]:
    out = []
    for ref in ticker.remote(n, 0.005):
        received = time.time()
        out.append((received - ftqueue.get(ref)) * 1000)
    return out


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tasks", type=int, default=10_000)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    if args.quick:
        args.tasks, args.runs = 1000, 1
    server = RedisServer.start(unix_socket=True)
    nodes = [subprocess.Popen([sys.executable, "-m", "ftqueue", "worker", "--address",
                               server.address, *NODE_FLAGS], start_new_session=True,
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
             for _ in range(2)]
    try:
        ftqueue.init(address=server.address)
        deadline = time.monotonic() + 30
        while sum(n["Alive"] for n in ftqueue.nodes()) < 2:
            if time.monotonic() > deadline:
                raise RuntimeError("the nodes did not start")
            time.sleep(0.05)
        throughput(200, mixed=True)      # warm up: workers started, functions cached
        plain = [throughput(args.tasks, mixed=False) for _ in range(args.runs)]
        mixed = [throughput(args.tasks, mixed=True) for _ in range(args.runs)]
        latency = yield_latency_ms(300)
    finally:
        ftqueue.shutdown()
        for node in nodes:
            try:
                os.killpg(node.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
            node.wait()
        server.stop()
    result = {
        "tasks": args.tasks,
        "default_shape_tasks_per_s": round(statistics.median(plain)),
        "three_shapes_tasks_per_s": round(statistics.median(mixed)),
        "yield_to_ref_p50_ms": round(percentile(latency, 0.5), 3),
        "yield_to_ref_p99_ms": round(percentile(latency, 0.99), 3),
    }
    print(f"{args.tasks} no-op tasks on 2 nodes x 1 worker, median of {args.runs} runs")
    print(f"  default shape (num_cpus=1): {result['default_shape_tasks_per_s']} tasks/s")
    print(f"  three shapes mixed:         {result['three_shapes_tasks_per_s']} tasks/s")
    print(f"  yield -> consumer holds the ref: p50 {result['yield_to_ref_p50_ms']} ms, "
          f"p99 {result['yield_to_ref_p99_ms']} ms")
    if args.json:
        print(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())

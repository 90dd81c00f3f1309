"""Throughput and latency of ftqueue against a raw redis-py queue, in one run.

    python scripts/bench.py [--tasks N] [--quick] [--json] [--dashboard]

ftqueue: N no-op tasks (the function returns its argument) submitted from one driver, all
results collected, on the embedded default with 2 worker processes. Raw baseline: the same
N through a bare redis-py loop (per task LPUSH, BRPOP, SET result, GET result) with 2
consumer processes, on its own redis-server from the same binary, over a unix socket (as
the embedded cluster) and over TCP. The cost of a task over the throughput runs: Redis
commands (INFO commandstats, the commands run inside scripts included, with the top ones
named), Redis CPU (INFO cpu) and CPU over all processes (driver, node, workers, Redis).
Also: single-task round trip p50/p99 over 200 sequential tasks for both, Redis memory per
queued task (100,000 tasks queued, no worker), and the peak RSS of a worker process.

    python scripts/bench.py --flow [--delayed 100000] [--limit-keys 1000]

adds the time-and-flow-control case: the plain-task figures again with a backlog present
(100,000 DELAYED tasks due in an hour, and 1,000 limit keys each with a task run and one
reserved an hour ahead under `max_rate="1/h"`), as a ratio to the figures without it; the
start lateness (start minus eta) p50/p99 of 200 delayed tasks due 20 ms apart on idle
workers; and the throughput of tasks under `max_concurrency` equal to the worker count.
`--dashboard` also measures the throughput again while a dashboard serves the cluster and a
client polls its overview and tasks page every second, as an open browser tab does (target:
within 5 %).

    python scripts/bench.py --cluster [--tasks N] [--quick] [--json]

instead runs the throughput case on a local Redis Cluster of 1 and of 3 primaries (a
`redis+cluster://` address, one node of 2 workers), reporting per primary the Redis CPU and
commands per task, beside the same run on one plain Redis over TCP (`plain_tcp`). With one
partition a namespace is one hash slot, so all of its work lands on the primary that holds
it; the last run spreads it in 6 partitions over the 3 primaries (FTQUEUE_PARTITIONS=6),
whose shares of the work the per-primary figures show.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import os
import pickle
import statistics
import sys
import time

import redis

import ftqueue
from ftqueue.client import Client
from ftqueue.embedded import RedisServer

WORKERS = 2


@ftqueue.remote
def noop(x):
    return x


class DashboardPoller:
    """A dashboard on the cluster and a client polling it as an open browser tab does."""

    def __init__(self, address: str, namespace: str) -> None:
        import threading

        from ftqueue.dashboard.server import DashboardProcess
        from ftqueue.embedded import free_port

        self.dashboard = DashboardProcess.start(address, namespace, "127.0.0.1", free_port())
        self.polls = 0
        self.stop_event = threading.Event()
        self.thread = threading.Thread(target=self._poll, daemon=True)
        self.thread.start()

    def _poll(self) -> None:
        import urllib.request

        while not self.stop_event.wait(1.0):
            for path in ("/api/summary", "/api/tasks"):
                with urllib.request.urlopen(self.dashboard.url + path, timeout=30) as r:
                    r.read()
            self.polls += 1

    def stop(self) -> None:
        self.stop_event.set()
        self.thread.join(30)
        self.dashboard.stop()


class CostMeter:
    """Redis's work (INFO commandstats, INFO cpu) and the CPU time of this process and all
    its descendants (node, workers, the embedded redis-server) between two snapshots."""

    def __init__(self, address: str) -> None:
        self.r = redis.Redis.from_url(address)
        self.roles: dict[int, str] = {}
        self.start = self._snapshot()

    def _snapshot(self) -> tuple[dict[str, int], float, dict[int, float]]:
        import psutil

        stats = self.r.info("commandstats")
        calls = {name.removeprefix("cmdstat_"): int(v["calls"]) for name, v in stats.items()}
        cpu = self.r.info("cpu")
        redis_s = float(cpu["used_cpu_user"]) + float(cpu["used_cpu_sys"])
        procs: dict[int, float] = {}
        me = psutil.Process()
        for proc in [me, *me.children(recursive=True)]:
            try:
                t = proc.cpu_times()
                procs[proc.pid] = t.user + t.system
                if proc.pid not in self.roles:
                    self.roles[proc.pid] = _role(proc, me.pid)
            except psutil.Error:
                continue
        return calls, redis_s, procs

    def per_task(self, tasks: int) -> dict[str, object]:
        calls0, redis0, procs0 = self.start
        calls1, redis1, procs1 = self._snapshot()
        delta = {name: (n - calls0.get(name, 0)) / tasks for name, n in calls1.items()}
        delta = {name: d for name, d in delta.items() if d > 0}
        # The command INFO itself (this meter's) is not the engine's work.
        delta.pop("info", None)
        # A process that ended between the snapshots counts from 0 to its last sample only
        # if it was sampled: the throughput runs start and end no process.
        cpu_s = sum(t - procs0.get(pid, 0.0) for pid, t in procs1.items())
        by_role: dict[str, float] = {}
        for pid, t in procs1.items():
            role = self.roles.get(pid, "other")
            by_role[role] = by_role.get(role, 0.0) + t - procs0.get(pid, 0.0)
        top = sorted(delta.items(), key=lambda kv: -kv[1])
        return {
            "redis_cmds_per_task": round(sum(delta.values()), 2),   # scripts' included
            "redis_scripts_per_task": round(delta.get("evalsha", 0) + delta.get("eval", 0), 2),
            "redis_cpu_us_per_task": round((redis1 - redis0) * 1e6 / tasks, 1),
            "cpu_us_per_task": round(cpu_s * 1e6 / tasks, 1),
            "redis_cmds_top": {name: round(d, 2) for name, d in top[:16]},
            "cpu_us_per_task_by_process": {role: round(v * 1e6 / tasks, 1)
                                           for role, v in sorted(by_role.items())},
        }


def _role(proc: object, driver_pid: int) -> str:
    """Which part of the cluster a process is: driver, redis, node (supervisor), worker."""
    import psutil

    assert isinstance(proc, psutil.Process)
    if proc.pid == driver_pid:
        return "driver"
    line = " ".join(proc.cmdline())
    if "redis-server" in line:
        return "redis"
    if "ftqueue.worker" in line:
        return "workers"
    if "ftqueue" in line:
        return "node"
    return "other"


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


# -- ftqueue ----------------------------------------------------------------------------------

def ftqueue_throughput(n: int) -> float:
    start = time.perf_counter()
    refs = [noop.remote(i) for i in range(n)]
    results = ftqueue.get(refs)
    elapsed = time.perf_counter() - start
    assert results == list(range(n))
    return n / elapsed


def ftqueue_latency(samples: int) -> list[float]:
    out = []
    for i in range(samples):
        start = time.perf_counter()
        assert ftqueue.get(noop.remote(i)) == i
        out.append((time.perf_counter() - start) * 1000)
    return out


@ftqueue.remote
def interruptible(path: str) -> None:
    try:
        _write_whole(path, "running")
        time.sleep(60)
    except KeyboardInterrupt:
        _write_whole(path + ".interrupted", repr(time.time()))
        raise


def _write_whole(path: str, text: str) -> None:
    # One unbuffered write: an interrupt cannot leave a buffer to be flushed later, over
    # what the handler writes (a cancel now comes within milliseconds of the start).
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        os.write(fd, text.encode())
    finally:
        os.close(fd)


def cancel_latency(samples: int) -> list[float]:
    """ms from `cancel()` returning to the KeyboardInterrupt inside the running task."""
    import tempfile

    out = []
    for _ in range(samples):
        path = tempfile.mktemp(prefix="ftqueue-cancel-")
        ref = interruptible.remote(path)
        while not os.path.exists(path):
            time.sleep(0.005)
        ftqueue.cancel(ref)
        returned = time.time()
        done = path + ".interrupted"
        while True:
            try:
                with open(done) as f:
                    text = f.read()
            except FileNotFoundError:
                text = ""
            if text:
                break
            time.sleep(0.002)
        out.append((float(text) - returned) * 1000)
        os.unlink(path)
        os.unlink(done)
    return out


def worker_peak_rss_mb() -> float:
    import psutil

    peak = 0
    for proc in psutil.Process().children(recursive=True):
        try:
            if "ftqueue.worker" not in " ".join(proc.cmdline()):
                continue
            with open(f"/proc/{proc.pid}/status") as f:
                for line in f:
                    if line.startswith("VmHWM:"):
                        peak = max(peak, int(line.split()[1]))
        except (OSError, psutil.Error):
            continue
    return peak / 1024


# -- time and flow control (--flow) -----------------------------------------------------------

@ftqueue.remote
def started_at(x):
    return time.time()


def add_backlog(delayed: int, limit_keys: int) -> None:
    """DELAYED tasks due in an hour, and limit keys with state in Redis (a start each and a
    start reserved an hour ahead)."""
    later = noop.options(delay_s=3600)
    for i in range(delayed):
        later.remote(i)
    ftqueue.flush_submissions()
    firsts = [noop.options(limit_key=f"key{k}", max_rate="1/h").remote(k)
              for k in range(limit_keys)]
    ftqueue.get(firsts)
    for k in range(limit_keys):
        noop.options(limit_key=f"key{k}", max_rate="1/h").remote(k)
    ftqueue.flush_submissions()


def delayed_lateness(samples: int) -> list[float]:
    """ms between each delayed task's eta and the moment its body started."""
    base = time.time() + 1.0
    etas = [base + i * 0.02 for i in range(samples)]
    refs = [started_at.options(eta=eta).remote(i) for i, eta in enumerate(etas)]
    return [(start - eta) * 1000 for start, eta in zip(ftqueue.get(refs), etas)]


def limited_throughput(n: int) -> float:
    limited = noop.options(limit_key="bench", max_concurrency=WORKERS)
    start = time.perf_counter()
    assert ftqueue.get([limited.remote(i) for i in range(n)]) == list(range(n))
    return n / (time.perf_counter() - start)


def flow_figures(args: argparse.Namespace, plain_rate: float,
                 plain_latencies: list[float]) -> dict[str, float]:
    lateness = delayed_lateness(args.lateness_samples)
    limited = statistics.median(limited_throughput(args.tasks) for _ in range(args.runs))
    add_backlog(args.delayed, args.limit_keys)
    rates = [ftqueue_throughput(args.tasks) for _ in range(args.runs)]
    latencies = ftqueue_latency(args.samples)
    return {
        "delayed_backlog": args.delayed, "limit_keys": args.limit_keys,
        "backlog_tasks_per_s": round(statistics.median(rates)),
        "backlog_throughput_ratio": round(statistics.median(rates) / plain_rate, 3),
        "backlog_p50_ms": round(percentile(latencies, 0.5), 3),
        "backlog_p50_ratio": round(percentile(latencies, 0.5)
                                   / percentile(plain_latencies, 0.5), 3),
        "delayed_lateness_p50_ms": round(percentile(lateness, 0.5), 1),
        "delayed_lateness_p99_ms": round(percentile(lateness, 0.99), 1),
        "limited_tasks_per_s": round(limited),
    }


def print_flow(result: dict[str, float]) -> None:
    print(f"  with {result['delayed_backlog']} delayed tasks and {result['limit_keys']} limit "
          f"keys present: {result['backlog_tasks_per_s']} tasks/s "
          f"(x{result['backlog_throughput_ratio']} of without), round trip p50 "
          f"{result['backlog_p50_ms']:.3f} ms (x{result['backlog_p50_ratio']})")
    print(f"  delayed task start lateness (start - eta): p50 "
          f"{result['delayed_lateness_p50_ms']} ms  p99 {result['delayed_lateness_p99_ms']} ms")
    print(f"  tasks under max_concurrency={WORKERS}: {result['limited_tasks_per_s']} tasks/s")


# -- raw redis-py baseline --------------------------------------------------------------------

def raw_consumer(address: str, stop_key: str) -> None:
    r = redis.Redis.from_url(address)
    while True:
        item = r.brpop(["raw:queue"], timeout=5)
        if item is None or item[1] == b"STOP":
            return
        task_id, arg = pickle.loads(item[1])
        r.set(f"raw:result:{task_id}", pickle.dumps(arg))


def raw_get(r: redis.Redis, task_id: int) -> object:
    while True:
        value = r.get(f"raw:result:{task_id}")
        if value is not None:
            return pickle.loads(value)


def raw_run(address: str, n: int, runs: int, samples: int) -> tuple[list[float], list[float]]:
    r = redis.Redis.from_url(address)
    ctx = multiprocessing.get_context("spawn")
    consumers = [ctx.Process(target=raw_consumer, args=(address, "stop")) for _ in range(WORKERS)]
    for c in consumers:
        c.start()
    try:
        rates = []
        base = 0
        for _ in range(runs):
            start = time.perf_counter()
            for i in range(base, base + n):
                r.lpush("raw:queue", pickle.dumps((i, i)))
            for i in range(base, base + n):
                assert raw_get(r, i) == i
            rates.append(n / (time.perf_counter() - start))
            base += n
        latencies = []
        for i in range(base, base + samples):
            start = time.perf_counter()
            r.lpush("raw:queue", pickle.dumps((i, i)))
            raw_get(r, i)
            latencies.append((time.perf_counter() - start) * 1000)
        return rates, latencies
    finally:
        for _ in consumers:
            r.lpush("raw:queue", b"STOP")
        for c in consumers:
            c.join(10)
            if c.is_alive():
                c.kill()


# -- memory per queued task -------------------------------------------------------------------

def bytes_per_queued_task(n: int) -> float:
    server = RedisServer.start(unix_socket=True)
    try:
        r = redis.Redis.from_url(server.address)
        client = Client(server.address, "ftq")
        noop._fn_ref(client)  # store the function first: it is shared, not per task
        client.flush()
        before = r.info("memory")["used_memory"]
        fn_ref, options = noop._fn_ref(client), _options()
        for i in range(n):
            client.submit(fn_ref, "noop", options, (i,), {})
        client.flush()
        assert r.llen("ftq:queue:default") == n
        after = r.info("memory")["used_memory"]
        client.close()
        return (after - before) / n
    finally:
        server.stop()


def _options():
    from ftqueue.spec import ResolvedOptions

    return ResolvedOptions.resolve({})


# -- Redis Cluster (--cluster) ------------------------------------------------------------------

PARTITIONS = 6     # two per primary of the 3-primary run
LATENCY_SAMPLES = 100

def cluster_figures(primaries: int, tasks: int, runs: int,
                    partitions: int = 1) -> dict[str, object]:
    """Throughput and per-primary Redis cost on a local cluster of `primaries` primaries;
    0: one plain Redis over TCP, the same measurement without cluster mode. `partitions`:
    FTQUEUE_PARTITIONS for the namespace (1: one hash slot)."""
    import subprocess

    from ftqueue.embedded_cluster import LocalCluster
    from ftqueue.keys import Keys

    cluster = LocalCluster.start(primaries, 0) if primaries else None
    plain = None if cluster else RedisServer.start(unix_socket=False)
    address = cluster.address if cluster else plain.address  # type: ignore[union-attr]
    servers = cluster.primaries if cluster else [plain]
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(p for p in sys.path if p),
               FTQUEUE_PARTITIONS=str(partitions))
    saved = os.environ.get("FTQUEUE_PARTITIONS")
    os.environ["FTQUEUE_PARTITIONS"] = str(partitions)
    node = subprocess.Popen([sys.executable, "-m", "ftqueue", "worker", "--address",
                             address, "--num-workers", str(WORKERS),
                             "--exit-with-parent", str(os.getpid())],
                            stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL, env=env, start_new_session=True)
    try:
        ftqueue.init(address=address)
        try:
            ftqueue_throughput(200)     # warm up: workers started, function cached
            owner = cluster.owner_of(Keys("ftq", hash_tag=True).stats) if cluster else plain
            meters = [PrimaryMeter(s.address) for s in servers]  # type: ignore[union-attr]
            rates = [ftqueue_throughput(tasks) for _ in range(runs)]
            costs = [m.per_task(tasks * runs) for m in meters]
            latencies = ftqueue_latency(LATENCY_SAMPLES)   # one at a time: idle workers
        finally:
            ftqueue.shutdown()
    finally:
        os.killpg(node.pid, 9)
        node.wait()
        if cluster:
            cluster.stop()
        if plain:
            plain.stop()
        if saved is None:
            os.environ.pop("FTQUEUE_PARTITIONS", None)
        else:
            os.environ["FTQUEUE_PARTITIONS"] = saved
    return {
        "primaries": primaries,
        "partitions": partitions,
        "tasks_per_s": round(statistics.median(rates)),
        "p50_ms": round(percentile(latencies, 0.5), 3),
        "p99_ms": round(percentile(latencies, 0.99), 3),
        "slot_primary": servers.index(owner),
        "redis_cpu_us_per_task_by_primary": [c[0] for c in costs],
        "redis_cmds_per_task_by_primary": [c[1] for c in costs],
    }


class PrimaryMeter:
    """One primary's CPU (INFO cpu) and commands (INFO commandstats) between two reads."""

    def __init__(self, address: str) -> None:
        self.r = redis.Redis.from_url(address)
        self.start = self._read()

    def _read(self) -> tuple[float, int]:
        cpu = self.r.info("cpu")
        calls = sum(int(v["calls"]) for name, v in self.r.info("commandstats").items()
                    if name != "cmdstat_info")
        return float(cpu["used_cpu_user"]) + float(cpu["used_cpu_sys"]), calls

    def per_task(self, tasks: int) -> tuple[float, float]:
        cpu1, calls1 = self._read()
        self.r.close()
        return (round((cpu1 - self.start[0]) * 1e6 / tasks, 1),
                round((calls1 - self.start[1]) / tasks, 2))


def cluster_main(args: argparse.Namespace) -> int:
    plain, *by_primaries = [cluster_figures(p, args.tasks, args.runs) for p in (0, 1, 3)]
    spread = cluster_figures(3, args.tasks, args.runs, partitions=PARTITIONS)
    result = {"mode": "cluster", "tasks": args.tasks, "runs": args.runs, "workers": WORKERS,
              "plain_tcp": {k: v for k, v in plain.items() if k not in ("primaries",
                                                                          "slot_primary")},
              **{f"primaries_{r['primaries']}": r for r in by_primaries},
              f"primaries_3_partitions_{PARTITIONS}": spread}
    print(f"{args.tasks} no-op tasks, {WORKERS} worker processes, median of {args.runs} runs")
    for r in [plain, *by_primaries, spread]:
        name = f"{r['primaries']} primaries" if r["primaries"] else "plain Redis (TCP)"
        where = (f"{r['partitions']} partitions over them" if r["partitions"] != 1
                 else f"the namespace's slot is on primary {r['slot_primary']}")
        print(f"  {name}: {r['tasks_per_s']} tasks/s, round trip p50 {r['p50_ms']} ms "
              f"p99 {r['p99_ms']} ms; Redis CPU us per task by primary "
              f"{r['redis_cpu_us_per_task_by_primary']}, commands per task "
              f"{r['redis_cmds_per_task_by_primary']} ({where})")
    if args.json:
        print(json.dumps(result))
    return 0


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tasks", type=int, default=10_000)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--samples", type=int, default=200)
    parser.add_argument("--queued", type=int, default=100_000)
    parser.add_argument("--quick", action="store_true", help="small N, finishes in seconds")
    parser.add_argument("--json", action="store_true", help="one JSON object on the last line")
    parser.add_argument("--flow", action="store_true",
                        help="also: plain tasks with delayed tasks and limit keys present, "
                             "delayed-task start lateness, limited-task throughput")
    parser.add_argument("--delayed", type=int, default=100_000)
    parser.add_argument("--limit-keys", type=int, default=1000)
    parser.add_argument("--lateness-samples", type=int, default=200)
    parser.add_argument("--dashboard", action="store_true",
                        help="also measure throughput while a dashboard is polled")
    parser.add_argument("--cluster", action="store_true",
                        help="instead: throughput and Redis CPU per primary on a local Redis "
                             "Cluster of 1 and of 3 primaries")
    args = parser.parse_args()
    if args.quick:
        args.tasks, args.samples, args.queued = 1000, 50, 5000
        args.delayed, args.limit_keys, args.lateness_samples = 2000, 50, 50
    if args.cluster:
        return cluster_main(args)

    info = ftqueue.init(num_workers=WORKERS)
    polled_rates: list[float] = []
    try:
        ftqueue_throughput(200)  # warm up: workers started, function cached
        meter = CostMeter(info.address)
        rates = [ftqueue_throughput(args.tasks) for _ in range(args.runs)]
        cost = meter.per_task(args.tasks * args.runs)
        if args.dashboard:
            poller = DashboardPoller(info.address, info.namespace)
            try:
                polled_rates = [ftqueue_throughput(args.tasks) for _ in range(args.runs)]
            finally:
                poller.stop()
        latencies = ftqueue_latency(args.samples)
        cancels = cancel_latency(5 if args.quick else 20)
        rss_mb = worker_peak_rss_mb()
        flow = flow_figures(args, statistics.median(rates), latencies) if args.flow else {}
    finally:
        ftqueue.shutdown()

    raw_server = RedisServer.start(unix_socket=True)
    try:
        raw_rates, raw_latencies = raw_run(raw_server.address, args.tasks, args.runs,
                                           args.samples)
    finally:
        raw_server.stop()
    raw_tcp_server = RedisServer.start(unix_socket=False)
    try:
        tcp_rates, tcp_latencies = raw_run(raw_tcp_server.address, args.tasks, args.runs,
                                           args.samples)
    finally:
        raw_tcp_server.stop()

    memory = bytes_per_queued_task(args.queued)
    result = {
        "tasks": args.tasks,
        "ftqueue_tasks_per_s": round(statistics.median(rates)),
        "raw_tasks_per_s": round(statistics.median(raw_rates)),
        "ratio": round(statistics.median(rates) / statistics.median(raw_rates), 2),
        "raw_tcp_tasks_per_s": round(statistics.median(tcp_rates)),
        "ratio_tcp": round(statistics.median(rates) / statistics.median(tcp_rates), 2),
        "raw_tcp_p50_ms": round(percentile(tcp_latencies, 0.5), 3),
        "p50_ms": round(percentile(latencies, 0.5), 3),
        "p99_ms": round(percentile(latencies, 0.99), 3),
        "raw_p50_ms": round(percentile(raw_latencies, 0.5), 3),
        "raw_p99_ms": round(percentile(raw_latencies, 0.99), 3),
        "redis_bytes_per_queued_task": round(memory),
        "cancel_to_interrupt_p50_ms": round(percentile(cancels, 0.5), 1),
        "cancel_to_interrupt_max_ms": round(max(cancels), 1),
        "worker_peak_rss_mb": round(rss_mb, 1),
        **cost,
        **flow,
    }
    if polled_rates:
        result["ftqueue_tasks_per_s_dashboard_polled"] = round(statistics.median(polled_rates))
        result["dashboard_slowdown_pct"] = round(
            100 * (1 - statistics.median(polled_rates) / statistics.median(rates)), 1)
    print(f"{args.tasks} no-op tasks, {WORKERS} worker processes, median of {args.runs} runs")
    print(f"  ftqueue   {result['ftqueue_tasks_per_s']:>7} tasks/s   round trip p50 "
          f"{result['p50_ms']:.3f} ms  p99 {result['p99_ms']:.3f} ms")
    print(f"  raw loop  {result['raw_tasks_per_s']:>7} tasks/s   round trip p50 "
          f"{result['raw_p50_ms']:.3f} ms  p99 {result['raw_p99_ms']:.3f} ms")
    print(f"  raw (TCP) {result['raw_tcp_tasks_per_s']:>7} tasks/s   round trip p50 "
          f"{result['raw_tcp_p50_ms']:.3f} ms")
    print(f"  ratio ftqueue/raw: {result['ratio']} (unix socket), {result['ratio_tcp']} (TCP)")
    print(f"  per task: {cost['redis_cmds_per_task']} Redis commands ("
          f"{cost['redis_scripts_per_task']} of them scripts), "
          f"{cost['redis_cpu_us_per_task']} us Redis CPU, "
          f"{cost['cpu_us_per_task']} us CPU over all processes")
    parts = cost["cpu_us_per_task_by_process"]
    assert isinstance(parts, dict)
    print("  CPU us per task by process: " + ", ".join(f"{k} {v}" for k, v in parts.items()))
    top = cost["redis_cmds_top"]
    assert isinstance(top, dict)
    print("  Redis commands per task: " + ", ".join(f"{n} {c}" for c, n in top.items()))
    print(f"  Redis memory per queued task: {result['redis_bytes_per_queued_task']} bytes "
          f"({args.queued} queued, no worker)")
    print(f"  worker peak RSS: {result['worker_peak_rss_mb']} MB")
    print(f"  cancel() returned -> KeyboardInterrupt in the task: p50 "
          f"{result['cancel_to_interrupt_p50_ms']} ms, "
          f"max {result['cancel_to_interrupt_max_ms']} ms")
    if flow:
        print_flow(flow)
    if polled_rates:
        print(f"  with a dashboard polled every second: "
              f"{result['ftqueue_tasks_per_s_dashboard_polled']} tasks/s "
              f"({result['dashboard_slowdown_pct']} % slower; target <= 5 %)")
    if args.json:
        print(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())

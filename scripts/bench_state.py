"""How fast `ftqueue list tasks` and the dashboard's tasks page answer on a big history.

    python scripts/bench_state.py [--tasks 100000] [--json]     # the issue's case: 1000000

Fills a private Redis with N finished tasks through the real transitions (submit, claim,
commit; 1 % of them failed, 1 % retried once), then times `list tasks --limit 100`, a
`task_id` filter, `state=FAILED`, `summary tasks`, in-process and as the CLI command; and
the dashboard's tasks page (`/tasks`, 50 rows, rendered) and its JSON (`/api/tasks`), default
view and `state=FAILED`, as server time measured by a client on the same host (best of 5).
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
import urllib.request

from ftqueue.embedded import RedisServer, free_port
from ftqueue.spec import new_id
from ftqueue.state import StateReader
from ftqueue.store import Store, connect

BATCH = 500


def fill(store: Store, n: int) -> list[str]:
    ids = []
    fields = {"name": "work", "func": "work", "fn": "0" * 40, "job_id": "00000001",
              "parent_task_id": "", "max_retries": "3", "notify": "ftq:done:bench"}
    for start in range(0, n, BATCH):
        batch = [new_id() for _ in range(min(BATCH, n - start))]
        store.submit([(i, "default", b"args", [], fields) for i in batch])
        claimed = []
        while len(claimed) < len(batch):
            claimed += store.claim("node", "worker", ["default"], 64, 1, 60_000)
        outcomes = []
        for k, task in enumerate(claimed):
            if k % 100 == 1:
                store.worker_lost("node", "worker", task.task_id, "WORKER_DIED", "bench", True)
                continue
            kind = "err" if k % 100 == 0 else "ok"
            outcomes.append((task.task_id, task.fence, kind, b"Vx", False, "ValueError: x"))
        store.commit(outcomes)
        for task in store.claim("node", "worker", ["default"], 64, 1, 60_000):
            store.commit([(task.task_id, task.fence, "ok", b"Vx", False, "")])
        store.redis.delete("ftq:done:bench")
        ids += batch
    return ids


def timed(fn, repeat: int = 5) -> float:
    best = float("inf")
    for _ in range(repeat):
        start = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - start)
    return best


def dashboard_times(address: str) -> dict[str, float]:
    """Server time of the dashboard's tasks page and API, from a client on this host."""
    from ftqueue.dashboard.server import DashboardProcess

    dashboard = DashboardProcess.start(address, "ftq", "127.0.0.1", free_port())
    try:
        def get(path: str) -> None:
            with urllib.request.urlopen(dashboard.url + path, timeout=60) as r:
                assert r.status == 200 and r.read()

        return {name: round(timed(lambda p=path: get(p)) * 1000, 1) for name, path in (
            ("page_default_ms", "/tasks"),
            ("page_failed_ms", "/tasks?state=FAILED"),
            ("api_default_ms", "/api/tasks"),
            ("api_failed_ms", "/api/tasks?filter=state=FAILED"),
            # No index answers a name: the page looks at PAGE_SCAN_MAX tasks, then stops.
            ("api_unindexed_ms", "/api/tasks?filter=name=nothing-has-this-name"))}
    finally:
        dashboard.stop()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tasks", type=int, default=100_000)
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    server = RedisServer.start(unix_socket=True)
    try:
        store = Store(connect(server.address))
        started = time.perf_counter()
        ids = fill(store, args.tasks)
        fill_s = time.perf_counter() - started
        reader = StateReader(store)
        target = ids[len(ids) // 2]
        result = {
            "tasks": args.tasks,
            "fill_s": round(fill_s, 1),
            "list_limit_100_ms": round(timed(lambda: reader.list_tasks([], limit=100)) * 1000, 1),
            "filter_task_id_ms": round(timed(
                lambda: reader.list_tasks([("task_id", "=", target)])) * 1000, 1),
            "filter_failed_limit_100_ms": round(timed(
                lambda: reader.list_tasks([("state", "=", "FAILED")], limit=100)) * 1000, 1),
            "summary_ms": round(timed(reader.summarize_tasks, 1) * 1000, 1),
        }
        result.update(dashboard_times(server.address))
        for name, cli_args in (("cli_list_limit_100_s", ["--limit", "100"]),
                               ("cli_filter_task_id_s", ["-f", f"task_id={target}"])):
            start = time.perf_counter()
            subprocess.run([sys.executable, "-m", "ftqueue", "list", "tasks", "--address",
                            server.address, *cli_args], check=True, capture_output=True)
            result[name] = round(time.perf_counter() - start, 3)
    finally:
        server.stop()
    print(f"{result['tasks']} tasks in Redis (filled in {result['fill_s']} s)")
    print(f"  list tasks --limit 100        {result['list_limit_100_ms']} ms in process, "
          f"{result['cli_list_limit_100_s']} s as a command")
    print(f"  list tasks -f task_id=...     {result['filter_task_id_ms']} ms in process, "
          f"{result['cli_filter_task_id_s']} s as a command")
    print(f"  list tasks -f state=FAILED    {result['filter_failed_limit_100_ms']} ms (limit 100)")
    print(f"  summary tasks                 {result['summary_ms']} ms")
    for key, label in (("page_default_ms", "dashboard /tasks"),
                       ("page_failed_ms", "dashboard /tasks?state=FAILED"),
                       ("api_default_ms", "dashboard /api/tasks"),
                       ("api_failed_ms", "dashboard /api/tasks?filter=state=FAILED"),
                       ("api_unindexed_ms", "dashboard /api/tasks?filter=name=<none>")):
        print(f"  {label:<42} {result[key]} ms (50 rows; target <= 300 ms)")
    if args.json:
        print(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""What a Redis crash costs under each persistence setting, measured.

    python scripts/redis_loss.py [--tasks N] [--json]

For each setting (AOF always, AOF everysec, RDB snapshot, none): a private redis-server, one
node of 2 workers, a driver submitting N short tasks; when half have run, Redis is
SIGKILLed and started again from whatever it persisted. Prints per setting: results
correct / N, tasks the driver had to submit again, extra executions (re-runs), and the
time to finish.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time

import ftqueue
from ftqueue.embedded import RedisServer

SETTINGS = {
    "aof-always": ["--appendonly", "yes", "--appendfsync", "always"],
    "aof-everysec": ["--appendonly", "yes", "--appendfsync", "everysec"],
    "rdb-60s": ["--appendonly", "no", "--save", "60 1"],
    "none": ["--appendonly", "no", "--save", ""],
}


@ftqueue.remote(max_retries=-1)
def step(path: str, i: int) -> int:
    with open(path, "a") as f:
        f.write(f"{i}\n")
    time.sleep(0.01)
    return i * 3


def _count(path: str) -> int:
    try:
        with open(path) as f:
            return len(f.read().split())
    except FileNotFoundError:
        return 0


def run(name: str, extra: list[str], n: int) -> dict:
    directory = tempfile.mkdtemp(prefix=f"ftqueue-loss-{name}-")
    log = os.path.join(directory, "executions")
    server = RedisServer.start(unix_socket=True, directory=directory, extra=extra)
    if name == "rdb-60s":
        time.sleep(0.1)
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(p for p in sys.path if p))
    node = subprocess.Popen([sys.executable, "-m", "ftqueue", "worker", "--address",
                             server.address, "--num-workers", "2", "--lease-timeout", "2"],
                            env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                            start_new_session=True)
    ftqueue.init(address=server.address, log_to_driver=False)
    try:
        started = time.monotonic()
        refs = [step.remote(log, i) for i in range(n)]
        ftqueue.flush_submissions()
        while _count(log) < n // 2:      # crash with half the work done
            time.sleep(0.01)
        server.restart()
        client = ftqueue.api._client
        correct = sum(1 for i, v in enumerate(ftqueue.get(refs, timeout=600)) if v == i * 3)
        executions = _count(log)
        return {"setting": name, "tasks": n, "correct": correct,
                "redis_reset_seen": client.redis_reset,
                "extra_executions": executions - n,
                "seconds": round(time.monotonic() - started, 1)}
    finally:
        ftqueue.shutdown()
        os.killpg(node.pid, 9)
        node.wait()
        server.stop()
        subprocess.run(["rm", "-rf", directory])


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tasks", type=int, default=400)
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    rows = [run(name, extra, args.tasks) for name, extra in SETTINGS.items()]
    print(f"{'setting':<14}{'correct':>10}{'extra runs':>12}{'reset seen':>12}{'seconds':>9}")
    for r in rows:
        print(f"{r['setting']:<14}{r['correct']:>6}/{r['tasks']:<4}{r['extra_executions']:>11}"
              f"{str(r['redis_reset_seen']):>12}{r['seconds']:>9}")
    if args.json:
        print(json.dumps(rows))
    return 0 if all(r["correct"] == r["tasks"] for r in rows) else 1


if __name__ == "__main__":
    sys.exit(main())

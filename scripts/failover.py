"""Failover: a primary, a replica and three sentinels (one redis-server binary), two worker
nodes and two drivers on a Sentinel address; the primary is SIGKILLed mid-run.

    python scripts/failover.py [--durability async|replicated|both] [--tasks N] [--quick]
                               [--json]

Drivers submit at a steady pace and write down each submission once `flush_submissions`
returned (acknowledged). Every run of a task body appends a start and an end line to a
file, so executions are counted, not only commits. When half the tasks have run, the
primary is killed with its host's data (host loss); the sentinels promote the replica and
a fresh replica joins the new primary (the replacement host: `replicated` needs one to
acknowledge anything). At the kill the script reads, on the replica about to be promoted,
what survives: `acknowledged_vanished` (acknowledged submissions it lacks; their driver
submits them again while it waits on them) and `commits_lost` (acknowledged commits it
lacks: the worker had moved on to its next body; those tasks run again).
Reported per mode: `lost` (tasks without their correct result at the end),
`acknowledged_lost` (the acknowledged ones among them),
`duplicate_executions` (split: attempts running at the kill / others), `failover_s` (kill
to the first commit on the new primary), throughput before and after.
Exits 1 if `replicated` lost anything, lost a commit or an acknowledged submission.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
from typing import Any, NamedTuple

import redis

import ftqueue
from ftqueue.embedded import RedisServer, set_parent_death_signal
from ftqueue.keys import Keys

SERVICE = "ftqfail"
LEASE_TIMEOUT_S = 5


@ftqueue.remote(max_retries=-1)
def failover_task(i: int, sleep_ms: int, log_path: str) -> int:
    ctx = ftqueue.get_runtime_context()
    task_id, attempt = ctx.get_task_id(), ctx.get_task_attempt_number()
    _append(log_path, f"S {task_id} {attempt} {os.getpid()} {time.time_ns()}\n")
    time.sleep(sleep_ms / 1000)
    _append(log_path, f"E {task_id} {attempt} {os.getpid()} {time.time_ns()}\n")
    return i * i


def _append(path: str, line: str) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
    try:
        os.write(fd, line.encode())
    finally:
        os.close(fd)


# -- a driver process ------------------------------------------------------------------------

def run_driver(address: str, first: int, count: int, rate: float, sleep_ms: int,
               log_path: str, ack_path: str, out_path: str) -> None:
    set_parent_death_signal()
    ftqueue.init(address=address)
    refs: list[tuple[int, Any]] = []
    batch = 10
    start = time.monotonic()
    for n in range(0, count, batch):
        pause = start + n / rate - time.monotonic()
        if pause > 0:
            time.sleep(pause)   # pacing, not synchronisation
        new = [(i, failover_task.remote(i, sleep_ms, log_path))
               for i in range(first + n, first + min(n + batch, count))]
        refs += new
        if ftqueue.flush_submissions(timeout=120):
            _append(ack_path, "".join(f"{ref.hex()} {i} {time.time_ns()}\n" for i, ref in new))
    results: dict[str, str] = {}
    for i, ref in refs:
        try:
            value = ftqueue.get(ref, timeout=180)
            results[ref.hex()] = "ok" if value == i * i else f"wrong {value!r}"
        except Exception as e:  # noqa: BLE001 - every outcome is reported
            results[ref.hex()] = f"{type(e).__name__}: {str(e).splitlines()[0][:200]}"
    with open(out_path, "w") as f:
        json.dump(results, f)
    ftqueue.shutdown()


# -- the orchestrator ------------------------------------------------------------------------

class Entry(NamedTuple):
    """One line of the executions log: a body's start (S) or end (E), by worker pid."""

    kind: str
    task: str
    attempt: str
    pid: str
    at: int


def read_log(log_path: str) -> list[Entry]:
    try:
        with open(log_path) as f:
            return [Entry(*line.split()[:4], int(line.split()[4]))  # type: ignore[misc]
                    for line in f if line.count(" ") == 4 and line.endswith("\n")]
    except FileNotFoundError:
        return []


def read_acks(paths: list[str]) -> list[tuple[str, int]]:
    out = []
    for path in paths:
        if os.path.exists(path):
            with open(path) as f:
                out += [(p[0], int(p[2])) for p in (line.split() for line in f) if len(p) == 3]
    return out


class Deployment:
    """Primary + replica + three sentinels on loopback, all ended by `stop()`."""

    def __init__(self, binary: str | None) -> None:
        self.binary = binary
        self.servers: list[RedisServer] = []
        self.primary = self._server([])
        host, port = self.primary.address[len("redis://"):].split(":")
        self.replica = self._server(["--replicaof", host, port])
        self.sentinels = [RedisServer.start_sentinel((host, int(port)), SERVICE, binary=binary)
                          for _ in range(3)]
        self.servers += self.sentinels
        self.address = ("redis+sentinel://" + ",".join(s.address[len("redis://"):]
                                                       for s in self.sentinels) + f"/{SERVICE}")
        replica = redis.Redis.from_url(self.replica.address)
        deadline = time.monotonic() + 20
        while replica.info("replication").get("master_link_status") != "up":
            if time.monotonic() > deadline:
                raise RuntimeError("the replica did not sync")
            time.sleep(0.05)
        replica.close()

    def _server(self, extra: list[str]) -> RedisServer:
        server = RedisServer.start(unix_socket=False, binary=self.binary, extra=extra)
        self.servers.append(server)
        return server

    def master(self) -> tuple[str, int] | None:
        for s in self.sentinels:
            try:
                r = redis.Redis.from_url(s.address, socket_timeout=0.5)
                host, port = r.execute_command("SENTINEL", "get-master-addr-by-name", SERVICE)
                r.close()
                return host.decode(), int(port)
            except (redis.RedisError, TypeError, ValueError):
                continue
        return None

    def stop(self) -> None:
        for server in self.servers:
            server.stop()


def start_node(address: str, env: dict[str, str], log: Any) -> subprocess.Popen[bytes]:
    return subprocess.Popen(
        [sys.executable, "-m", "ftqueue", "worker", "--address", address, "--num-workers", "2",
         "--lease-timeout", str(LEASE_TIMEOUT_S), "--grace-period", "1",
         "--exit-with-parent", str(os.getpid())],
        stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT, env=env,
        start_new_session=True)


def end_group(process: subprocess.Popen[bytes]) -> None:
    try:
        os.killpg(process.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass
    process.wait()


def run_mode(durability: str, tasks: int, sleep_ms: int, binary: str | None,
             workdir: str, replica_lag_s: float = 0.0) -> dict[str, Any]:
    log_path = os.path.join(workdir, "executions.log")
    acks = [os.path.join(workdir, f"acks{d}") for d in range(2)]
    outs = [os.path.join(workdir, f"results{d}.json") for d in range(2)]
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(p for p in sys.path if p),
               FTQUEUE_DURABILITY=durability, FTQUEUE_LEASE_TIMEOUT_S=str(LEASE_TIMEOUT_S))
    env.pop("FTQUEUE_ADDRESS", None)
    deployment = Deployment(binary)
    processes: list[subprocess.Popen[bytes]] = []
    node_log = open(os.path.join(workdir, "nodes.log"), "wb")
    try:
        for _ in range(2):
            processes.append(start_node(deployment.address, env, node_log))
        # Paced a little faster than 4 workers run: a backlog is queued, claimed and running
        # at the kill, and submissions go on through the failover.
        rate = max(20.0, 1.5 * 4 * 1000 / (sleep_ms + 5) / 2)
        drivers = [subprocess.Popen(
            [sys.executable, os.path.abspath(__file__), "--driver", deployment.address,
             str(d * (tasks // 2)), str(tasks // 2 if d == 0 else tasks - tasks // 2),
             str(rate), str(sleep_ms), log_path, acks[d], outs[d]],
            stdin=subprocess.DEVNULL, stdout=node_log, stderr=subprocess.STDOUT, env=env,
            start_new_session=True) for d in range(2)]
        processes += drivers
        replica = redis.Redis.from_url(deployment.replica.address, socket_timeout=5)
        old_master = deployment.master()
        deadline = time.monotonic() + 300
        while sum(1 for e in read_log(log_path) if e[0] == "E") < tasks // 2:
            if time.monotonic() > deadline or any(d.poll() is not None for d in drivers):
                raise RuntimeError(f"the run stalled before the kill (see {workdir})")
            time.sleep(0.05)
        if replica_lag_s:
            # A replica that lags by replica_lag_s: frozen and cut off from the primary (so
            # nothing more reaches even its socket), it misses every write of that window.
            os.kill(deployment.replica.process.pid, signal.SIGSTOP)
            cut = redis.Redis.from_url(deployment.primary.address, socket_timeout=5)
            cut.execute_command("CLIENT", "KILL", "TYPE", "replica")
            cut.close()
            time.sleep(replica_lag_s)
        kill_ns = time.time_ns()
        deployment.primary.kill()
        if replica_lag_s:
            os.kill(deployment.replica.process.pid, signal.SIGCONT)
        survived = what_survived(replica, read_acks(acks), read_log(log_path), kill_ns)
        replica.close()
        new_master = None
        while new_master in (None, old_master):
            if time.monotonic() > deadline:
                raise RuntimeError("the sentinels did not fail over")
            new_master = deployment.master()
            time.sleep(0.02)
        assert new_master is not None
        promoted_s = (time.time_ns() - kill_ns) / 1e9
        primary = redis.Redis(*new_master, socket_timeout=5)
        # The replacement host: a fresh replica of the new primary.
        deployment._server(["--replicaof", new_master[0], str(new_master[1])])
        finished_at_promotion = int(primary.hget(Keys("ftq").stats, "tasks:FINISHED") or 0)
        while int(primary.hget(Keys("ftq").stats, "tasks:FINISHED") or 0) \
                <= finished_at_promotion:
            if time.monotonic() > deadline:
                raise RuntimeError("no commit on the new primary")
            time.sleep(0.01)
        first_commit_ns = time.time_ns()
        primary.close()
        for d in drivers:
            d.wait(max(1.0, deadline - time.monotonic()))
        return report(durability, tasks, kill_ns, first_commit_ns, promoted_s, survived,
                      read_log(log_path), read_acks(acks), outs)
    finally:
        for process in processes:
            end_group(process)
        node_log.close()
        deployment.stop()


def what_survived(replica: redis.Redis, acks: list[tuple[str, int]],
                  log: list[Entry], kill_ns: int) -> dict[str, int]:
    """Read on the replica, before its promotion: what the new primary will start from.

    A commit counts as acknowledged when the worker that ran the body started its next body
    before the kill: a worker moves on only once its commit returned (with `replicated`,
    once a replica confirmed it). A body that ended just before the kill may still have its
    commit in flight; losing that one is allowed (the task runs again)."""
    keys = Keys("ftq")
    settle_replication(replica)
    acked = [task for task, at in acks if at < kill_ns]
    ended = {e.task for e in log if e.kind == "E" and e.at < kill_ns}
    committed = list(acknowledged_commits(log, kill_ns))
    pipe = replica.pipeline(transaction=False)
    for task in acked:
        pipe.exists(keys.task(task))
    for task in committed:
        pipe.hget(keys.task(task), "state")
    replies = pipe.execute()
    present, states = replies[:len(acked)], replies[len(acked):]
    return {"acknowledged_before_kill": len(acked),
            "acknowledged_vanished": sum(1 for p in present if not p),
            "ended_before_kill": len(ended),
            "commits_acknowledged_before_kill": len(committed),
            "commits_lost": sum(1 for s in states if s not in (b"FINISHED", b"FAILED"))}


def acknowledged_commits(log: list[Entry], kill_ns: int) -> set[str]:
    by_pid: dict[str, list[Entry]] = {}
    for e in sorted(log, key=lambda e: e.at):
        if e.at < kill_ns:
            by_pid.setdefault(e.pid, []).append(e)
    return {e.task for entries in by_pid.values() for e, then in zip(entries, entries[1:])
            if e.kind == "E" and then.kind == "S"}


def settle_replication(replica: redis.Redis, timeout_s: float = 5.0) -> None:
    """The replica may still be applying the tail of the dead primary's stream (bytes already
    in its socket): wait until it has read to the end and marked the link down."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if replica.info("replication").get("master_link_status") == "down":
            return
        time.sleep(0.01)


def report(durability: str, tasks: int, kill_ns: int, first_commit_ns: int, promoted_s: float,
           survived: dict[str, int], log: list[Entry],
           acks: list[tuple[str, int]], outs: list[str]) -> dict[str, Any]:
    results: dict[str, str] = {}
    for path in outs:
        if os.path.exists(path):
            with open(path) as f:
                results.update(json.load(f))
    acked = {task for task, _ in acks}
    refused = {t for t, r in results.items() if "not acknowledged" in r}
    bad = {t for t, r in results.items() if r != "ok" and t not in refused}
    starts: dict[str, list[int]] = {}
    ends: dict[tuple[str, str], int] = {}
    for kind, task, attempt, _, at in log:
        if kind == "S":
            starts.setdefault(task, []).append(at)
        else:
            ends[(task, attempt)] = at
    running_at_kill = {task for kind, task, attempt, _, at in log if kind == "S" and at < kill_ns
                       and ends.get((task, attempt), kill_ns) >= kill_ns}
    duplicated = {t: len(s) - 1 for t, s in starts.items() if len(s) > 1}
    ended = sorted(at for kind, _, _, _, at in log if kind == "E")
    before = [at for at in ended if at < kill_ns]
    after = [at for at in ended if at >= first_commit_ns]

    def rate(points: list[int]) -> float:
        span = (points[-1] - points[0]) / 1e9 if len(points) > 1 else 0
        return round(len(points) / span, 1) if span else 0.0

    return {
        "durability": durability, "tasks": tasks,
        "submitted": len(results), "acknowledged": len(acked & set(results)),
        "refused_not_acknowledged": len(refused),
        "lost": len(bad) + max(0, tasks - len(results)),
        "acknowledged_lost": len(bad & acked),
        **survived,
        "executions": sum(len(s) for s in starts.values()),
        "duplicate_executions": sum(duplicated.values()),
        "duplicate_executions_running_at_kill": sum(n for t, n in duplicated.items()
                                                    if t in running_at_kill),
        "duplicate_executions_other": sum(n for t, n in duplicated.items()
                                          if t not in running_at_kill),
        "running_at_kill": len(running_at_kill),
        "promoted_s": round(promoted_s, 2),
        "failover_s": round((first_commit_ns - kill_ns) / 1e9, 2),
        "throughput_before_per_s": rate(before), "throughput_after_per_s": rate(after),
        "errors": sorted({r for t, r in results.items() if t in bad})[:5],
    }


def main() -> int:
    if len(sys.argv) > 1 and sys.argv[1] == "--driver":
        a = sys.argv[2:]
        run_driver(a[0], int(a[1]), int(a[2]), float(a[3]), int(a[4]), a[5], a[6], a[7])
        return 0
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--durability", choices=["async", "replicated", "both"], default="both")
    parser.add_argument("--tasks", type=int, default=2000)
    parser.add_argument("--sleep-ms", type=int, default=20, help="each task body's duration")
    parser.add_argument("--redis-server", default=None, help="the binary (default: bundled)")
    parser.add_argument("--replica-lag-s", type=float, default=0.0,
                        help="freeze the replica this long before the kill (replication lag)")
    parser.add_argument("--quick", action="store_true", help="a short profile (< 1 min)")
    parser.add_argument("--json", action="store_true", help="one JSON object on the last line")
    args = parser.parse_args()
    if args.quick:
        args.tasks = min(args.tasks, 300)
    modes = ["async", "replicated"] if args.durability == "both" else [args.durability]
    out: dict[str, Any] = {}
    for mode in modes:
        workdir = tempfile.mkdtemp(prefix=f"ftqueue-failover-{mode}-")
        out[mode] = run_mode(mode, args.tasks, args.sleep_ms, args.redis_server, workdir,
                             args.replica_lag_s)
        if not args.json:
            print(mode, json.dumps(out[mode], indent=1))
    if args.json:
        print(json.dumps(out))
    r = out.get("replicated")
    failed = r is not None and (r["lost"] or r["acknowledged_lost"] or r["commits_lost"]
                                or r["acknowledged_vanished"] or r["duplicate_executions_other"])
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())

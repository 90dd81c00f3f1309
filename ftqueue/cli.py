"""The `ftqueue` command. User mistakes end with one line on stderr and exit code 1 (2 for
usage errors), never a traceback."""

from __future__ import annotations

import argparse
import json
import math
import os
import signal
import sys
from typing import Any, Callable

from . import admin_cli, resources, views
from .exceptions import FtqueueError
from .settings import (
    DEFAULT_DASHBOARD_PORT,
    NodeSettings,
    Settings,
    parse_size,
    visible_gpu_ids,
)
from .spec import is_task_id


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not an integer: {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1: {value}")
    return value


def _seconds(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number of seconds: {text!r}") from None
    if value < 0:
        raise argparse.ArgumentTypeError(f"must not be negative: {value}")
    return value


def _queues(text: str) -> tuple[str, ...]:
    names = tuple(q.strip() for q in text.split(",") if q.strip())
    if not names or any(c in q for q in names for c in " \t\r\n*?[]"):
        raise argparse.ArgumentTypeError(f"expected comma-separated queue names: {text!r}")
    return names


def _size(text: str) -> int:
    try:
        return parse_size(text)
    except ValueError as e:
        raise argparse.ArgumentTypeError(str(e)) from None


def _fraction(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a fraction: {text!r}") from None
    if not 0 < value <= 1:
        raise argparse.ArgumentTypeError(f"must be in (0, 1]: {value}")
    return value


def _add_common(p: argparse.ArgumentParser, env: Settings) -> None:
    p.add_argument("--address", default=env.address,
                   help="Redis URL (default: $FTQUEUE_ADDRESS)")
    p.add_argument("--namespace", default=env.namespace,
                   help="key prefix (default: $FTQUEUE_NAMESPACE or ftq)")


def _add_node(p: argparse.ArgumentParser, env: Settings) -> None:
    """A node's flags; each default is the matching FTQUEUE_* setting (settings.py)."""
    p.add_argument("--num-workers", type=_positive_int, default=None,
                   help="worker processes (default: enough for --num-cpus, else "
                        "$FTQUEUE_NUM_WORKERS or the CPU count)")
    p.set_defaults(env_workers=env.workers)
    p.add_argument("--num-cpus", type=_amount, default=None,
                   help="CPUs this node offers to tasks (default: --num-workers)")
    p.add_argument("--num-gpus", type=_amount, default=None,
                   help="GPUs it offers (default: those in CUDA_VISIBLE_DEVICES, else 0)")
    p.add_argument("--memory", type=_size, default=None,
                   help="memory it offers to tasks' `memory=` demands, e.g. 8G "
                        "(default: the node's memory)")
    p.add_argument("--resources", type=_custom_resources, default={},
                   help='custom resources it offers, as JSON: \'{"accel": 2}\'')
    p.add_argument("--queues", type=_queues, default=env.queues,
                   help="queues to serve, highest priority first (default: default)")
    p.add_argument("--lease-timeout", type=_seconds, default=env.lease_timeout_s,
                   help="seconds without renewal before a node's tasks are retried")
    p.add_argument("--grace-period", type=_seconds, default=env.grace_period_s,
                   help="on SIGTERM, seconds to let running tasks finish")
    p.add_argument("--prefetch", type=_positive_int, default=env.prefetch,
                   help="most tasks a worker claims at once when the queue is deep")
    p.add_argument("--max-memory-per-worker", type=_size, default=env.max_memory_per_worker,
                   help="kill (OUT_OF_MEMORY) or recycle a worker above this RSS, e.g. 512M")
    p.add_argument("--memory-threshold", type=_fraction, default=env.memory_threshold,
                   help="node memory fraction above which the newest task's worker is killed")
    p.add_argument("--timeout-grace", type=_seconds, default=env.timeout_grace_s,
                   help="seconds between a timed-out task's interrupt and its worker's kill")
    p.add_argument("--metrics-port", type=int, default=env.metrics_port or None,
                   help="serve Prometheus metrics on this port")
    p.add_argument("--secret-file", default=None,
                   help="sign and verify payloads with the key in this file "
                        "(or FTQUEUE_SECRET / FTQUEUE_SECRET_FILE)")
    p.add_argument("--health-file", default=env.health_file,
                   help="keep this file updated for `ftqueue health` (container healthchecks)")
    p.add_argument("--no-task-output-copy", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--exit-with-parent", type=int, default=None, help=argparse.SUPPRESS)


def build_parser(env: Settings | None = None) -> argparse.ArgumentParser:
    # Long on purpose: one flat table of subcommands reads better than nine small functions.
    env = env or Settings.from_env()
    parser = argparse.ArgumentParser(prog="ftqueue", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("start", help="run Redis and a worker node in the foreground")
    _add_common(p, env)
    _add_node(p, env)
    p.add_argument("--port", type=int, default=None, help="TCP port (default: a free one)")
    p.add_argument("--host", default="127.0.0.1",
                   help="address Redis binds to (default 127.0.0.1: this machine only; "
                        "0.0.0.0 lets workers on other hosts join)")
    p.add_argument("--unix-socket", action="store_true", help="listen on a unix socket only")
    p.add_argument("--data-dir", default=None,
                   help="keep Redis data here with AOF everysec (default: a temporary "
                        "directory, no persistence)")
    p.add_argument("--dashboard", action=argparse.BooleanOptionalAction, default=None,
                   help="also serve the web dashboard on 127.0.0.1 (default: yes, when the "
                        "dashboard extra is installed)")
    p.add_argument("--dashboard-port", type=int, default=None,
                   help=f"its port (default {DEFAULT_DASHBOARD_PORT}, else a free one)")
    p.set_defaults(func=cmd_start)

    p = sub.add_parser("dashboard", help="serve the web dashboard")
    _add_common(p, env)
    p.add_argument("--host", default="127.0.0.1",
                   help="address to bind (default 127.0.0.1: this machine only)")
    p.add_argument("--port", type=int, default=DEFAULT_DASHBOARD_PORT)
    p.add_argument("--allow-actions", action="store_true",
                   help="offer cancel to whoever logs in with FTQUEUE_DASHBOARD_TOKEN")
    p.add_argument("--exit-with-parent", type=int, default=None, help=argparse.SUPPRESS)
    p.set_defaults(func=cmd_dashboard)

    p = sub.add_parser("worker", help="run one worker node against an existing Redis")
    _add_common(p, env)
    _add_node(p, env)
    p.set_defaults(func=cmd_worker)

    p = sub.add_parser("list", help="list tasks (one row per attempt), nodes or workers")
    _add_common(p, env)
    p.add_argument("resource", choices=["tasks", "nodes", "workers"])
    p.add_argument("-f", "--filter", action="append", default=[], metavar="KEY=VALUE",
                   help="KEY=VALUE or KEY!=VALUE; repeat to AND them")
    p.add_argument("--detail", action="store_true", help="more columns")
    p.add_argument("--format", choices=["table", "json", "yaml"], default="table")
    p.add_argument("--limit", type=_positive_int, default=100)
    p.set_defaults(func=cmd_list)

    p = sub.add_parser("get", help="every attempt of one task (with its traceback), or its "
                                   "result")
    _add_common(p, env)
    p.add_argument("resource", choices=["task", "result"])
    p.add_argument("id")
    p.add_argument("--format", choices=["yaml", "json"], default="yaml")
    p.set_defaults(func=cmd_get)

    p = sub.add_parser("summary", help="tasks per function, counted by state")
    _add_common(p, env)
    p.add_argument("resource", choices=["tasks"])
    p.add_argument("--format", choices=["table", "json", "yaml"], default="table")
    p.set_defaults(func=cmd_summary)

    p = sub.add_parser("status", help="nodes, workers, queue depths, recent retries and failures")
    _add_common(p, env)
    p.add_argument("--minutes", type=_positive_int, default=5)
    p.add_argument("--format", choices=["table", "json", "yaml"], default="table")
    p.add_argument("--watch", action="store_true",
                   help="refresh every second until Ctrl-C (as `rq info -i`)")
    p.add_argument("--interval", type=_seconds, default=1.0, help=argparse.SUPPRESS)
    p.set_defaults(func=cmd_status)

    p = sub.add_parser("cancel", help="cancel a task (and the tasks it submitted)")
    _add_common(p, env)
    p.add_argument("id")
    p.add_argument("--force", action="store_true", help="kill the worker running it")
    p.add_argument("--no-recursive", action="store_true", help="leave its children alone")
    p.set_defaults(func=cmd_cancel)

    admin_cli.add_commands(sub, env)

    p = sub.add_parser("health", help="exit 0 only if the local node is registered and "
                                      "heartbeating (a container healthcheck)")
    p.add_argument("--file", default=env.health_file or "/tmp/ftqueue-health.json",
                   help="the node's --health-file")
    p.add_argument("--address", default=env.address,
                   help="Redis URL (default: $FTQUEUE_ADDRESS, else the file's)")
    p.set_defaults(func=cmd_health)

    p = sub.add_parser("logs", help="what a task printed, per attempt")
    _add_common(p, env)
    p.add_argument("id")
    p.add_argument("--attempt", type=int, default=None, help="default: the latest")
    p.set_defaults(func=cmd_logs)
    return parser


def _amount(text: str) -> float:
    try:
        return resources.check_amount("the amount", float(text))
    except ValueError as e:
        raise argparse.ArgumentTypeError(str(e)) from None


def _custom_resources(text: str) -> dict[str, float]:
    try:
        return resources.check_custom(json.loads(text))
    except ValueError as e:
        raise argparse.ArgumentTypeError(f"--resources {text!r}: {e}") from None


def resolve_node_resources(args: argparse.Namespace) -> None:
    """Fill in what the node offers (CONTRACT.md defaults) and how many workers it runs:
    enough for its CPUs when only --num-cpus is given."""
    if args.num_workers is None:
        args.num_workers = (max(1, math.ceil(args.num_cpus)) if args.num_cpus
                            else args.env_workers)
    if args.num_cpus is None:
        args.num_cpus = args.num_workers
    visible = visible_gpu_ids()
    if args.num_gpus is None:
        args.num_gpus = len(visible)
    if args.num_gpus != int(args.num_gpus):
        raise FtqueueError(f"--num-gpus must be a whole number, got {args.num_gpus}")
    args.gpu_ids = (visible or tuple(str(i) for i in range(int(args.num_gpus))))[
        :int(args.num_gpus)]
    if len(args.gpu_ids) < args.num_gpus:
        raise FtqueueError(f"--num-gpus {int(args.num_gpus)}: only {len(args.gpu_ids)} GPU(s) "
                           f"in CUDA_VISIBLE_DEVICES ({','.join(args.gpu_ids)})")
    if args.memory is None:
        import psutil

        args.memory = psutil.virtual_memory().total


def _node_settings(args: argparse.Namespace, address: str) -> NodeSettings:
    env = Settings.from_env()
    resolve_node_resources(args)
    offered = resources.demand(args.num_cpus, args.num_gpus, args.memory, args.resources)
    return NodeSettings(address=address, namespace=args.namespace, num_workers=args.num_workers,
                        resources=tuple(sorted(offered.items())), gpu_ids=args.gpu_ids,
                        queues=args.queues, lease_timeout_s=args.lease_timeout,
                        grace_period_s=args.grace_period, prefetch=args.prefetch,
                        max_memory_per_worker_bytes=args.max_memory_per_worker,
                        memory_threshold=args.memory_threshold,
                        timeout_grace_s=args.timeout_grace,
                        copy_task_output=not args.no_task_output_copy,
                        result_ttl_s=env.result_ttl_s, lineage_ttl_s=env.lineage_ttl_s,
                        log_max_bytes=env.log_max_bytes, import_allow=env.import_allow)


def _watch_parent(args: argparse.Namespace) -> None:
    if args.exit_with_parent is not None:
        from .embedded import set_parent_death_signal

        set_parent_death_signal(signal.SIGTERM)
        if os.getppid() != args.exit_with_parent:
            raise FtqueueError("parent process already gone")


def _security(args: argparse.Namespace, log: Callable[[str], None]) -> None:
    from .signing import signer

    if args.secret_file:
        os.environ["FTQUEUE_SECRET_FILE"] = args.secret_file   # the workers inherit it
    if not signer().enabled:
        log("WARNING: no FTQUEUE_SECRET set: payloads are not signed, so anyone who can write "
            "to this Redis can run code on the workers (see docs/security.md)")


def cmd_worker(args: argparse.Namespace) -> int:
    from .supervisor import Supervisor

    if not args.address:
        raise FtqueueError("no Redis address: pass --address or set FTQUEUE_ADDRESS")
    _watch_parent(args)
    log = lambda msg: print(f"ftqueue: {msg}", file=sys.stderr, flush=True)  # noqa: E731
    _security(args, log)
    _wait_for_redis(args.address, log)
    supervisor = Supervisor(_node_settings(args, args.address), parent_pid=args.exit_with_parent,
                            metrics_port=args.metrics_port, health_file=args.health_file)
    from .logs import setup_console
    from .store import redact

    setup_console(f"ftqueue node {supervisor.node_id}")

    offered = views.amounts_text(resources.as_amounts(dict(supervisor.settings.resources)))
    supervisor.log(f"serving queues {','.join(args.queues)} with {args.num_workers} workers "
                   f"({offered}) on {redact(args.address)}")
    return supervisor.run()


def _wait_for_redis(address: str, log: Callable[[str], None]) -> None:
    """A node may start before its Redis (or during a blip): wait a while, then give up
    with the one-line error."""
    import time

    from .store import backoff, connect, is_transient, redact

    deadline = time.monotonic() + Settings.from_env().startup_wait_s
    failures = 0
    while True:
        try:
            connect(address).close()
            return
        except FtqueueError as e:
            if time.monotonic() >= deadline or not is_transient(e) \
                    or "certificate" in str(e).lower():   # TLS refused: waiting won't help
                raise
            if failures == 0:
                log(f"waiting for Redis at {redact(address)} ({e})")
            time.sleep(backoff(failures))
            failures += 1


def cmd_start(args: argparse.Namespace) -> int:
    from .embedded import DASHBOARD_PREFIX, READY_PREFIX, RedisServer
    from .supervisor import Supervisor

    _watch_parent(args)
    if args.secret_file:
        os.environ["FTQUEUE_SECRET_FILE"] = args.secret_file
    public = args.host not in ("127.0.0.1", "localhost", "::1")
    if public and args.unix_socket:
        raise FtqueueError("--host and --unix-socket exclude each other")
    server = RedisServer.start(port=args.port, unix_socket=args.unix_socket,
                               directory=args.data_dir, appendonly=bool(args.data_dir),
                               host=args.host)
    dashboard = None
    try:
        supervisor = Supervisor(_node_settings(args, server.address),
                                parent_pid=args.exit_with_parent, metrics_port=args.metrics_port)
        from .logs import setup_console

        setup_console(f"ftqueue node {supervisor.node_id}")
        dashboard = _start_dashboard(args, server.address)
        if dashboard is not None and args.exit_with_parent is not None:
            print(f"{DASHBOARD_PREFIX}{dashboard.url}", flush=True)
        print(f"{READY_PREFIX}{server.address}", flush=True)
        if args.exit_with_parent is None:
            print(f"ftqueue cluster running; connect with:\n"
                  f"  export FTQUEUE_ADDRESS={server.address}", flush=True)
            if public:
                print(f"from other hosts:\n  export FTQUEUE_ADDRESS="
                      f"redis://{_reachable_ip(args.host)}:{server.address.rsplit(':', 1)[1]}",
                      flush=True)
                print("WARNING: Redis listens on "
                      f"{args.host} without a password: anyone who reaches its port can read "
                      "and change every task, and without FTQUEUE_SECRET run code on the "
                      "workers (see docs/security.md)", file=sys.stderr, flush=True)
            if dashboard is not None:
                print(f"dashboard: {dashboard.url}", flush=True)
        else:
            os.dup2(2, 1)  # nobody reads our stdout past the ready line
        return supervisor.run()
    finally:
        if dashboard is not None:
            dashboard.stop()
        server.stop()


def _start_dashboard(args: argparse.Namespace, address: str) -> Any:
    """The dashboard beside `ftqueue start`: on unless --no-dashboard (for the embedded
    cluster of `init()`, only with --dashboard), when its extra is installed."""
    from .dashboard import server as dashboard

    wanted = args.dashboard if args.dashboard is not None else args.exit_with_parent is None
    if not wanted:
        return None
    if not dashboard.available():
        print(f"ftqueue: no dashboard: {dashboard.INSTALL_HINT}", file=sys.stderr, flush=True)
        return None
    try:
        return dashboard.DashboardProcess.start(address, args.namespace, "127.0.0.1",
                                                args.dashboard_port)
    except FtqueueError as e:     # the cluster runs without it
        print(f"ftqueue: WARNING: no dashboard: {e}", file=sys.stderr, flush=True)
        return None


def cmd_dashboard(args: argparse.Namespace) -> int:
    from .dashboard.server import serve

    if not args.address:
        raise FtqueueError("no Redis address: pass --address or set FTQUEUE_ADDRESS")
    _watch_parent(args)
    log = lambda msg: print(f"ftqueue: {msg}", file=sys.stderr, flush=True)  # noqa: E731
    return serve(args.address, args.namespace, args.host, args.port, args.allow_actions,
                 Settings.from_env().dashboard_token, log,
                 announce=args.exit_with_parent is None)


def _reachable_ip(host: str) -> str:
    """An address of this machine that other hosts can use (the bind address if it is
    one; for 0.0.0.0, the address of this host's name)."""
    import socket

    if host not in ("0.0.0.0", "::", ""):
        return host
    try:   # the address of the interface that routes outwards (a UDP "connect" sends nothing)
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as probe:
            probe.connect(("10.254.254.254", 1))
            address = str(probe.getsockname()[0])
        if not address.startswith("127."):
            return address
    except OSError:
        pass
    try:
        address = socket.gethostbyname(socket.gethostname())
    except OSError:
        address = "127.0.0.1"
    return address if not address.startswith("127.") else socket.gethostname()


def _reader(args: argparse.Namespace) -> Any:
    from .state import StateReader
    from .store import Store, connect

    if not args.address:
        raise FtqueueError("no Redis address: pass --address or set FTQUEUE_ADDRESS")
    return StateReader(Store(connect(args.address), args.namespace))


def _task_id(text: str) -> str:
    if not is_task_id(text):
        raise FtqueueError(f"not a task id: {text!r}")
    return text


def cmd_list(args: argparse.Namespace) -> int:
    from .state import parse_filter

    filters = [parse_filter(f) for f in args.filter]   # bad filters fail before connecting
    if filters and args.resource != "tasks":
        raise FtqueueError("filters apply to `list tasks` only")
    reader = _reader(args)
    title = f"List: {views.now()}"
    if args.resource != "tasks":
        everything = reader.list_nodes() if args.resource == "nodes" else reader.list_workers()
        rows = everything[:args.limit]
        cut = views.cut_note(len(rows), len(everything), args.resource)
        print(views.render(rows, args.format, title, cut=cut))
        return 0
    rows = reader.list_tasks(filters, detail=args.detail, limit=args.limit)
    if args.format != "table":
        print(views.render(rows, args.format, title))
        return 0
    # Rows are attempts; without filters the number of tasks is known at no cost.
    cut = ""
    if len(rows) >= args.limit:
        cut = (f"showing {len(rows)} rows of {reader.count_tasks():,} tasks (use --limit)"
               if not filters else
               f"showing the first {len(rows)} matching rows; there may be more (use --limit)")
    columns = views.DETAIL_TASK_COLUMNS if args.detail else views.COMPACT_TASK_COLUMNS
    print(views.render(rows, "table", title, columns=columns, cut=cut))
    return 0


def cmd_get(args: argparse.Namespace) -> int:
    reader = _reader(args)
    task_id = _task_id(args.id)
    if args.resource == "result":
        return _print_result(reader, task_id)
    rows = reader.get_task(task_id)
    if not rows:
        raise FtqueueError(f"task {args.id} not found")
    if rows[-1]["state"] == "FAILED":
        rows[-1]["traceback"] = reader.traceback(task_id)
    if args.format == "yaml":      # for people: ISO times and durations
        rows = [views.for_people(r) for r in rows]
    print(views.render(rows, args.format, ""))
    return 0


def _print_result(reader: Any, task_id: str) -> int:
    """For scripts: the value's repr on stdout (exit 0), or the error on stderr (exit 1)."""
    from . import payload

    (record, blob), = reader.store.outcomes([task_id])
    if not record and blob is None:
        raise FtqueueError(f"task {task_id} not found")
    if record and record["state"] not in ("FINISHED", "FAILED"):
        raise FtqueueError(f"task {task_id} has not finished ({record['state']})")
    ok, value = payload.outcome_to_result(task_id, record, blob)
    if not ok:
        print(f"{type(value).__name__}: {value}", file=sys.stderr)
        return 1
    print(repr(value))
    return 0


def cmd_summary(args: argparse.Namespace) -> int:
    summary = _reader(args).summarize_tasks()
    if args.format != "table":
        print(views.render_data(summary, args.format))
        return 0
    rows = [{"func_or_class_name": func, "state_counts": ", ".join(
        f"{state}: {n}" for state, n in sorted(counts.items())), "type": "NORMAL_TASK"}
        for func, counts in sorted(summary.items())]
    print(views.render(rows, "table", f"Tasks Summary: {views.now()}"))
    return 0


def cmd_status(args: argparse.Namespace) -> int:
    reader = _reader(args)
    if not args.watch:
        print(_status_text(reader, args))
        return 0
    import time

    while True:       # ends with Ctrl-C (exit 130, as every command)
        text = _status_text(reader, args)
        # Home the cursor and clear the screen, then draw: one frame, no scrolling.
        sys.stdout.write(f"\x1b[H\x1b[2J{views.now()}  (every {args.interval:g} s; "
                         f"Ctrl-C to stop)\n{text}\n")
        sys.stdout.flush()
        time.sleep(args.interval)


def _status_text(reader: Any, args: argparse.Namespace) -> str:
    from . import schedules

    status = reader.status(args.minutes)
    status["schedules"] = [admin_cli.schedule_row(s)
                           for s in schedules.list_schedules(reader.store)]
    if args.format != "table":
        return views.render_data(status, args.format)
    lines = []
    queues = ", ".join(f"{q}={n}" for q, n in status["queues"].items()) or "none"
    lines.append(f"nodes alive: {status['nodes_alive']}   workers alive: "
                 f"{status['workers_alive']}   running: {status['running']}")
    if status["resources_total"]:
        lines.append("resources free / offered: " + "   ".join(
            f"{k} {views.amount(k, status['resources_free'].get(k, 0))}"
            f"/{views.amount(k, v)}" for k, v in status["resources_total"].items()))
    lines.append(f"queued: {queues}")
    if status["delayed"]:
        lines.append("delayed: " + ", ".join(f"{q}={n}" for q, n in status["delayed"].items()))
    for demand in status["infeasible"]:
        lacks = ", ".join(f"{k}={v}" for k, v in demand["missing"].items())
        lines.append(f"WARNING: {demand['tasks']} task(s) of queue {demand['queue']} need "
                     f"{demand['shape']}, which no live node has (missing {lacks}); they wait "
                     "for a node that fits")
    busy = {k: v for k, v in status["limits"].items() if v["running"] or v["waiting"]}
    if busy:
        lines.append("limits: " + ", ".join(f"{k} running={v['running']} waiting={v['waiting']}"
                                            for k, v in busy.items()))
    if status["unserved_queues"]:
        lines.append(f"WARNING: no live node serves {', '.join(status['unserved_queues'])}: "
                     "their tasks wait (start a node with --queues naming them)")
    lines.append(f"finished in the last {status['window_minutes']} min: "
                 f"{status['recent_finished']}")
    for key, label in (("recent_retries", "retries"), ("recent_failures", "failures")):
        counts = ", ".join(f"{k}={v}" for k, v in sorted(status[key].items())) or "none"
        lines.append(f"{label} in the last {status['window_minutes']} min: {counts}")
    lines.append(f"late results fenced (all time): {status['fenced_late_results']}")
    for row in status["schedules"]:
        lines.append(f"schedule {row['name']}: {row['func']} {row['when']} on {row['queue']}, "
                     f"next {row['next_run']}, last {row['last_run']}")
    return "\n".join(lines)


def cmd_cancel(args: argparse.Namespace) -> int:
    reader = _reader(args)
    outcomes = reader.store.cancel(_task_id(args.id), args.force, not args.no_recursive)
    if outcomes and outcomes[0][1] == "missing":
        raise FtqueueError(f"task {args.id} not found")
    for task_id, outcome in outcomes:
        print(f"{task_id} {outcome}")
    return 0


def cmd_logs(args: argparse.Namespace) -> int:
    reader = _reader(args)
    rows = reader.get_task(_task_id(args.id))
    if not rows:
        raise FtqueueError(f"task {args.id} not found")
    attempt = rows[-1]["attempt_number"] if args.attempt is None else args.attempt
    text = reader.store.redis.get(reader.store.keys_for(args.id).log(args.id, attempt))
    if text is None:
        if not any(r["attempt_number"] == attempt for r in rows):
            raise FtqueueError(f"task {args.id} has no attempt {attempt}")
        print(f"(task {args.id} attempt {attempt} printed nothing)", file=sys.stderr)
        return 0
    sys.stdout.write(text.decode(errors="replace"))
    return 0


def cmd_health(args: argparse.Namespace) -> int:
    import json
    import time

    from .store import Store, connect

    try:
        with open(args.file) as f:
            info = json.load(f)
    except (OSError, ValueError) as e:
        raise FtqueueError(f"no node health file at {args.file}: {e}") from None
    max_age = max(3.0, float(info.get("lease_timeout_s", 30)))
    age = time.time() - float(info["heartbeat"])
    if age > max_age:
        raise FtqueueError(f"node {info['node_id']} last heartbeat {age:.1f} s ago")
    # The file holds no secret (its address is redacted): the real address comes from
    # FTQUEUE_ADDRESS, as the node's own did.
    address = args.address or info["address"]
    store = Store(connect(address), info["namespace"])
    age_ms = store.node_heartbeat_age_ms(info["node_id"])
    if age_ms is None or age_ms > max_age * 1000:
        raise FtqueueError(f"node {info['node_id']} is not registered as alive in Redis")
    print(f"node {info['node_id']} healthy (heartbeat {age:.1f} s ago)")
    return 0


def main(argv: list[str] | None = None) -> int:
    try:
        parser = build_parser()
    except ValueError as e:      # a malformed FTQUEUE_* variable
        print(f"ftqueue: error: {e}", file=sys.stderr)
        return 2
    args = parser.parse_args(argv)
    func: Callable[[argparse.Namespace], Any] = args.func
    try:
        return int(func(args) or 0)
    except FtqueueError as e:
        print(f"ftqueue: error: {e}", file=sys.stderr)
        return 1
    except ValueError as e:
        print(f"ftqueue: error: {e}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130

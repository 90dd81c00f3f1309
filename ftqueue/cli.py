"""The `ftqueue` command. User mistakes end with one line on stderr and exit code 1 (2 for
usage errors), never a traceback."""

from __future__ import annotations

import argparse
import os
import signal
import sys
from typing import Any, Callable

from .exceptions import FtqueueError
from .keys import DEFAULT_NAMESPACE
from .settings import (
    DEFAULT_GRACE_PERIOD_S,
    DEFAULT_MEMORY_THRESHOLD,
    DEFAULT_PREFETCH,
    DEFAULT_TIMEOUT_GRACE_S,
    NodeSettings,
    env_float,
    env_int,
    env_str,
    lease_timeout_from_env,
    parse_size,
)


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


def _add_common(p: argparse.ArgumentParser) -> None:
    p.add_argument("--address", default=env_str("FTQUEUE_ADDRESS"),
                   help="Redis URL (default: $FTQUEUE_ADDRESS)")
    p.add_argument("--namespace", default=env_str("FTQUEUE_NAMESPACE", DEFAULT_NAMESPACE),
                   help="key prefix (default: $FTQUEUE_NAMESPACE or ftq)")


def _add_node(p: argparse.ArgumentParser) -> None:
    p.add_argument("--num-workers", type=_positive_int,
                   default=env_int("FTQUEUE_NUM_WORKERS", os.cpu_count() or 1))
    p.add_argument("--queues", type=_queues,
                   default=_queues(env_str("FTQUEUE_QUEUES", "default") or "default"))
    p.add_argument("--lease-timeout", type=_seconds, default=lease_timeout_from_env(),
                   help="seconds without renewal before a node's tasks are retried")
    p.add_argument("--grace-period", type=_seconds,
                   default=env_float("FTQUEUE_GRACE_PERIOD_S", DEFAULT_GRACE_PERIOD_S),
                   help="on SIGTERM, seconds to let running tasks finish")
    p.add_argument("--prefetch", type=_positive_int,
                   default=env_int("FTQUEUE_PREFETCH", DEFAULT_PREFETCH),
                   help="most tasks a worker claims at once when the queue is deep")
    p.add_argument("--max-memory-per-worker", type=_size,
                   default=_size(env_str("FTQUEUE_MAX_MEMORY_PER_WORKER", "0") or "0"),
                   help="kill (OUT_OF_MEMORY) or recycle a worker above this RSS, e.g. 512M")
    p.add_argument("--memory-threshold", type=_fraction,
                   default=env_float("FTQUEUE_MEMORY_THRESHOLD", DEFAULT_MEMORY_THRESHOLD),
                   help="node memory fraction above which the newest task's worker is killed")
    p.add_argument("--timeout-grace", type=_seconds,
                   default=env_float("FTQUEUE_TIMEOUT_GRACE_S", DEFAULT_TIMEOUT_GRACE_S),
                   help="seconds between a timed-out task's interrupt and its worker's kill")
    p.add_argument("--exit-with-parent", type=int, default=None, help=argparse.SUPPRESS)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="ftqueue", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("start", help="run Redis and a worker node in the foreground")
    _add_common(p)
    _add_node(p)
    p.add_argument("--port", type=int, default=None, help="TCP port (default: a free one)")
    p.add_argument("--unix-socket", action="store_true", help="listen on a unix socket only")
    p.add_argument("--data-dir", default=None,
                   help="keep Redis data here with AOF everysec (default: a temporary "
                        "directory, no persistence)")
    p.set_defaults(func=cmd_start)

    p = sub.add_parser("worker", help="run one worker node against an existing Redis")
    _add_common(p)
    _add_node(p)
    p.set_defaults(func=cmd_worker)
    return parser


def _node_settings(args: argparse.Namespace, address: str) -> NodeSettings:
    return NodeSettings(address=address, namespace=args.namespace, num_workers=args.num_workers,
                        queues=args.queues, lease_timeout_s=args.lease_timeout,
                        grace_period_s=args.grace_period, prefetch=args.prefetch,
                        max_memory_per_worker_bytes=args.max_memory_per_worker,
                        memory_threshold=args.memory_threshold,
                        timeout_grace_s=args.timeout_grace)


def _watch_parent(args: argparse.Namespace) -> None:
    if args.exit_with_parent is not None:
        from .embedded import set_parent_death_signal

        set_parent_death_signal(signal.SIGTERM)
        if os.getppid() != args.exit_with_parent:
            raise FtqueueError("parent process already gone")


def cmd_worker(args: argparse.Namespace) -> int:
    from .supervisor import Supervisor

    if not args.address:
        raise FtqueueError("no Redis address: pass --address or set FTQUEUE_ADDRESS")
    _watch_parent(args)
    supervisor = Supervisor(_node_settings(args, args.address), parent_pid=args.exit_with_parent)
    supervisor.log(f"serving queues {','.join(args.queues)} with {args.num_workers} workers "
                   f"on {_redact(args.address)}")
    return supervisor.run()


def cmd_start(args: argparse.Namespace) -> int:
    from .embedded import READY_PREFIX, RedisServer
    from .supervisor import Supervisor

    _watch_parent(args)
    server = RedisServer.start(port=args.port, unix_socket=args.unix_socket,
                               directory=args.data_dir, appendonly=bool(args.data_dir))
    try:
        supervisor = Supervisor(_node_settings(args, server.address),
                                parent_pid=args.exit_with_parent)
        print(f"{READY_PREFIX}{server.address}", flush=True)
        if args.exit_with_parent is None:
            print(f"ftqueue cluster running; connect with:\n"
                  f"  export FTQUEUE_ADDRESS={server.address}", flush=True)
        else:
            os.dup2(2, 1)  # nobody reads our stdout past the ready line
        return supervisor.run()
    finally:
        server.stop()


def _redact(address: str) -> str:
    if "@" in address and "://" in address:
        scheme, rest = address.split("://", 1)
        return f"{scheme}://***@{rest.split('@', 1)[1]}"
    return address


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
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

"""`ftqueue requeue` and `ftqueue purge`: the commands that change what runs (cli.py has the
read-only ones and the node)."""

from __future__ import annotations

import argparse
from typing import Any

from .exceptions import FtqueueError
from .settings import Settings

REQUEUE_FAILED_MAX = 1_000_000


def add_commands(sub: Any, env: Settings) -> None:
    from .cli import _add_common

    p = sub.add_parser("requeue", help="run FAILED tasks again (fresh retry budget, same ids)")
    _add_common(p, env)
    p.add_argument("ids", nargs="*", metavar="TASK_ID")
    p.add_argument("--failed", action="store_true",
                   help="every task whose latest attempt FAILED (narrowed by -f)")
    p.add_argument("-f", "--filter", action="append", default=[], metavar="KEY=VALUE",
                   help="with --failed: KEY=VALUE or KEY!=VALUE, as `list tasks`")
    p.set_defaults(func=cmd_requeue)

    p = sub.add_parser("purge", help="cancel every queued and delayed task of a queue")
    _add_common(p, env)
    p.add_argument("queue")
    p.set_defaults(func=cmd_purge)


def cmd_requeue(args: argparse.Namespace) -> int:
    from . import dead_letter
    from .cli import _reader, _task_id
    from .state import parse_filter

    filters = [parse_filter(f) for f in args.filter]
    if args.failed == bool(args.ids):
        raise FtqueueError("name task ids or give --failed, not both")
    if filters and not args.failed:
        raise FtqueueError("filters apply with --failed only")
    ids = [_task_id(i) for i in args.ids]
    reader = _reader(args)
    if args.failed:
        ids = dead_letter.failed_task_ids(reader, filters, REQUEUE_FAILED_MAX)
    answers = dead_letter.requeue(reader.store, ids)
    refused = {i: a for i, a in answers.items() if a != dead_letter.REQUEUED}
    for task_id in answers:
        if task_id not in refused:
            print(f"{task_id} requeued")
    for task_id, answer in refused.items():
        print(f"ftqueue: {dead_letter.refusal(task_id, answer)}")
    print(f"requeued {len(answers) - len(refused)} task(s)")
    return 1 if refused and not args.failed else 0


def cmd_purge(args: argparse.Namespace) -> int:
    from . import dead_letter
    from .cli import _reader

    count = dead_letter.purge(_reader(args).store, args.queue)
    print(f"purged {count} task(s) from queue {args.queue} (each FAILED / TASK_CANCELLED)")
    return 0

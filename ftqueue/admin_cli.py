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

    schedule = sub.add_parser("schedule", help="list, add or remove schedules (periodic "
                                                "tasks)")
    actions = schedule.add_subparsers(dest="action", required=True)
    p = actions.add_parser("list", help="every schedule")
    _add_common(p, env)
    p.add_argument("--format", choices=["table", "json", "yaml"], default="table")
    p.set_defaults(func=cmd_schedule)
    p = actions.add_parser("remove", help="remove a schedule")
    _add_common(p, env)
    p.add_argument("name")
    p.set_defaults(func=cmd_schedule)
    p = actions.add_parser("add", help="add (or replace) a schedule")
    _add_common(p, env)
    p.add_argument("name")
    p.add_argument("function", metavar="pkg.mod:func", help="what it runs")
    p.add_argument("json_args", nargs="?", metavar="JSON_ARGS",
                   help="a JSON list of positional arguments, or an object of keywords")
    when = p.add_mutually_exclusive_group()
    when.add_argument("--cron", help="a cron expression (five fields, UTC)")
    when.add_argument("--every", type=float, metavar="S", help="every S seconds")
    p.add_argument("--queue", default=None, help="the queue its tasks go to")
    p.add_argument("--catchup", choices=["latest", "none"], default="latest",
                   help="after an outage run the latest missed tick, or none")
    p.set_defaults(func=cmd_schedule)

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


def cmd_schedule(args: argparse.Namespace) -> int:
    from . import schedules, views
    from .cli import _reader

    if args.action == "list":
        rows = [schedule_row(s) for s in schedules.list_schedules(_reader(args).store)]
        print(views.render(rows, args.format, f"Schedules: {views.now()}"))
        return 0
    schedules.check_name(args.name)
    if args.action == "remove":
        if not schedules.remove(_reader(args).store, args.name):
            raise FtqueueError(f"no schedule named {args.name}")
        print(f"removed schedule {args.name}")
        return 0
    if args.cron is None and args.every is None:
        raise FtqueueError("schedule add needs --cron EXPR or --every S")
    call_args, call_kwargs = parse_json_args(args.json_args)
    reader = _reader(args)
    origin = _origin(reader.store)
    shown = schedules.create(reader.store, origin, args.name, args.function, call_args,
                             call_kwargs, args.cron, args.every, args.queue, args.catchup)
    print(f"schedule {args.name}: next run {_when(shown['next_run'])}")
    return 0


def parse_json_args(text: str | None) -> tuple[list[Any], dict[str, Any]]:
    import json

    if not text:
        return [], {}
    try:
        value = json.loads(text)
    except ValueError as e:
        raise FtqueueError(f"JSON_ARGS is not JSON: {e}") from None
    if isinstance(value, list):
        return value, {}
    if isinstance(value, dict):
        return [], value
    raise FtqueueError("JSON_ARGS must be a JSON list (positional) or object (keywords)")


def _origin(store: Any) -> Any:
    from .client.records import Origin

    settings = Settings.from_env()
    return Origin(store.next_job_id(), "", settings.result_ttl_s, settings.lineage_ttl_s,
                  store.partition_count)


def _when(epoch_s: float | None) -> str:
    import datetime

    if not epoch_s:
        return "-"
    return datetime.datetime.fromtimestamp(epoch_s, datetime.timezone.utc).strftime(
        "%Y-%m-%d %H:%M:%S UTC")


def schedule_row(s: dict[str, Any]) -> dict[str, Any]:
    """A schedule as `ftqueue schedule list` and `ftqueue status` print it."""
    when = f"cron {s['cron']}" if s["cron"] else f"every {s['every_s']:g} s"
    return {"name": s["name"], "func": s["func"], "queue": s["queue"], "when": when,
            "catchup": s["catchup"], "next_run": _when(s["next_run"]),
            "last_run": _when(s["last_run"]), "last_task_id": s["last_task_id"] or ""}

"""What each dashboard page shows, as JSON-ready dicts built from `ftqueue.state` reads:
the API returns them as they are, the pages render them and then refresh from the API."""

from __future__ import annotations

from typing import Any, Mapping, Sequence

from .. import views
from ..admin_cli import schedule_row
from ..schedules import list_schedules
from ..spec import TaskState
from ..state import FilterError, StateReader, parse_filter

# The filters of the tasks page's form; anything else goes in as `filter=KEY=VALUE`.
FORM_FILTERS = ("state", "name", "error_type", "queue", "node_id", "job_id")
STATES = tuple(s.value for s in TaskState)
PAGE_LIMIT_DEFAULT = 50
PAGE_LIMIT_MAX = 500
# Worker records read per refresh: all of them on most clusters; where workers are recycled
# after every task (max_calls=1) an hour of dead ones would be read every second.
WORKERS_SHOWN = 1000


def summary(reader: StateReader) -> dict[str, Any]:
    nodes = reader.list_nodes()
    workers = reader.list_workers(nodes, newest=WORKERS_SHOWN)
    status = reader.status(nodes=nodes, workers=workers)
    throughput = reader.throughput()
    return {
        "nodes_alive": status["nodes_alive"],
        "nodes_dead": sum(1 for n in nodes if n["state"] != "ALIVE"),
        "workers_alive": status["workers_alive"],
        "workers_dead": sum(1 for w in workers if w["state"] != "ALIVE"),
        "workers_recorded": reader.count_workers(),
        "workers_shown": len(workers),
        "running": status["running"],
        "tasks_stored": reader.count_tasks(),
        "queues": reader.queue_stats(nodes, status["queues"]),
        "unserved_queues": status["unserved_queues"],
        "recent_retries": status["recent_retries"],
        "recent_failures": status["recent_failures"],
        "window_minutes": status["window_minutes"],
        "fenced_late_results": status["fenced_late_results"],
        "throughput": throughput,
        "last_hour": {k: sum(throughput[k]) for k in ("finished", "failed", "retried")},
        "infeasible": [dict(d, missing_text=views.amounts_text(d["missing"]))
                       for d in status["infeasible"]],
        "schedules": schedules(reader)["schedules"],
    }



def nodes(reader: StateReader) -> dict[str, Any]:
    rows = reader.list_nodes()
    for row in rows:
        row["offers"] = views.amounts_text(row["resources_total"])
        row["free"] = views.amounts_text(row["resources_free"])
    workers = reader.list_workers(rows, newest=WORKERS_SHOWN)
    return {"nodes": rows, "workers": workers[::-1], "workers_shown": len(workers),
            "workers_recorded": reader.count_workers()}


def queues(reader: StateReader) -> dict[str, Any]:
    return {"queues": reader.queue_stats()}


def schedules(reader: StateReader) -> dict[str, Any]:
    """Every periodic schedule: what it runs, when, its next and last tick."""
    rows = [schedule_row(s) for s in list_schedules(reader.store)]
    return {"available": True, "schedules": rows}


def task_filters(params: Sequence[tuple[str, str]]) -> list[tuple[str, str, str]]:
    """The tasks page's query: form fields (`state=FAILED`, empty ones ignored) and any
    number of `filter=KEY=VALUE` / `filter=KEY!=VALUE`, as the CLI's -f takes them."""
    filters = []
    for key, value in params:
        if key == "filter" and value.strip():
            filters.append(parse_filter(value))
        elif key in FORM_FILTERS and value.strip():
            filters.append(parse_filter(f"{key}={value.strip()}"))
    return filters


def page_limit(raw: str | None) -> int:
    if raw in (None, ""):
        return PAGE_LIMIT_DEFAULT
    try:
        value = int(str(raw))
    except ValueError:
        raise FilterError(f"invalid limit {raw!r}: expected a number") from None
    if not 1 <= value <= PAGE_LIMIT_MAX:
        raise FilterError(f"invalid limit {value}: between 1 and {PAGE_LIMIT_MAX}")
    return value


def tasks(reader: StateReader, params: Sequence[tuple[str, str]],
          query: Mapping[str, str]) -> dict[str, Any]:
    filters = task_filters(params)
    page = reader.page_tasks(filters, limit=page_limit(query.get("limit")),
                             cursor=query.get("cursor", ""))
    return {"filters": [f"{k}{op}{v}" for k, op, v in filters], "rows": page.rows,
            "next_cursor": page.cursor, "scanned": page.scanned, "indexed": page.indexed,
            "tasks_stored": reader.count_tasks()}


def task(reader: StateReader, task_id: str) -> dict[str, Any] | None:
    detail = reader.task_detail(task_id)
    if detail is None:
        return None
    for attempt in detail["attempts"]:
        start, end = attempt.get("start_time"), attempt.get("end_time")
        attempt["duration_s"] = round(end - start, 3) if start and end else None
    detail["active"] = detail["state"] not in ("FINISHED", "FAILED")
    detail["failed"] = detail["state"] == "FAILED"
    return detail
